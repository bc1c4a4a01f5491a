"""Retrieval metrics (Recall@K, Precision@1, R-Precision, MAP@R, NMI) from ONE kNN search.

One search with ``k = max(max(ks), max R)`` gives the neighbour-label matrix; every kNN
metric is then a vectorised function of that matrix, as in pytorch-metric-learning's
``AccuracyCalculator``. :func:`evaluate_retrieval` streams it: each chunk of queries is
reduced to per-query parts and dropped, so memory is ``O(chunk x k)``, not ``O(Q x k)``
(PML's calculator holds the whole ``(Q, k)`` result, as a plain faiss search does). A
search much wider than the metrics need for most queries (SOP's Recall@1000) is done in
two passes with the numbers of one (:func:`_two_pass`).

We do not call that calculator: it lacks Recall@K, converts labels to float, builds its
relevance mask with a Python loop over classes (11k for SOP), and materialises several
``(Q, k)`` float64 matrices over the full search width. Here only the first ``max R``
columns are used for R-Precision / MAP@R and Recall@K needs one argmax.

Conventions (matched to PML 2.x, ``utils/accuracy_calculator.py``, and tested against it):

- ``R`` of a query = number of references with its label, minus one in all-vs-all mode
  (the query itself is not a relevant item).
- Queries with ``R == 0`` ("lone" queries: a singleton class in all-vs-all, or a label
  absent from the gallery) are excluded from *every* kNN metric, and counted in
  ``num_excluded_queries``. PML drops them the same way. Note this includes Recall@K: a
  gallery-less query is not counted as a miss.
- R-Precision = (same-label items among the first R neighbours) / R.
- MAP@R = (1/R) * sum_{i<=R} P(i) * rel(i), with P(i) the precision over the first i
  neighbours (Musgrave et al. 2020, "A Metric Learning Reality Check").
- All averages are over queries (PML's ``avg_of_avgs=False``).

Deliberate differences from PML: we rank by cosine (inner product of L2-normalised
embeddings; PML's default index is L2 on raw embeddings: the same order once normalised);
we add Recall@K, which PML lacks (it has Precision@1 only); with no usable query we return
NaN like PML, and also warn.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import faiss
import numpy as np
import torch
from sklearn.metrics import normalized_mutual_info_score

from see_dml.metrics.knn import (
    ArrayLike,
    Backend,
    ExactIndex,
    certain_columns,
    default_chunk,
    knn_chunks,
    l2_normalised,
    resolve_backend,
)

#: Queries whose whole neighbour lists an evaluation keeps by default (evenly spaced), for
#: the retrieval grid; every other query's list is reduced to its metrics and dropped.
KEPT_QUERIES = 8


@dataclass(frozen=True)
class RetrievalResult:
    """The kNN neighbours kept from an evaluation, shared by plots and export.

    Only the rows ``rows`` keep their neighbour lists (by default
    :data:`KEPT_QUERIES` evenly spaced queries; every row from :func:`retrieve`), so the
    result stays small whatever the number of queries.

    Attributes:
        query_labels: (Q,) label of every query.
        rows: (n,) increasing int64 query rows whose neighbours are kept.
        indices: (n, k) int64 indices into the reference set, most similar first.
        similarities: (n, k) float32 cosine similarities matching ``indices``.
        neighbour_labels: (n, k) reference labels at ``indices``.
        relevant_counts: (Q,) int64 ``R`` of every query (0 for lone queries).
        exclude_self: True when the reference set is the query set (all-vs-all).
    """

    query_labels: np.ndarray
    rows: np.ndarray
    indices: np.ndarray
    similarities: np.ndarray
    neighbour_labels: np.ndarray
    relevant_counts: np.ndarray
    exclude_self: bool

    @property
    def k(self) -> int:
        """Number of neighbours kept per query."""
        return int(self.indices.shape[1])


def spread_rows(n: int, m: int) -> np.ndarray:
    """``min(m, n)`` evenly spaced rows of ``0 .. n-1`` (first and last included)."""
    if n < 1 or m < 1:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.linspace(0, n - 1, num=min(m, n)).round().astype(np.int64))


def _as_labels(labels: ArrayLike, n: int, name: str) -> np.ndarray:
    """Labels as a 1-D numpy array of length ``n``."""
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    out = np.asarray(labels)
    if out.ndim != 1 or len(out) != n:
        raise ValueError(f"{name} must have shape ({n},) to match its embeddings, got {out.shape}")
    return out


def relevant_counts(
    query_labels: np.ndarray, reference_labels: np.ndarray, *, exclude_self: bool
) -> np.ndarray:
    """(Q,) int64 number of relevant references ``R`` per query.

    ``R`` = references sharing the query's label, minus the query itself when
    ``exclude_self``; 0 when the label does not occur among the references.
    """
    uniq, counts = np.unique(reference_labels, return_counts=True)
    pos = np.minimum(np.searchsorted(uniq, query_labels), len(uniq) - 1)
    found = uniq[pos] == query_labels
    r = np.where(found, counts[pos], 0).astype(np.int64)
    return r - 1 if exclude_self else r


def _contributions(hits: np.ndarray, r: np.ndarray, max_r: int | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-query parts of every kNN metric, from the ``(c, k)`` same-label matrix of usable
    queries (``R >= 1``, ``k >= max R``): the rank of the first hit (``k`` for none), the
    R-Precision and the AP@R of each row. ``max_r``: the columns R-Precision and MAP@R
    read (default ``max(r)``); one number for every chunk of an evaluation, so that a row's
    AP@R is summed the same way (to the last bit) whichever rows share its chunk.

    A row reads its columns up to its first hit and its first ``R``: what :func:`_two_pass`
    checks before it takes a row's parts from the narrow search."""
    k = hits.shape[1]
    # Recall@K needs only the rank of the first hit; k stands for "no hit at all".
    first_hit = np.where(hits.any(axis=1), hits.argmax(axis=1), k)
    # R-Precision and MAP@R only look at the first R columns of each row.
    max_r = int(r.max(initial=0)) if max_r is None else max_r
    head = hits[:, :max_r]
    ranks = np.arange(1, max_r + 1)
    relevant_hits = head & (ranks[None, :] <= r[:, None])  # (c, max R)
    r_precision = relevant_hits.sum(axis=1) / r
    precision_at_i = np.cumsum(relevant_hits, axis=1) / ranks  # float64, as PML
    ap_at_r = (precision_at_i * relevant_hits).sum(axis=1) / r
    return first_hit, r_precision, ap_at_r


def _summary(first_hit: np.ndarray, r_precision: np.ndarray, ap_at_r: np.ndarray,
             ks: Sequence[int], n_q: int) -> dict[str, float]:
    """The averages over the usable queries, and the query counts."""
    n_used = len(first_hit)
    if n_used == 0:
        warnings.warn("no query has a relevant reference; kNN metrics are NaN", stacklevel=3)
        names = [f"recall@{kk}" for kk in ks] + ["precision@1", "r_precision", "map@r"]
        return {name: float("nan") for name in names} | {
            "num_queries": 0.0, "num_excluded_queries": float(n_q)
        }
    out = {f"recall@{kk}": float(np.mean(first_hit < kk)) for kk in ks}
    out["precision@1"] = float(np.mean(first_hit == 0))
    out["r_precision"] = float(np.mean(r_precision))
    out["map@r"] = float(np.mean(ap_at_r))
    out["num_queries"] = float(n_used)
    out["num_excluded_queries"] = float(n_q - n_used)
    return out


def metrics_from_neighbours(
    neighbour_labels: np.ndarray,
    query_labels: np.ndarray,
    counts_r: np.ndarray,
    ks: Sequence[int] = (1, 2, 4, 8),
) -> dict[str, float]:
    """All kNN metrics from a neighbour-label matrix (the one-chunk case of
    :func:`evaluate_retrieval`).

    Args:
        neighbour_labels: (Q, k) labels of each query's neighbours, most similar first, the
            query itself already removed. ``k`` must be at least ``max(counts_r)``; for
            Recall@K it should be at least ``min(K, number of references)`` — a K beyond
            ``k`` is scored on all ``k`` columns (exact when every reference was searched).
        query_labels: (Q,) labels of the queries.
        counts_r: (Q,) number of relevant references ``R`` per query; queries with
            ``R == 0`` are excluded from every metric and counted.
        ks: the K of Recall@K.

    Returns:
        ``recall@K`` for each K, ``precision@1``, ``r_precision``, ``map@r`` (floats in
        [0, 1]; NaN when no query is usable), ``num_queries`` and ``num_excluded_queries``.
    """
    neighbour_labels = np.asarray(neighbour_labels)
    query_labels = np.asarray(query_labels)
    counts_r = np.asarray(counts_r, dtype=np.int64)
    n_q, k = neighbour_labels.shape
    if query_labels.shape != (n_q,) or counts_r.shape != (n_q,):
        raise ValueError(
            f"query_labels {query_labels.shape} and counts_r {counts_r.shape} must both be "
            f"({n_q},) to match neighbour_labels {neighbour_labels.shape}"
        )
    usable = counts_r > 0
    max_r = int(counts_r.max(initial=0))
    if max_r > k:
        raise ValueError(
            f"neighbour_labels has k={k} columns but a query has R={max_r} relevant items; "
            "search at least max(R) neighbours for R-Precision and MAP@R"
        )
    hits = neighbour_labels[usable] == query_labels[usable, None]  # (Qu, k) bool
    return _summary(*_contributions(hits, counts_r[usable]), ks, n_q)


def search_width(counts_r: np.ndarray, k: int, available: int) -> int:
    """The neighbours one search keeps per query: ``max(k, max R)`` (R-Precision and MAP@R
    read the first ``R``), capped at the ``available`` references."""
    return min(max(k, int(counts_r.max(initial=0))), available)


def evaluate_retrieval(
    query: ArrayLike,
    query_labels: ArrayLike,
    reference: ArrayLike | None = None,
    reference_labels: ArrayLike | None = None,
    ks: Sequence[int] = (1, 2, 4, 8),
    *,
    keep: int | None = KEPT_QUERIES,
    backend: Backend = "faiss",
    batch_size: int | None = None,
) -> tuple[dict[str, float], RetrievalResult]:
    """Every kNN metric from one search, streamed over query chunks, and the neighbours of
    the queries that are kept.

    The search is :func:`search_width` wide (``max(max(ks), max R)``). Each chunk of
    queries is searched (:func:`see_dml.metrics.knn.knn_chunks`), reduced to its
    per-query contributions (first-hit rank, R-Precision, AP@R) and dropped, so the peak
    memory is ``O(chunk x width)`` plus ``O(Q)`` whatever ``Q``; only the ``keep`` rows'
    neighbour lists are kept. The numbers are those of :func:`metrics_from_neighbours`
    on the whole result.

    A search at least 4 times wider than ``max(100, max R)`` (SOP's Recall@1000) is done in
    two passes with faiss (:func:`_two_pass`): 100 neighbours of every query, then the full
    width for the few queries whose first hit or first ``R`` neighbours those leave
    uncertain, and for the kept rows. Same numbers, to the last bit; at SOP's test size
    less than half the time of one full-width search (``benchmarks/README.md``).

    Args:
        query: (Q, d) embeddings (numpy or torch), L2-normalised inside.
        query_labels: (Q,) labels.
        reference: (R, d) gallery embeddings, or None for all-vs-all (query vs itself, each
            query excluded from its own neighbours by index).
        reference_labels: (R,) gallery labels; required with ``reference``.
        ks: the K of Recall@K.
        keep: evenly spaced queries whose neighbour lists are returned (:func:`spread_rows`);
            None keeps every query's, which is ``O(Q x width)`` again.
        backend: kNN backend, see :func:`see_dml.metrics.knn_search`.
        batch_size: queries per chunk (default :func:`see_dml.metrics.knn.default_chunk`).

    Returns:
        ``(metrics, kept)``: the metrics as :func:`metrics_from_neighbours` returns them,
        and a :class:`RetrievalResult` of the kept rows.
    """
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {tuple(ks)}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    n_q = len(query)
    q_labels = _as_labels(query_labels, n_q, "query_labels")
    exclude_self = reference is None
    if reference is None:
        if reference_labels is not None:
            raise ValueError("reference_labels given without reference embeddings")
        reference, r_labels = query, q_labels
    else:
        if reference_labels is None:
            raise ValueError("reference embeddings given without reference_labels")
        r_labels = _as_labels(reference_labels, len(reference), "reference_labels")

    available = len(reference) - int(exclude_self)
    if available < 1:
        raise ValueError("the reference set has no item other than the query itself")
    counts_r = relevant_counts(q_labels, r_labels, exclude_self=exclude_self)
    width = search_width(counts_r, max(ks), available)
    kept_rows = np.arange(n_q) if keep is None else spread_rows(n_q, keep)
    parts = _Parts(q_labels, r_labels, counts_r, kept_rows, width)
    narrow = _narrow_width(counts_r, width)
    if (keep is not None and narrow is not None
            and resolve_backend(backend, query) == "faiss"):
        _two_pass(parts, query, reference, exclude_self, narrow, batch_size)
    else:
        for start, sims, idx in knn_chunks(query, reference, width, exclude_self=exclude_self,
                                           backend=backend, batch_size=batch_size):
            parts.add(np.arange(start, start + len(idx)), sims, idx)
    metrics = _summary(parts.first_hit, parts.r_precision, parts.ap_at_r, ks, n_q)
    kept = RetrievalResult(
        query_labels=q_labels,
        rows=kept_rows,
        indices=parts.kept_idx,
        similarities=parts.kept_sims,
        neighbour_labels=r_labels[parts.kept_idx],
        relevant_counts=counts_r,
        exclude_self=exclude_self,
    )
    return metrics, kept


#: The width of the narrow first search of a wide evaluation (:func:`_two_pass`): the first
#: hit of most queries of a trained model lies within it, and faiss keeps 100 neighbours at
#: about the cost of the scores alone (at SOP's size, 60,502 x 128: 10 CPU s for 101 of
#: them, 23 s for 1,001).
NARROW_WIDTH = 100
#: A search at least this many times wider than the narrow one is done in two passes.
_TWO_PASS_MIN_RATIO = 4
#: When the narrow search has left more than this share of the queries searched so far
#: undecided, the remaining queries are searched at full width at once (the second pass
#: would cost more than it saves).
_TWO_PASS_MAX_UNDECIDED = 0.25
#: The fewest queries of the first narrow chunk, which decides whether the rest is narrow.
_TWO_PASS_PROBE = 256


def _narrow_width(counts_r: np.ndarray, width: int) -> int | None:
    """The first pass's width for a search ``width`` wide, or None for one pass."""
    narrow = max(NARROW_WIDTH, int(counts_r.max(initial=0)))
    return narrow if width >= _TWO_PASS_MIN_RATIO * narrow else None


class _Parts:
    """The per-query parts of every metric (first-hit rank, R-Precision, AP@R) of the
    usable queries, in query order, and the neighbour lists of the kept rows, filled chunk
    by chunk in any order of rows."""

    def __init__(self, q_labels: np.ndarray, r_labels: np.ndarray, counts_r: np.ndarray,
                 kept_rows: np.ndarray, width: int) -> None:
        self.q_labels, self.r_labels, self.counts_r = q_labels, r_labels, counts_r
        self.max_r = int(counts_r.max(initial=0))
        usable = counts_r > 0
        self.slot = np.cumsum(usable) - 1  # a usable query's place among the usable ones
        n_used = int(usable.sum())
        self.first_hit = np.empty(n_used, dtype=np.int64)
        self.r_precision = np.empty(n_used, dtype=np.float64)
        self.ap_at_r = np.empty(n_used, dtype=np.float64)
        self.kept_rows = kept_rows
        self.kept_idx = np.empty((len(kept_rows), width), dtype=np.int64)
        self.kept_sims = np.empty((len(kept_rows), width), dtype=np.float32)

    def hits(self, rows: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """(c, k) whether each neighbour of query ``rows`` shares its label."""
        return self.r_labels[idx] == self.q_labels[rows, None]

    def add_metrics(self, rows: np.ndarray, hits: np.ndarray) -> None:
        """The parts of usable query ``rows`` from their ``hits`` (at least ``max R`` wide,
        exact in the columns the parts read)."""
        if len(rows):
            parts = _contributions(hits, self.counts_r[rows], self.max_r)
            at = self.slot[rows]
            self.first_hit[at], self.r_precision[at], self.ap_at_r[at] = parts

    def add_kept(self, rows: np.ndarray, sims: np.ndarray, idx: np.ndarray) -> None:
        """The full-width neighbour lists of those of ``rows`` (increasing) that are kept."""
        is_kept = np.isin(rows, self.kept_rows)
        if is_kept.any():
            at = np.searchsorted(self.kept_rows, rows[is_kept])
            self.kept_idx[at], self.kept_sims[at] = idx[is_kept], sims[is_kept]

    def add(self, rows: np.ndarray, sims: np.ndarray, idx: np.ndarray) -> None:
        """A full-width ``(c, width)`` search result of query ``rows``."""
        usable = self.counts_r[rows] > 0
        if usable.all():
            self.add_metrics(rows, self.hits(rows, idx))
        else:
            self.add_metrics(rows[usable], self.hits(rows[usable], idx[usable]))
        self.add_kept(rows, sims, idx)


def _two_pass(parts: _Parts, query: ArrayLike, reference: ArrayLike | None,
              exclude_self: bool, narrow: int, batch_size: int | None) -> None:
    """Fill ``parts`` from a narrow search of every query and a full-width one of the few
    it leaves undecided, with the numbers one full-width search gives.

    The full width (``max(ks)``, 1,000 for SOP) is needed only for Recall@K of the queries
    whose first hit lies beyond the first ``narrow`` neighbours. A query is decided by the
    narrow search when its first hit and its first ``R`` neighbours lie within the columns
    any wider search returns alike (:func:`see_dml.metrics.knn.certain_columns`); the
    others, and the kept rows, whose full lists are returned, are searched again at full
    width. Every search runs faiss's BLAS kernel (:class:`see_dml.metrics.knn.ExactIndex`),
    so a query gets the same scores in both passes and in one search of all queries.
    """
    width = parts.kept_idx.shape[1]
    searcher = ExactIndex(query, query if reference is None else reference, exclude_self)
    n_q, n_r = len(searcher.query), len(searcher.reference)
    usable = parts.counts_r > 0
    decided = np.zeros(n_q, dtype=bool)  # the narrow search gave its parts
    chunk = batch_size or default_chunk(n_r, narrow, "faiss")
    # a first chunk of ~3 % of the queries tells whether the narrow search decides enough
    probe = min(chunk, max(_TWO_PASS_PROBE, n_q // 32))
    start = 0
    while start < n_q:
        searched = int(usable[:start].sum())
        if searched - int(decided[:start].sum()) > _TWO_PASS_MAX_UNDECIDED * searched:
            break  # most queries need the full width: search all the rest at once
        stop = min(start + (chunk if start else probe), n_q)
        sims, idx, rows = searcher.search_raw(slice(start, stop), narrow)
        certain = certain_columns(sims, idx, rows if exclude_self else None)
        sims, idx = searcher.drop_self(sims, idx, rows)
        hits = parts.hits(rows, idx)
        first = np.where(hits.any(axis=1), hits.argmax(axis=1), narrow)
        r = parts.counts_r[rows]
        # decided: every column the per-query parts read (_contributions: up to the first
        # hit, and the first R) is certain; a part that reads further must be covered here
        ok = usable[rows] & (r <= certain) & (first < certain)
        parts.add_metrics(rows[ok], hits[ok])
        decided[rows] = ok
        start = stop
    # the undecided queries (all of them from ``start`` on) and the kept rows
    wide = usable & ~decided
    wide[parts.kept_rows] = True
    again = np.flatnonzero(wide)
    wide_chunk = batch_size or default_chunk(n_r, width, "faiss")
    for lo in range(0, len(again), wide_chunk):
        rows = again[lo:lo + wide_chunk]
        sims, idx = searcher.search(rows, width)
        parts.add_kept(rows, sims, idx)
        todo = usable[rows] & ~decided[rows]
        parts.add_metrics(rows[todo], parts.hits(rows[todo], idx[todo]))


def retrieve(
    query: ArrayLike,
    query_labels: ArrayLike,
    reference: ArrayLike | None = None,
    reference_labels: ArrayLike | None = None,
    k: int = 1,
    *,
    backend: Backend = "faiss",
    batch_size: int | None = None,
) -> RetrievalResult:
    """Every query's neighbours from the metrics' search (:func:`evaluate_retrieval` with
    ``keep=None``): ``max(k, max R)`` of them, capped at the number of references (minus
    the query). This holds the whole ``(Q, width)`` result: for small sets and tests; an
    evaluation keeps only a few rows.

    Args:
        query: (Q, d) embeddings. L2-normalised inside (similarities are cosines).
        query_labels: (Q,) labels.
        reference: (R, d) gallery embeddings, or None for all-vs-all.
        reference_labels: (R,) gallery labels; required with ``reference``.
        k: neighbours needed for the caller's own purposes (e.g. ``max(ks)``).
        backend: kNN backend, see :func:`knn_search`.
        batch_size: queries per search chunk, see :func:`knn_search`.
    """
    return evaluate_retrieval(query, query_labels, reference, reference_labels, (k,),
                              keep=None, backend=backend, batch_size=batch_size)[1]


def nmi_score(
    embeddings: ArrayLike, labels: ArrayLike, num_clusters: int | None = None, seed: int = 0
) -> float:
    """NMI between labels and faiss k-means clusters of the L2-normalised embeddings.

    Args:
        embeddings: (N, d) embeddings.
        labels: (N,) labels.
        num_clusters: clusters for k-means; default the number of distinct labels.
        seed: k-means seed, so the score is reproducible.
    """
    x = l2_normalised(embeddings)
    y = _as_labels(labels, len(x), "labels")
    n_clusters = num_clusters or len(np.unique(y))
    kmeans = faiss.Kmeans(x.shape[1], n_clusters, niter=20, seed=seed, verbose=False)
    kmeans.train(x)
    _, assignment = kmeans.index.search(x, 1)
    return float(normalized_mutual_info_score(y, assignment[:, 0]))


def retrieval_metrics(
    query: ArrayLike,
    query_labels: ArrayLike,
    reference: ArrayLike | None = None,
    reference_labels: ArrayLike | None = None,
    ks: Sequence[int] = (1, 2, 4, 8),
    *,
    backend: Backend = "faiss",
    compute_nmi: bool = False,
    num_classes_for_nmi: int | None = None,
) -> dict[str, float]:
    """Recall@K, Precision@1, R-Precision, MAP@R (and NMI) from one kNN search.

    Args:
        query: (Q, d) embeddings (numpy or torch), L2-normalised inside.
        query_labels: (Q,) labels.
        reference: (R, d) gallery embeddings; None means all-vs-all with each query
            excluded from its own neighbours by index (CUB, Cars, SOP). In-Shop passes its
            gallery here and nothing is excluded.
        reference_labels: (R,) gallery labels.
        ks: the K of Recall@K (1, 2, 4, 8 for CUB/Cars; 1, 10, 100, 1000 for SOP).
        backend: kNN backend, ``"faiss"``, ``"torch"`` or ``"auto"`` (see :func:`knn_search`).
        compute_nmi: also cluster the query embeddings with k-means and report ``nmi``.
        num_classes_for_nmi: k-means clusters; default the number of query classes.

    Returns:
        ``recall@K`` per K, ``precision@1``, ``r_precision``, ``map@r``, ``num_queries``,
        ``num_excluded_queries`` (queries with no relevant reference, left out of every
        kNN metric) and, if asked, ``nmi``. All python floats.
    """
    out, kept = evaluate_retrieval(query, query_labels, reference, reference_labels, ks,
                                   keep=0, backend=backend)
    if compute_nmi:
        out["nmi"] = nmi_score(query, kept.query_labels, num_classes_for_nmi)
    return out

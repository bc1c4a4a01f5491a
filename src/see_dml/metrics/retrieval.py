"""Retrieval metrics (Recall@K, Precision@K, mAP@K, R-Precision, MAP@R, NMI) from ONE kNN
search, the set of them chosen by a :class:`~see_dml.metrics.metric_set.MetricSet` (the
config group ``metrics``).

One search with ``k`` = :meth:`MetricSet.width` (the largest K of any metric, and the largest
R when MAP@R or R-Precision is on) gives the neighbour-label matrix; every kNN metric is then
a vectorised function of that matrix, as in pytorch-metric-learning's ``AccuracyCalculator``.
:func:`evaluate_retrieval` streams it: each chunk of queries is reduced to per-query parts
(:func:`_contributions`) and dropped, so memory is ``O(chunk x k)``, not ``O(Q x k)`` (PML's
calculator holds the whole ``(Q, k)`` result, as a plain faiss search does). A search much
wider than the metrics need for most queries (SOP's Recall@1000) is done in two passes with
the numbers of one (:func:`_two_pass`).

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
- Recall@K = 1 when a relevant item is among the first K neighbours, else 0 (OML's
  ``cmc@K``).
- Precision@K = (relevant items among the first K neighbours) / K, the textbook definition
  (PML's ``precision_at_1`` at K = 1). OML's ``precision@K`` divides by ``min(K, R)``
  instead, which does not penalise a query with fewer than K relevant items; R-Precision
  is the measure made for that.
- mAP@K = OML's ``map@K`` (``oml.functional.metrics.calc_map``):
  ``(1 / min(K, R)) * sum_{i<=K} P(i) * rel(i)``, with P(i) the precision over the first i
  neighbours and rel(i) whether the i-th is relevant.
- R-Precision = (same-label items among the first R neighbours) / R.
- MAP@R = (1/R) * sum_{i<=R} P(i) * rel(i) (Musgrave et al. 2020, "A Metric Learning
  Reality Check"): mAP@K at K = R.
- A K beyond the references searched (a K larger than the gallery) counts the neighbours
  there are: Recall@K and the sums stop at the last reference, and Precision@K and mAP@K
  take that many as their K (OML clips its K to the gallery the same way).
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
from see_dml.metrics.metric_set import MetricSet

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


#: The per-query part of Recall@K: the 0-based rank of the first relevant neighbour (the
#: search width for none), from which every Recall@K is one comparison.
FIRST_HIT = "first_hit"


def _first_hit(hits: np.ndarray) -> np.ndarray:
    """(c,) the 0-based rank of each row's first relevant neighbour in a ``(c, k)`` hit
    matrix, ``k`` (the search width) for a row with none."""
    return np.where(hits.any(axis=1), hits.argmax(axis=1), hits.shape[1])


def _fixed_columns(metric_set: MetricSet) -> int:
    """The leading columns Precision@K and mAP@K read (their largest K; 0 for none)."""
    return max((*metric_set.precision_at, *metric_set.map_at), default=0)


def _contributions(hits: np.ndarray, r: np.ndarray, metric_set: MetricSet,
                   max_r: int | None = None) -> dict[str, np.ndarray]:
    """Per-query parts of every kNN metric of ``metric_set`` (its ``recall_at`` resolved),
    from the ``(c, k)`` same-label matrix of usable queries (``R >= 1``, ``k`` the search
    width): ``{part: (c,) array}``, one part per metric, named as the metric, except
    Recall@K's one :data:`FIRST_HIT` for every K. :func:`_summary` averages them over the
    queries. A new metric of the neighbour lists is one more part here (and one more key in
    ``MetricSet.names``): memory stays one chunk's.

    ``max_r``: the columns R-Precision and MAP@R read (default ``max(r)``); one number for
    every chunk of an evaluation, so that a row's AP@R is summed the same way (to the last
    bit) whichever rows share its chunk.

    A row reads its columns up to its first hit (Recall@K), its first ``R`` (R-Precision,
    MAP@R) and the first :func:`_fixed_columns` (Precision@K, mAP@K): what
    :func:`_exact_within` checks before :func:`_two_pass` takes a row's parts from the narrow
    search. A part that reads further must be added there."""
    k = hits.shape[1]
    parts: dict[str, np.ndarray] = {}
    if metric_set.recall_at:
        parts[FIRST_HIT] = _first_hit(hits)  # Recall@K needs only the first hit's rank
    # relevant items among the first i neighbours, i = 1 .. the largest K of P@K / mAP@K
    cut = min(_fixed_columns(metric_set), k)
    found = np.cumsum(hits[:, :cut], axis=1)  # (c, cut) int
    for kk in metric_set.precision_at:  # a K beyond the width: the references there are
        at = min(kk, k)
        parts[f"precision@{kk}"] = found[:, at - 1] / at
    if metric_set.map_at:
        precision_at_i = found / np.arange(1, cut + 1)  # float64, as OML and PML
        for kk in metric_set.map_at:  # OML's calc_map: sum of P(i) rel(i), over min(K, R)
            at = min(kk, k)
            parts[f"map@{kk}"] = ((precision_at_i[:, :at] * hits[:, :at]).sum(axis=1)
                                  / np.minimum(at, r))
    if metric_set.needs_r:
        # R-Precision and MAP@R only look at the first R columns of each row.
        max_r = int(r.max(initial=0)) if max_r is None else max_r
        head = hits[:, :max_r]
        ranks = np.arange(1, max_r + 1)
        relevant_hits = head & (ranks[None, :] <= r[:, None])  # (c, max R)
        if metric_set.r_precision:
            parts["r_precision"] = relevant_hits.sum(axis=1) / r
        if metric_set.map_at_r:
            precision_at_i = np.cumsum(relevant_hits, axis=1) / ranks  # float64, as PML
            parts["map@r"] = (precision_at_i * relevant_hits).sum(axis=1) / r
    return parts


def _exact_within(metric_set: MetricSet, first: np.ndarray, r: np.ndarray,
                  certain: np.ndarray) -> np.ndarray:
    """(c,) whether every column the parts of :func:`_contributions` read lies within each
    row's first ``certain`` columns (:func:`see_dml.metrics.knn.certain_columns`: those any
    wider search returns alike), so that a narrow search gives the parts of the full-width
    one to the last bit. ``first``: the 0-based rank of each row's first hit in the narrow
    search (its width for none); ``r``: the rows' ``R``.

    Recall@K reads up to the first hit (a hit beyond the narrow search may be at any rank
    up to the full width), R-Precision and MAP@R the first ``R``, Precision@K and mAP@K
    the first K (every K of theirs; :func:`_narrow_width` makes the narrow search that wide
    at least). NMI is not of the neighbours. A metric that reads further widens this check.
    """
    ok = certain >= _fixed_columns(metric_set)
    if metric_set.recall_at:
        ok &= first < certain
    if metric_set.needs_r:
        ok &= r <= certain
    return ok


def _summary(parts: dict[str, np.ndarray], metric_set: MetricSet, n_used: int, n_q: int
             ) -> dict[str, float]:
    """The averages of the per-query ``parts`` over the ``n_used`` usable queries, and the
    query counts (NMI, which is not of the neighbours, is added by the caller)."""
    names = [key for key in metric_set.names() if key != "nmi"]
    if n_used == 0:
        warnings.warn("no query has a relevant reference; kNN metrics are NaN", stacklevel=3)
        return {name: float("nan") for name in names} | {
            "num_queries": 0.0, "num_excluded_queries": float(n_q)
        }
    out = {}
    for name in names:
        if name.startswith("recall@"):
            out[name] = float(np.mean(parts[FIRST_HIT] < int(name[len("recall@"):])))
        else:
            out[name] = float(np.mean(parts[name]))
    out["num_queries"] = float(n_used)
    out["num_excluded_queries"] = float(n_q - n_used)
    return out


def metrics_from_neighbours(
    neighbour_labels: np.ndarray,
    query_labels: np.ndarray,
    counts_r: np.ndarray,
    ks: Sequence[int] = (1, 2, 4, 8),
    *,
    metric_set: MetricSet | None = None,
) -> dict[str, float]:
    """Every kNN metric of a neighbour-label matrix (the one-chunk case of
    :func:`evaluate_retrieval`).

    Args:
        neighbour_labels: (Q, k) labels of each query's neighbours, most similar first, the
            query itself already removed. ``k`` must be at least ``max(counts_r)`` when
            R-Precision or MAP@R is on; for a metric at K it should be at least
            ``min(K, number of references)`` — a K beyond ``k`` is scored on the ``k``
            columns there are (exact when every reference was searched).
        query_labels: (Q,) labels of the queries.
        counts_r: (Q,) number of relevant references ``R`` per query; queries with
            ``R == 0`` are excluded from every metric and counted.
        ks: the K of Recall@K where the metric set leaves them to the data.
        metric_set: what to compute (default :class:`MetricSet`: Recall@``ks``,
            Precision@1, R-Precision, MAP@R); its NMI needs the embeddings and is left out.

    Returns:
        a float in [0, 1] per metric of the set (NaN when no query is usable), named as in
        ``metrics.json`` (``recall@K``, ``precision@K``, ``map@K``, ``r_precision``,
        ``map@r``), and ``num_queries`` and ``num_excluded_queries``.
    """
    metric_set = (metric_set or MetricSet()).resolved(ks)
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
    if metric_set.needs_r and max_r > k:
        raise ValueError(
            f"neighbour_labels has k={k} columns but a query has R={max_r} relevant items; "
            "search at least max(R) neighbours for R-Precision and MAP@R"
        )
    hits = neighbour_labels[usable] == query_labels[usable, None]  # (Qu, k) bool
    return _summary(_contributions(hits, counts_r[usable], metric_set, max_r), metric_set,
                    int(usable.sum()), n_q)


def search_width(counts_r: np.ndarray, metric_set: MetricSet, available: int) -> int:
    """The neighbours one search keeps per query (:meth:`MetricSet.width`: the largest K,
    and ``max R`` when R-Precision or MAP@R read the first ``R``), capped at the
    ``available`` references."""
    return metric_set.width(int(counts_r.max(initial=0)), available)


def evaluate_retrieval(
    query: ArrayLike,
    query_labels: ArrayLike,
    reference: ArrayLike | None = None,
    reference_labels: ArrayLike | None = None,
    ks: Sequence[int] = (1, 2, 4, 8),
    *,
    metric_set: MetricSet | None = None,
    keep: int | None = KEPT_QUERIES,
    backend: Backend = "faiss",
    batch_size: int | None = None,
) -> tuple[dict[str, float], RetrievalResult]:
    """Every metric of ``metric_set`` from one search, streamed over query chunks, and the
    neighbours of the queries that are kept: the one function every evaluation (training's
    val and test, ``evaluate``, the export) computes its metrics with.

    The search is :func:`search_width` wide. Each chunk of queries is searched
    (:func:`see_dml.metrics.knn.knn_chunks`), reduced to its per-query contributions
    (:func:`_contributions`) and dropped, so the peak memory is ``O(chunk x width)`` plus
    ``O(Q)`` whatever ``Q``; only the ``keep`` rows' neighbour lists are kept. The numbers
    are those of :func:`metrics_from_neighbours` on the whole result.

    A search at least 4 times wider than the narrow one (:func:`_narrow_width`: 100, or the
    largest R or Precision@K / mAP@K K beyond it; SOP's Recall@1000) is done in two passes
    with faiss (:func:`_two_pass`): the narrow search of every query, then the full width
    for the few queries whose columns the metrics read (:func:`_exact_within`) it leaves
    uncertain, and for the kept rows. Same numbers, to the last bit; at SOP's test size less
    than half the time of one full-width search (``benchmarks/README.md``).

    Args:
        query: (Q, d) embeddings (numpy or torch), L2-normalised inside.
        query_labels: (Q,) labels.
        reference: (R, d) gallery embeddings, or None for all-vs-all (query vs itself, each
            query excluded from its own neighbours by index).
        reference_labels: (R,) gallery labels; required with ``reference``.
        ks: the K of Recall@K where the metric set leaves them to the data (its
            ``recall_at`` is None: the dataset's Ks).
        metric_set: what to compute (default :class:`MetricSet`: Recall@``ks``,
            Precision@1, R-Precision, MAP@R). Its ``nmi`` clusters the query and reference
            rows together (In-Shop's query and gallery; all-vs-all: the queries).
        keep: evenly spaced queries whose neighbour lists are returned (:func:`spread_rows`);
            None keeps every query's, which is ``O(Q x width)`` again.
        backend: kNN backend, see :func:`see_dml.metrics.knn_search`.
        batch_size: queries per chunk (default :func:`see_dml.metrics.knn.default_chunk`).

    Returns:
        ``(metrics, kept)``: the metrics as :func:`metrics_from_neighbours` returns them
        (and ``nmi`` when asked), and a :class:`RetrievalResult` of the kept rows.
    """
    metric_set = metric_set or MetricSet()
    if metric_set.recall_at is None and (not ks or min(ks) < 1):
        raise ValueError(f"ks must be positive integers, got {tuple(ks)}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    metric_set = metric_set.resolved(ks)
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
    width = search_width(counts_r, metric_set, available)
    kept_rows = np.arange(n_q) if keep is None else spread_rows(n_q, keep)
    # O(Q) per-query parts; averaged once at the end, so the numbers are those of one pass.
    parts = _Parts(q_labels, r_labels, counts_r, metric_set, kept_rows, width)
    narrow = _narrow_width(metric_set, counts_r, width)
    if (keep is not None and narrow is not None
            and resolve_backend(backend, query) == "faiss"):
        _two_pass(parts, query, reference, exclude_self, narrow, batch_size)
    else:
        for start, sims, idx in knn_chunks(query, reference, width, exclude_self=exclude_self,
                                           backend=backend, batch_size=batch_size):
            parts.add(np.arange(start, start + len(idx)), sims, idx)
    metrics = _summary(parts.values, metric_set, parts.n_used, n_q)
    if metric_set.nmi:
        rows = [query] if exclude_self else [query, reference]
        metrics["nmi"] = nmi_score(np.concatenate([_float32(x) for x in rows]),
                                   np.concatenate([q_labels] if exclude_self
                                                  else [q_labels, r_labels]), seed=0)
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


def _narrow_width(metric_set: MetricSet, counts_r: np.ndarray, width: int) -> int | None:
    """The first pass's width for a search ``width`` wide, or None for one pass.

    :data:`NARROW_WIDTH`, widened to every column a decided query's parts read whatever its
    neighbours (:func:`_exact_within`): the largest R when R-Precision or MAP@R is on, the
    largest K of Precision@K and mAP@K. Two passes only when ``width`` is at least
    :data:`_TWO_PASS_MIN_RATIO` times that (a Precision@500 next to Recall@1000: one pass).
    """
    narrow = max(NARROW_WIDTH, _fixed_columns(metric_set),
                 int(counts_r.max(initial=0)) if metric_set.needs_r else 0)
    return narrow if width >= _TWO_PASS_MIN_RATIO * narrow else None


class _Parts:
    """The per-query parts of every metric of the set (:func:`_contributions`) of the
    usable queries, in query order, and the neighbour lists of the kept rows, filled chunk
    by chunk in any order of rows."""

    def __init__(self, q_labels: np.ndarray, r_labels: np.ndarray, counts_r: np.ndarray,
                 metric_set: MetricSet, kept_rows: np.ndarray, width: int) -> None:
        self.q_labels, self.r_labels, self.counts_r = q_labels, r_labels, counts_r
        self.metric_set = metric_set
        self.max_r = int(counts_r.max(initial=0))
        usable = counts_r > 0
        self.slot = np.cumsum(usable) - 1  # a usable query's place among the usable ones
        self.n_used = int(usable.sum())
        #: ``{part: (n_used,) array}``, each made when a first chunk brings it
        self.values: dict[str, np.ndarray] = {}
        self.kept_rows = kept_rows
        self.kept_idx = np.empty((len(kept_rows), width), dtype=np.int64)
        self.kept_sims = np.empty((len(kept_rows), width), dtype=np.float32)

    def hits(self, rows: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """(c, k) whether each neighbour of query ``rows`` shares its label."""
        return self.r_labels[idx] == self.q_labels[rows, None]

    def add_metrics(self, rows: np.ndarray, hits: np.ndarray) -> None:
        """The parts of usable query ``rows`` from their ``hits`` (exact in every column
        the parts read: :func:`_exact_within`)."""
        if len(rows):
            at = self.slot[rows]
            for name, part in _contributions(hits, self.counts_r[rows], self.metric_set,
                                             self.max_r).items():
                if name not in self.values:
                    self.values[name] = np.empty(self.n_used, dtype=part.dtype)
                self.values[name][at] = part

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

    The full width (the largest Recall@K, 1,000 for SOP) is needed only for Recall@K of the
    queries whose first hit lies beyond the first ``narrow`` neighbours. A query is decided
    by the narrow search when every column its parts read (its first hit, its first ``R``,
    the first K of Precision@K and mAP@K: :func:`_exact_within`) lies within the columns any
    wider search returns alike (:func:`see_dml.metrics.knn.certain_columns`); the others,
    and the kept rows, whose full lists are returned, are searched again at full width.
    Every search runs faiss's BLAS kernel (:class:`see_dml.metrics.knn.ExactIndex`), so a
    query gets the same scores in both passes and in one search of all queries.
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
        first = _first_hit(hits)
        # decided: every column the per-query parts read is certain (_exact_within)
        ok = usable[rows] & _exact_within(parts.metric_set, first, parts.counts_r[rows],
                                          certain)
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


def _float32(x: ArrayLike) -> np.ndarray:
    """(N, d) embeddings as a float32 numpy array on the CPU (not normalised)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


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
    metric_set: MetricSet | None = None,
    backend: Backend = "faiss",
) -> dict[str, float]:
    """The metrics of :func:`evaluate_retrieval`, without the neighbours (``keep=0``).

    Args:
        query: (Q, d) embeddings (numpy or torch), L2-normalised inside.
        query_labels: (Q,) labels.
        reference: (R, d) gallery embeddings; None means all-vs-all with each query
            excluded from its own neighbours by index (CUB, Cars, SOP). In-Shop passes its
            gallery here and nothing is excluded.
        reference_labels: (R,) gallery labels.
        ks: the K of Recall@K (1, 2, 4, 8 for CUB/Cars; 1, 10, 100, 1000 for SOP) where the
            metric set leaves them to the data.
        metric_set: what to compute (default :class:`MetricSet`: Recall@``ks``,
            Precision@1, R-Precision, MAP@R; ``MetricSet(nmi=True)`` adds the NMI).
        backend: kNN backend, ``"faiss"``, ``"torch"`` or ``"auto"`` (see :func:`knn_search`).

    Returns:
        a python float per metric of the set (``recall@K``, ``precision@1``, ``r_precision``,
        ``map@r`` by default), ``num_queries`` and ``num_excluded_queries`` (queries with no
        relevant reference, left out of every kNN metric).
    """
    return evaluate_retrieval(query, query_labels, reference, reference_labels, ks,
                              metric_set=metric_set, keep=0, backend=backend)[0]

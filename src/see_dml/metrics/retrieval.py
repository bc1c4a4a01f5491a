"""Retrieval metrics (Recall@K, Precision@1, R-Precision, MAP@R, NMI) from ONE kNN search.

One search with ``k = max(max(ks), max R)`` gives the neighbour-label matrix; every kNN
metric is then a vectorised function of that matrix, as in pytorch-metric-learning's
``AccuracyCalculator``. :func:`evaluate_retrieval` streams it: each chunk of queries is
reduced to per-query parts and dropped, so memory is ``O(chunk x k)``, not ``O(Q x k)``
(PML's calculator holds the whole ``(Q, k)`` result, as a plain faiss search does).

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

from see_dml.metrics.knn import ArrayLike, Backend, knn_chunks, l2_normalised

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


def _contributions(hits: np.ndarray, r: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-query parts of every kNN metric, from the ``(c, k)`` same-label matrix of usable
    queries (``R >= 1``, ``k >= max R``): the rank of the first hit (``k`` for none), the
    R-Precision and the AP@R of each row."""
    k = hits.shape[1]
    # Recall@K needs only the rank of the first hit; k stands for "no hit at all".
    first_hit = np.where(hits.any(axis=1), hits.argmax(axis=1), k)
    # R-Precision and MAP@R only look at the first R columns of each row.
    max_r = int(r.max(initial=0))
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
    kept_idx = np.empty((len(kept_rows), width), dtype=np.int64)
    kept_sims = np.empty((len(kept_rows), width), dtype=np.float32)
    # O(Q) per-query parts; averaged once at the end, so the numbers are those of one pass.
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for start, sims, idx in knn_chunks(query, reference, width, exclude_self=exclude_self,
                                       backend=backend, batch_size=batch_size):
        stop = start + len(idx)
        r = counts_r[start:stop]
        usable = r > 0
        hits = r_labels[idx[usable]] == q_labels[start:stop][usable, None]
        parts.append(_contributions(hits, r[usable]))
        del hits
        lo, hi = np.searchsorted(kept_rows, [start, stop])
        kept_idx[lo:hi] = idx[kept_rows[lo:hi] - start]
        kept_sims[lo:hi] = sims[kept_rows[lo:hi] - start]
    first_hit, r_precision, ap_at_r = (np.concatenate([p[i] for p in parts]) for i in range(3))
    metrics = _summary(first_hit, r_precision, ap_at_r, ks, n_q)
    kept = RetrievalResult(
        query_labels=q_labels,
        rows=kept_rows,
        indices=kept_idx,
        similarities=kept_sims,
        neighbour_labels=r_labels[kept_idx],
        relevant_counts=counts_r,
        exclude_self=exclude_self,
    )
    return metrics, kept


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

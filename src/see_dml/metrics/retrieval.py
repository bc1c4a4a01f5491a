"""Retrieval metrics (Recall@K, Precision@1, R-Precision, MAP@R, NMI) from ONE kNN result.

One search with ``k = max(max(ks), max R)`` gives the neighbour-label matrix; every kNN
metric is then a vectorised function of that matrix, as in pytorch-metric-learning's
``AccuracyCalculator``. We do not call that calculator: it lacks Recall@K, converts labels
to float, builds its relevance mask with a Python loop over classes (11k for SOP), and
materialises several ``(Q, k)`` float64 matrices over the full search width. Here only the
first ``max R`` columns are used for R-Precision / MAP@R and Recall@K needs one argmax.

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

from see_dml.metrics.knn import ArrayLike, Backend, knn_search, l2_normalised

# Above this many relevant items per query, the (Q, k) search result gets large: Q * k * 16
# bytes (similarities, indices, labels). Real DML test sets stay far below (SOP 12,
# In-Shop < 100, CUB/Cars ~60), so this only fires on unusual label sets.
LARGE_R_WARNING = 1024


@dataclass(frozen=True)
class RetrievalResult:
    """One kNN result, shared by metrics, plots and export.

    Attributes:
        query_labels: (Q,) label of each query.
        indices: (Q, k) int64 indices into the reference set, most similar first.
        similarities: (Q, k) float32 cosine similarities matching ``indices``.
        neighbour_labels: (Q, k) reference labels at ``indices``.
        relevant_counts: (Q,) int64 ``R`` per query (0 for lone queries).
        exclude_self: True when the reference set is the query set (all-vs-all).
    """

    query_labels: np.ndarray
    indices: np.ndarray
    similarities: np.ndarray
    neighbour_labels: np.ndarray
    relevant_counts: np.ndarray
    exclude_self: bool

    @property
    def k(self) -> int:
        """Number of neighbours kept per query."""
        return int(self.indices.shape[1])


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


def metrics_from_neighbours(
    neighbour_labels: np.ndarray,
    query_labels: np.ndarray,
    counts_r: np.ndarray,
    ks: Sequence[int] = (1, 2, 4, 8),
) -> dict[str, float]:
    """All kNN metrics from a neighbour-label matrix.

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
    n_used = int(usable.sum())
    if n_used == 0:
        warnings.warn("no query has a relevant reference; kNN metrics are NaN", stacklevel=2)
        names = [f"recall@{kk}" for kk in ks] + ["precision@1", "r_precision", "map@r"]
        return {name: float("nan") for name in names} | {
            "num_queries": 0.0, "num_excluded_queries": float(n_q)
        }

    r = counts_r[usable]
    max_r = int(r.max())
    if max_r > k:
        raise ValueError(
            f"neighbour_labels has k={k} columns but a query has R={max_r} relevant items; "
            "search at least max(R) neighbours for R-Precision and MAP@R"
        )
    hits = neighbour_labels == query_labels[:, None]  # (Q, k) bool
    if n_used < n_q:
        # Lone rows are dropped before averaging, as PML does; copying the bool matrix is
        # cheaper than copying the label matrix first.
        hits = hits[usable]

    out: dict[str, float] = {}
    # Recall@K needs only the rank of the first hit; k stands for "no hit at all".
    first_hit = np.where(hits.any(axis=1), hits.argmax(axis=1), k)
    for kk in ks:
        out[f"recall@{kk}"] = float(np.mean(first_hit < kk))
    out["precision@1"] = float(np.mean(hits[:, 0]))

    # R-Precision and MAP@R only look at the first R columns of each row.
    head = hits[:, :max_r]
    ranks = np.arange(1, max_r + 1)
    relevant_hits = head & (ranks[None, :] <= r[:, None])  # (Qu, max R)
    out["r_precision"] = float(np.mean(relevant_hits.sum(axis=1) / r))
    precision_at_i = np.cumsum(relevant_hits, axis=1) / ranks  # float64, as PML
    out["map@r"] = float(np.mean((precision_at_i * relevant_hits).sum(axis=1) / r))
    out["num_queries"] = float(n_used)
    out["num_excluded_queries"] = float(n_q - n_used)
    return out


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
    """Search once, wide enough for Recall@k and for R-Precision / MAP@R.

    Args:
        query: (Q, d) embeddings. L2-normalised inside (similarities are cosines).
        query_labels: (Q,) labels.
        reference: (R, d) gallery embeddings, or None for all-vs-all (query vs itself, each
            query excluded from its own neighbours by index).
        reference_labels: (R,) gallery labels; required with ``reference``.
        k: neighbours needed for the caller's own purposes (e.g. ``max(ks)``). The search
            uses ``max(k, max R)``, capped at the number of references (minus the query).
        backend: kNN backend, see :func:`knn_search`.
        batch_size: queries per search chunk, see :func:`knn_search`.

    Returns:
        A :class:`RetrievalResult` holding all Q queries (lone ones included).
    """
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
    max_r = int(counts_r.max(initial=0))
    if max_r > LARGE_R_WARNING:
        warnings.warn(
            f"a class has R={max_r} relevant references, so the search keeps {max_r} "
            f"neighbours for each of {n_q} queries (~{n_q * max_r * 16 / 2**30:.1f} GiB)",
            stacklevel=2,
        )
    k_search = min(max(k, max_r), available)
    sims, idx = knn_search(
        query, reference, k_search, exclude_self=exclude_self, backend=backend,
        batch_size=batch_size,
    )
    return RetrievalResult(
        query_labels=q_labels,
        indices=idx,
        similarities=sims,
        neighbour_labels=r_labels[idx],
        relevant_counts=counts_r,
        exclude_self=exclude_self,
    )


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
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {tuple(ks)}")
    result = retrieve(
        query, query_labels, reference, reference_labels, k=max(ks), backend=backend
    )
    out = metrics_from_neighbours(
        result.neighbour_labels, result.query_labels, result.relevant_counts, ks
    )
    if compute_nmi:
        out["nmi"] = nmi_score(query, result.query_labels, num_classes_for_nmi)
    return out

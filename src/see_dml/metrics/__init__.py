"""Retrieval evaluation: one exact kNN search (faiss or torch), streamed over query chunks,
and every metric from it."""

from see_dml.metrics.knn import knn_chunks, knn_search, l2_normalised, resolve_backend
from see_dml.metrics.retrieval import (
    KEPT_QUERIES,
    RetrievalResult,
    evaluate_retrieval,
    metrics_from_neighbours,
    nmi_score,
    relevant_counts,
    retrieval_metrics,
    retrieve,
    search_width,
    spread_rows,
)

__all__ = [
    "KEPT_QUERIES",
    "RetrievalResult",
    "evaluate_retrieval",
    "knn_chunks",
    "knn_search",
    "l2_normalised",
    "metrics_from_neighbours",
    "nmi_score",
    "relevant_counts",
    "resolve_backend",
    "retrieval_metrics",
    "retrieve",
    "search_width",
    "spread_rows",
]

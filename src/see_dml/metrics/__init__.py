"""Retrieval evaluation: one exact kNN search (faiss or torch), then every metric from it."""

from see_dml.metrics.knn import knn_search, l2_normalised, resolve_backend
from see_dml.metrics.retrieval import (
    RetrievalResult,
    metrics_from_neighbours,
    nmi_score,
    relevant_counts,
    retrieval_metrics,
    retrieve,
)

__all__ = [
    "RetrievalResult",
    "knn_search",
    "l2_normalised",
    "metrics_from_neighbours",
    "nmi_score",
    "relevant_counts",
    "resolve_backend",
    "retrieval_metrics",
    "retrieve",
]

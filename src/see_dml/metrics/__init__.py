"""Retrieval evaluation: one exact kNN search (faiss or torch), streamed over query chunks,
and every metric of the metric set (:class:`MetricSet`, the config group ``metrics``) from it.

The names load on first use: the metric set and its display names
(:mod:`see_dml.metrics.metric_set`) cost nothing to import, the search loads torch and faiss.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from see_dml.metrics.knn import knn_chunks, knn_search, l2_normalised, resolve_backend
    from see_dml.metrics.metric_set import (
        HEADLINE,
        MetricSet,
        display_name,
        metric_rank,
        shown_metrics,
    )
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

_HOME = {
    **dict.fromkeys(("knn_chunks", "knn_search", "l2_normalised", "resolve_backend"),
                    "see_dml.metrics.knn"),
    **dict.fromkeys(("HEADLINE", "MetricSet", "display_name", "metric_rank", "shown_metrics"),
                    "see_dml.metrics.metric_set"),
    **dict.fromkeys(("KEPT_QUERIES", "RetrievalResult", "evaluate_retrieval",
                     "metrics_from_neighbours", "nmi_score", "relevant_counts",
                     "retrieval_metrics", "retrieve", "search_width", "spread_rows"),
                    "see_dml.metrics.retrieval"),
}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'see_dml.metrics' has no attribute '{name}'")
    return getattr(importlib.import_module(_HOME[name]), name)


__all__ = [
    "HEADLINE",
    "KEPT_QUERIES",
    "MetricSet",
    "RetrievalResult",
    "display_name",
    "evaluate_retrieval",
    "knn_chunks",
    "knn_search",
    "l2_normalised",
    "metric_rank",
    "metrics_from_neighbours",
    "nmi_score",
    "relevant_counts",
    "resolve_backend",
    "retrieval_metrics",
    "retrieve",
    "search_width",
    "shown_metrics",
    "spread_rows",
]

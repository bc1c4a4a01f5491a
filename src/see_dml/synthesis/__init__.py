"""Embedding synthesis: SEE and the baselines that share its interface, as pure functions.

- :func:`spherical_expansion` (SEE) and its ablation :func:`random_expansion`;
- :func:`max_mahalanobis_centers`, the regular-simplex centres SEE places points on;
- :func:`expansion_fraction`, :func:`expansion_threshold`, :func:`select_top_fraction`,
  :func:`select_threshold`: which samples to expand at a given epoch;
- :func:`embedding_expansion` (EE) and :func:`symmetrical_synthesis`, with their hard pair
  mining :func:`hardest_negative_pairs`.

Callbacks and losses decide when to call these; nothing here holds state.
"""

from see_dml.synthesis.expansion import (
    embedding_expansion,
    hardest_negative_pairs,
    same_class_pairs,
)
from see_dml.synthesis.mmd import max_mahalanobis_centers
from see_dml.synthesis.schedule import (
    expansion_fraction,
    expansion_threshold,
    select_threshold,
    select_top_fraction,
)
from see_dml.synthesis.see import random_expansion, spherical_expansion
from see_dml.synthesis.symmetric import symmetrical_synthesis

__all__ = [
    "embedding_expansion",
    "expansion_fraction",
    "expansion_threshold",
    "hardest_negative_pairs",
    "max_mahalanobis_centers",
    "random_expansion",
    "same_class_pairs",
    "select_threshold",
    "select_top_fraction",
    "spherical_expansion",
    "symmetrical_synthesis",
]

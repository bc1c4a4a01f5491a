"""Embedding synthesis: SEE and the baselines that share its interface, as pure functions.

- :func:`spherical_expansion` (SEE), its ablation :func:`random_expansion` and the batch
  class axes of pair losses :func:`class_axes`;
- :func:`max_mahalanobis_centers`, the regular-simplex centres SEE places points on;
- :func:`expansion_fraction`, :func:`expansion_threshold`, :func:`select_top_fraction`,
  :func:`select_threshold`: which samples to expand at a given epoch;
- :func:`embedding_expansion` (EE) and :func:`symmetrical_synthesis`, with their hard pair
  mining :func:`hardest_negative_pairs`, and Symmetrical Synthesis's own loss
  :func:`symmetric_npair_loss`;
- :func:`proxy_synthesis` (PS), mixup of embeddings and of their proxies.

Callbacks and losses decide when to call these; nothing here holds state.
"""

from see_dml.synthesis.expansion import (
    embedding_expansion,
    hardest_negative_pairs,
    same_class_pairs,
)
from see_dml.synthesis.proxy_synthesis import other_class_partners, proxy_synthesis
from see_dml.synthesis.schedule import (
    expansion_fraction,
    expansion_threshold,
    select_threshold,
    select_top_fraction,
)
from see_dml.synthesis.see import class_axes, random_expansion, spherical_expansion
from see_dml.synthesis.simplex import max_mahalanobis_centers
from see_dml.synthesis.symmetric import symmetric_npair_loss, symmetrical_synthesis

__all__ = [
    "class_axes",
    "embedding_expansion",
    "expansion_fraction",
    "expansion_threshold",
    "hardest_negative_pairs",
    "max_mahalanobis_centers",
    "other_class_partners",
    "proxy_synthesis",
    "random_expansion",
    "same_class_pairs",
    "select_threshold",
    "select_top_fraction",
    "spherical_expansion",
    "symmetric_npair_loss",
    "symmetrical_synthesis",
]

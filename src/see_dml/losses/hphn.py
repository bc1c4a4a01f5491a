"""Embedding Expansion's HPHN triplet loss (Ko & Gu, CVPR 2020), which PML lacks.

"Hardest positive, hardest negative": one triplet per real anchor ``a``,
``relu(d(a, p) − d(a2, n) + m)``, where ``(a, p)`` is the anchor's hardest real positive pair
and ``(a2, n)`` the hardest negative pair over the anchor's whole synthetic group (``a2`` is
``a`` or one of the synthetic points made from ``a``'s pairs; see
:func:`see_dml.synthesis.hardest_negative_pairs`), averaged over anchors.

pytorch-metric-learning's ``TripletMarginLoss`` only takes triplets ``(a, p, n)`` that share
the anchor, so ``a2 ≠ a`` cannot be expressed there; this function takes the distance,
margin and ``smooth_loss`` of that loss so the configured ``loss=triplet`` still decides them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pytorch_metric_learning.distances import BaseDistance

__all__ = ["hphn_triplet_loss"]


def hphn_triplet_loss(
    embeddings: torch.Tensor,
    indices_tuple: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    distance: BaseDistance,
    margin: float,
    smooth: bool = False,
) -> torch.Tensor:
    """Mean over anchors of ``relu(d(a1, p) − d(a2, n) + margin)``.

    Args:
        embeddings: ``(N, d)`` real and synthetic embeddings.
        indices_tuple: aligned ``(a1, p, a2, n)``, one entry per anchor, indices into
            ``embeddings``.
        distance: a pytorch-metric-learning distance (``LpDistance`` on unit vectors is
            EE's Euclidean distance; a similarity such as ``CosineSimilarity`` flips the
            sign, ``s(a2, n) − s(a1, p) + margin``).
        margin: the triplet margin.
        smooth: ``softplus`` instead of ``relu`` (EE's ``soft_margin``, PML's
            ``smooth_loss``).

    Returns:
        0-dim loss; the mean counts every anchor, zero terms included (as EE's mean over
        the batch, where PML's triplet reducer averages the non-zero terms only). ``0``
        (still attached to the graph) when there is no anchor.
    """
    a1, p, a2, n = indices_tuple
    if len(a1) == 0:
        return embeddings.sum() * 0
    mat = distance(embeddings)
    violation = distance.margin(mat[a1, p], mat[a2, n]) + margin
    return (F.softplus(violation) if smooth else F.relu(violation)).mean()

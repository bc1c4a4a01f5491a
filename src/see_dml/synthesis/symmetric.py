"""Symmetrical Synthesis (Gu & Ko, AAAI 2020): reflect each positive about the other.

For a same-class pair of unit embeddings ``(a, p)`` the two synthetic points are ``p``
reflected about the axis of ``a``, ``2(p·a)·a − p``, and ``a`` reflected about the axis of
``p``, ``2(p·a)·p − a``. Both are unit, keep the pair's cosine to their mirror axis and are
hyper-parameter free; they are differentiable functions of the real embeddings. The hard
pair mining is EE's (:func:`see_dml.synthesis.expansion.hardest_negative_pairs`).
"""

from __future__ import annotations

import torch

from see_dml.synthesis.expansion import same_class_pairs

__all__ = ["symmetrical_synthesis"]


def symmetrical_synthesis(
    embeddings: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two reflections per same-class pair ``i < j`` (``a = x_i``, ``p = x_j``).

    Args:
        embeddings: ``(B, d)`` unit embeddings (reflections keep unit norm only for unit
            inputs). labels: ``(B,)``.

    Returns:
        ``syn`` ``(2P, d)``: row ``2q`` is ``2(p·a)a − p`` and row ``2q + 1`` is
        ``2(p·a)p − a`` for pair ``q``; ``syn_labels`` ``(2P,)``; ``pair_index`` ``(2P, 2)``,
        the real indices ``(i, j)`` of each row's pair.
    """
    pairs = same_class_pairs(labels)
    a = embeddings[pairs[:, 0]]
    p = embeddings[pairs[:, 1]]
    cos = (a * p).sum(dim=1, keepdim=True)
    syn = torch.stack([2 * cos * a - p, 2 * cos * p - a], dim=1).reshape(-1, embeddings.shape[1])
    syn_labels = labels[pairs[:, 0]].repeat_interleave(2)
    return syn, syn_labels, pairs.repeat_interleave(2, dim=0)

"""Symmetrical Synthesis (Gu & Ko, AAAI 2020): reflect each positive about the other.

For a same-class pair of unit embeddings ``(a, p)`` the two synthetic points are ``p``
reflected about the axis of ``a``, ``2(p·a)·a − p``, and ``a`` reflected about the axis of
``p``, ``2(p·a)·p − a``. Both are unit, keep the pair's cosine to their mirror axis and are
hyper-parameter free; they are differentiable functions of the real embeddings.

The authors' loss (:func:`symmetric_npair_loss`, ``synthesis.formulation=official``) takes,
for every (pair, other pair) entry, the maximum similarity over the six pairs of
{anchor, positive, sym1, sym2} and feeds that matrix to an N-pair softmax. The older
formulation here (``formulation=hardest_pair``) uses EE's hard-pair mining
(:func:`see_dml.synthesis.expansion.hardest_negative_pairs`) with the configured loss.
"""

from __future__ import annotations

import torch

from see_dml.synthesis.expansion import disjoint_class_pairs, same_class_pairs

__all__ = [
    "symmetric_max_similarity",
    "symmetric_npair_loss",
    "symmetrical_synthesis",
]


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


def symmetric_max_similarity(anchor: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """The official similarity matrix of Symmetrical Synthesis (docs/method.md).

    With ``sym1`` = the positive reflected about the anchor's axis and ``sym2`` = the anchor
    reflected about the positive's axis, entry ``(i, j)`` is the maximum over the six
    unordered pairs ``(X, Y)`` of ``{anchor, positive, sym1, sym2}`` (in that order, ``X``
    before ``Y``) of ``X_i · Y_j``: pair ``i``'s point ``X`` against pair ``j``'s point ``Y``.

    Args:
        anchor, positive: ``(P, d)`` unit embeddings of ``P`` same-class pairs.

    Returns:
        ``(P, P)`` similarities, differentiable.
    """
    cos = (anchor * positive).sum(dim=1, keepdim=True)
    sym1 = 2 * cos * anchor - positive
    sym2 = 2 * cos * positive - anchor
    points = [anchor, positive, sym1, sym2]
    sims = [points[a] @ points[b].T for a in range(4) for b in range(a + 1, 4)]
    return torch.stack(sims).amax(dim=0)


def symmetric_npair_loss(
    embeddings: torch.Tensor, labels: torch.Tensor, scale: float = 1.0
) -> tuple[torch.Tensor, int]:
    """Symmetrical Synthesis + N-pair loss as the authors' code computes it (docs/method.md).

    The batch is split into disjoint same-class pairs (:func:`disjoint_class_pairs`); row
    ``i`` of :func:`symmetric_max_similarity` times ``scale`` are the logits of a softmax
    cross-entropy whose target spreads uniformly over the pairs of pair ``i``'s class
    (itself included); the loss is the mean over pairs. Every other class stays in each
    row's softmax.

    Returns:
        ``(loss, P)``: the 0-dim loss (0, attached to the graph, when the batch has no
        same-class pair) and the number of pairs.
    """
    pairs = disjoint_class_pairs(labels)
    if not len(pairs):
        return embeddings.sum() * 0, 0
    sim = symmetric_max_similarity(embeddings[pairs[:, 0]], embeddings[pairs[:, 1]]) * scale
    pair_labels = labels[pairs[:, 0]]
    target = (pair_labels[:, None] == pair_labels[None, :]).to(sim.dtype)
    target = target / target.sum(dim=1, keepdim=True)
    loss = -(target * torch.log_softmax(sim, dim=1)).sum(dim=1).mean()
    return loss, len(pairs)

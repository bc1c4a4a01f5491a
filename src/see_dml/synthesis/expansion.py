"""Embedding Expansion (EE; Ko & Gu, CVPR 2020) and its hard-negative-pair mining.

EE synthesises, for every same-class pair ``(x_i, x_j)`` of the batch, the ``n`` internal
division points of the chord between them, L2-normalised and labelled like the pair. Unlike
SEE the points are differentiable functions of the real embeddings: gradients reach the
backbone through them, as in the original. The original pairs neighbours of a class
(batch positions 2k and 2k + 1, both orders, which give the same points): ``pairs=neighbours``
(default) does the same; ``pairs=all`` uses every unordered pair ``i < j`` of a class (the
same set for 2 samples per class).

The mining (:func:`hardest_negative_pairs`) follows EE's ``HPHNTripletLoss``: each real
anchor forms a group with the synthetic points of its pairs, and the hardest negative pair
over that whole group (against every real or synthetic point of another class) is the one
negative pair of the anchor; its positive pair is the hardest real positive.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "disjoint_class_pairs",
    "embedding_expansion",
    "hardest_negative_pairs",
    "same_class_pairs",
]

IndicesTuple = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def same_class_pairs(labels: torch.Tensor) -> torch.Tensor:
    """All same-class index pairs ``(i, j)`` with ``i < j``, row-major: ``(B,)`` → ``(P, 2)``."""
    same = labels[:, None] == labels[None, :]
    return torch.nonzero(torch.triu(same, diagonal=1))


def disjoint_class_pairs(labels: torch.Tensor) -> torch.Tensor:
    """Consecutive disjoint same-class pairs: the N-pair batch inside a class-balanced one.

    A class's samples, in batch order, are paired 1st with 2nd, 3rd with 4th, ...; an odd
    last sample is left out. With 2 samples per class this is one (anchor, positive) pair per
    class, the batch Symmetrical Synthesis's official code draws; for more it is EE's
    neighbouring pairs (its code pairs batch positions 2k and 2k + 1 of a class).
    ``(B,)`` → ``(P, 2)``, rows ordered by the pair's first index.
    """
    rows = []
    for value in torch.unique(labels):
        idx = torch.nonzero(labels == value).flatten()
        usable = (len(idx) // 2) * 2
        rows.append(idx[:usable].reshape(-1, 2))
    if not rows:
        return torch.empty(0, 2, dtype=torch.long, device=labels.device)
    pairs = torch.cat(rows)
    return pairs[torch.argsort(pairs[:, 0])]


def embedding_expansion(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    n_points: int = 2,
    normalize: bool = True,
    pairs: str = "neighbours",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """EE's synthetic points: ``n`` internal division points of every same-class chord.

    For pair ``(i, j)`` and ``k = 1..n`` the point is ``(k·x_i + (n+1−k)·x_j)/(n+1)``,
    L2-normalised unless ``normalize=False``. Differentiable (not under ``no_grad``).

    Args:
        embeddings: ``(B, d)`` real embeddings.
        labels: ``(B,)`` their labels.
        n_points: ``n >= 1`` points per pair (EE's default 2).
        normalize: project the points back onto the sphere (EE's ``l2_norm``, default on).
        pairs: ``neighbours`` (EE's code: a class's samples paired 1st-2nd, 3rd-4th, ...,
            :func:`disjoint_class_pairs`; 16 pairs for 32 per class) or ``all`` (every
            unordered same-class pair ``i < j``, C(m, 2) per class).

    Returns:
        ``syn`` ``(P·n, d)`` with pair ``p``'s points at rows ``p·n .. p·n + n − 1`` in order
        ``k = 1..n``; ``syn_labels`` ``(P·n,)``; ``pair_index`` ``(P·n, 2)``, the real indices
        ``(i, j)`` each point came from (its group for :func:`hardest_negative_pairs`).
    """
    if n_points < 1:
        raise ValueError(f"n_points must be >= 1, got {n_points}")
    if pairs not in ("neighbours", "all"):
        raise ValueError(f"synthesis.pairs must be 'neighbours' or 'all', got '{pairs}'")
    pick = disjoint_class_pairs if pairs == "neighbours" else same_class_pairs
    pairs_index = pick(labels)
    d = embeddings.shape[1]
    weight = torch.arange(1, n_points + 1, device=embeddings.device, dtype=embeddings.dtype)
    weight = weight / (n_points + 1)  # k/(n+1): the share of x_i in point k
    xi = embeddings[pairs_index[:, 0]][:, None, :]
    xj = embeddings[pairs_index[:, 1]][:, None, :]
    points = weight[None, :, None] * xi + (1 - weight)[None, :, None] * xj  # (P, n, d)
    syn = points.reshape(-1, d)
    if normalize:
        syn = F.normalize(syn, dim=1)
    syn_labels = labels[pairs_index[:, 0]].repeat_interleave(n_points)
    return syn, syn_labels, pairs_index.repeat_interleave(n_points, dim=0)


@torch.no_grad()
def hardest_negative_pairs(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    syn: torch.Tensor,
    syn_labels: torch.Tensor,
    pair_index: torch.Tensor,
) -> IndicesTuple:
    """EE / Symmetrical-Synthesis mining over real and synthetic points (cosine similarity).

    Each real anchor ``i`` owns a group: itself plus every synthetic row whose
    ``pair_index`` contains ``i``. Its negative pair is the most similar (member, negative)
    pair over the whole group, the negative being any real or synthetic point of another
    class; its positive pair is ``(i, least similar real positive)``.

    Args:
        embeddings: ``(B, d)`` real embeddings; labels ``(B,)``.
        syn: ``(S, d)`` synthetic embeddings; syn_labels ``(S,)``; pair_index ``(S, 2)``,
            as returned by :func:`embedding_expansion` or ``symmetrical_synthesis``.

    Returns:
        A pytorch-metric-learning pair ``indices_tuple`` ``(a1, p, a2, n)`` of equal length
        into ``torch.cat([embeddings, syn])`` / ``torch.cat([labels, syn_labels])``, one
        entry per real anchor that has both a positive and a negative, in anchor order:
        ``a1[k]`` is the anchor, ``(a1[k], p[k])`` its hardest real positive pair and
        ``(a2[k], n[k])`` its hardest negative pair (``a2[k]`` is the anchor or one of its
        synthetic points). Aligned entries give EE's HPHN triplet directly. Ties go to the
        lower index.
    """
    b = embeddings.shape[0]
    all_emb = torch.cat([embeddings, syn]).detach().float()
    all_labels = torch.cat([labels, syn_labels])
    n_all = all_emb.shape[0]
    sim = all_emb @ all_emb.T  # (N, N)
    neg_inf = torch.tensor(float("-inf"), device=sim.device)
    is_neg = all_labels[:, None] != all_labels[None, :]
    best_neg_sim, best_neg = torch.where(is_neg, sim, neg_inf).max(dim=1)  # per row, (N,)

    member = torch.zeros(b, n_all, dtype=torch.bool, device=sim.device)
    member[:, :b] = torch.eye(b, dtype=torch.bool, device=sim.device)
    syn_rows = torch.arange(b, n_all, device=sim.device)
    member[pair_index[:, 0], syn_rows] = True
    member[pair_index[:, 1], syn_rows] = True
    group_sim, a2 = torch.where(member, best_neg_sim[None, :], neg_inf).max(dim=1)  # (B,)

    same = labels[:, None] == labels[None, :]
    is_pos = same & ~torch.eye(b, dtype=torch.bool, device=sim.device)
    pos_inf = torch.tensor(float("inf"), device=sim.device)
    p = torch.where(is_pos, sim[:b, :b], pos_inf).min(dim=1).indices

    valid = is_pos.any(dim=1) & torch.isfinite(group_sim)
    anchors = torch.arange(b, device=sim.device)[valid]
    return anchors, p[valid], a2[valid], best_neg[a2[valid]]

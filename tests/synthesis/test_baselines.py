"""Embedding Expansion, Symmetrical Synthesis and their shared hard-pair mining."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import ContrastiveLoss

from see_dml.synthesis import (
    embedding_expansion,
    hardest_negative_pairs,
    same_class_pairs,
    symmetrical_synthesis,
)
from see_dml.synthesis.symmetric import disjoint_class_pairs, symmetric_max_similarity


def _unit(b: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)


def _angles(degrees: list[float]) -> torch.Tensor:
    rad = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([rad.cos(), rad.sin()], dim=1)


def test_same_class_pairs_are_all_unordered_pairs() -> None:
    labels = torch.tensor([3, 1, 3, 3, 1, 7])
    expected = torch.tensor([[0, 2], [0, 3], [1, 4], [2, 3]])
    assert torch.equal(same_class_pairs(labels), expected)


@pytest.mark.parametrize("n", [1, 2, 5])
def test_ee_points_are_chord_division_points(n: int) -> None:
    x = _unit(6, 8)
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    raw, raw_labels, pair_index = embedding_expansion(x, labels, n, normalize=False,
                                                      pairs="all")
    assert raw.shape == (4 * n, 8)  # pairs (0,1), (2,3), (2,4), (3,4)
    assert torch.equal(pair_index[::n], same_class_pairs(labels))
    assert torch.equal(raw_labels, labels[pair_index[:, 0]])
    xi, xj = x[pair_index[:, 0]], x[pair_index[:, 1]]
    k = torch.arange(1, n + 1, dtype=torch.float64).repeat(4)[:, None]
    torch.testing.assert_close(raw, (k * xi + (n + 1 - k) * xj) / (n + 1))
    # On the chord: raw = xj + t·(xi − xj) with t = k/(n+1) strictly inside (0, 1).
    t = ((raw - xj) * (xi - xj)).sum(1, keepdim=True) / (xi - xj).pow(2).sum(1, keepdim=True)
    torch.testing.assert_close(raw, xj + t * (xi - xj))
    assert ((t > 0) & (t < 1)).all()

    syn, syn_labels, _ = embedding_expansion(x, labels, n, pairs="all")
    assert torch.equal(syn_labels, raw_labels)
    torch.testing.assert_close(syn, F.normalize(raw, dim=1))


def test_ee_is_differentiable() -> None:
    x = _unit(4, 6).requires_grad_(True)
    syn, _, _ = embedding_expansion(x, torch.tensor([0, 0, 1, 1]))
    syn.pow(3).sum().backward()
    assert x.grad is not None and (x.grad.norm(dim=1) > 0).all()


def test_ee_without_pairs_is_empty() -> None:
    syn, syn_labels, pair_index = embedding_expansion(_unit(3, 4), torch.tensor([0, 1, 2]))
    assert syn.shape == (0, 4) and syn_labels.numel() == 0 and pair_index.shape == (0, 2)


def test_symmetric_reflections() -> None:
    x = _unit(6, 16, seed=3)
    labels = torch.tensor([0, 1, 0, 1, 2, 2])
    syn, syn_labels, pair_index = symmetrical_synthesis(x, labels)
    assert syn.shape == (6, 16) and torch.equal(syn_labels, labels[pair_index[:, 0]])
    a, p = x[pair_index[::2, 0]], x[pair_index[::2, 1]]
    cos = (a * p).sum(1)
    p_reflected, a_reflected = syn[0::2], syn[1::2]
    torch.testing.assert_close(syn.norm(dim=1), torch.ones(6, dtype=torch.float64))
    torch.testing.assert_close((p_reflected * a).sum(1), cos)
    torch.testing.assert_close((a_reflected * p).sum(1), cos)
    # Reflecting the reflection about the same axis gives the original back.
    again, _, _ = symmetrical_synthesis(torch.cat([a[:1], p_reflected[:1]]), torch.tensor([0, 0]))
    torch.testing.assert_close(again[0], p[0])


def test_symmetric_is_differentiable() -> None:
    x = _unit(4, 5).requires_grad_(True)
    syn, _, _ = symmetrical_synthesis(x, torch.tensor([0, 0, 1, 1]))
    syn[:, 0].sum().backward()
    assert x.grad is not None and (x.grad.norm(dim=1) > 0).all()


# Real points on the unit circle: class A at 0°, 20°; class B at 90°, 100°; class C at 200°
# (no positive, so it is never an anchor).
_REAL = _angles([0, 20, 90, 100, 200])
_LABELS = torch.tensor([0, 0, 1, 1, 2])


def test_mining_embedding_expansion_by_hand() -> None:
    # n = 1: rows 5 (A at 10°) and 6 (B at 95°).
    syn, syn_labels, pair_index = embedding_expansion(_REAL, _LABELS, 1)
    a1, p, a2, n = hardest_negative_pairs(_REAL, _LABELS, syn, syn_labels, pair_index)
    assert torch.equal(a1, torch.tensor([0, 1, 2, 3]))
    assert torch.equal(p, torch.tensor([1, 0, 3, 2]))
    # 0°: its group's 10° is closest to 90°; 20°: itself vs 90° (70°);
    # 90°: itself vs 20°; 100°: its group's 95° vs 20° (75° < 80°).
    assert torch.equal(a2, torch.tensor([5, 1, 2, 6]))
    assert torch.equal(n, torch.tensor([2, 2, 1, 1]))


def test_mining_symmetric_by_hand() -> None:
    # Rows 5..8: A at 340°, 40°; B at 80°, 110°. The closest cross-class pair is 40° vs 80°.
    syn, syn_labels, pair_index = symmetrical_synthesis(_REAL, _LABELS)
    torch.testing.assert_close(syn, _angles([340, 40, 80, 110]))
    a1, p, a2, n = hardest_negative_pairs(_REAL, _LABELS, syn, syn_labels, pair_index)
    assert torch.equal(a1, torch.tensor([0, 1, 2, 3]))
    assert torch.equal(p, torch.tensor([1, 0, 3, 2]))
    assert torch.equal(a2, torch.tensor([6, 6, 7, 7]))
    assert torch.equal(n, torch.tensor([7, 7, 6, 6]))


def test_mined_pairs_feed_a_pml_loss() -> None:
    x = _unit(8, 16, seed=9).float().requires_grad_(True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    syn, syn_labels, pair_index = embedding_expansion(x, labels, 2)
    indices = hardest_negative_pairs(x, labels, syn, syn_labels, pair_index)
    all_labels = torch.cat([labels, syn_labels])
    a1, p, a2, n = indices
    assert (all_labels[a1] == all_labels[p]).all() and (all_labels[a2] != all_labels[n]).all()
    loss = ContrastiveLoss(pos_margin=0.0, neg_margin=1.0)(
        torch.cat([x, syn]), all_labels, indices_tuple=indices
    )
    loss.backward()
    assert torch.isfinite(loss) and x.grad is not None and x.grad.abs().sum() > 0


def test_disjoint_class_pairs_are_consecutive_within_a_class() -> None:
    labels = torch.tensor([3, 1, 3, 1, 3, 2, 3, 1])
    assert disjoint_class_pairs(labels).tolist() == [[0, 2], [1, 3], [4, 6]]
    assert disjoint_class_pairs(torch.tensor([0, 1, 2])).shape == (0, 2)


def test_symmetric_max_similarity_diagonal_and_an_entry() -> None:
    """Entry (i, j) is the max over the six ordered point pairs (X_i, Y_j); on the diagonal
    it is max(a·p, 2(a·p)² − 1, 4(a·p)³ − 3(a·p)) for unit a, p (written out)."""
    a, p = _unit(4, 6, seed=1), _unit(4, 6, seed=2)
    sim = symmetric_max_similarity(a, p)
    c = (a * p).sum(dim=1)
    s1, s2 = 2 * c[:, None] * a - p, 2 * c[:, None] * p - a
    # a·s1 = a·s2 = p·s1 = p·s2 ... on the diagonal: a·s1 = c, a·s2 = 2c² - 1,
    # p·s1 = 2c² - 1, p·s2 = c, s1·s2 = 4c³ - 3c
    want_diag = torch.stack([c, 2 * c**2 - 1, 4 * c**3 - 3 * c]).amax(dim=0)
    torch.testing.assert_close(sim.diagonal(), want_diag)
    i, j = 0, 3
    pts = [a, p, s1, s2]
    want = max(float(pts[u][i] @ pts[v][j]) for u in range(4) for v in range(u + 1, 4))
    assert abs(sim[i, j].item() - want) < 1e-12


def test_ee_pairs_neighbours_as_its_code() -> None:
    """EE's code pairs a class's samples 1st-2nd, 3rd-4th, ... (16 pairs for 32 a class),
    not all C(m, 2) pairs: the default; ``pairs=all`` keeps every pair."""
    x = _unit(8, 5)
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    syn, syn_labels, pair_index = embedding_expansion(x, labels, 2)
    assert pair_index[::2].tolist() == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert syn.shape == (4 * 2, 5)
    assert embedding_expansion(x, labels, 2, pairs="all")[0].shape == (2 * 6 * 2, 5)
    with pytest.raises(ValueError, match="synthesis.pairs"):
        embedding_expansion(x, labels, 2, pairs="ring")

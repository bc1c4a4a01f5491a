"""The synthesis callbacks wired into training: loss integration, schedule, logging, errors."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from see_dml.callbacks.synthesis import (
    EmbeddingExpansionCallback,
    ProxySynthesisCallback,
    SEECallback,
    SymmetricalSynthesisCallback,
    build_synthesis_callback,
    split_mixed_tuples,
)
from see_dml.module import DMLModule
from see_dml.runtime.config import CONFIG_DIR
from see_dml.runtime.errors import ConfigError
from see_dml.synthesis import class_axes, other_class_partners
from see_dml.train import train
from see_dml.training.config_checks import validate_config

LOSSES = sorted(p.stem for p in (CONFIG_DIR / "loss").glob("*.yaml"))
PROXY_LOSSES = ["arcface", "norm_softmax", "proxy_anchor"]


def _module_and_batch(make_cfg, loss: str = "proxy_anchor", embed_dim: int = 16):
    cfg = make_cfg(f"loss={loss}", f"model.embed_dim={embed_dim}")
    module = DMLModule.from_config(cfg, num_classes=10)
    torch.manual_seed(0)
    images = torch.randn(24, 1, 28, 56)
    labels = torch.arange(6).repeat_interleave(4)
    return module, images, labels


def _grads(module, images, labels, hook=None):
    module.zero_grad()
    emb = module(images)
    loss = module.criterion(emb, labels)
    if hook is not None:
        out = hook(module, emb, labels)
        loss = loss + out["loss/synthetic"]
    loss.backward()
    backbone = [p.grad.clone() for p in module.backbone.parameters() if p.grad is not None]
    head = [p.grad.clone() for p in module.head.parameters()]
    proxies = module.criterion.loss.proxies.grad.clone()
    return backbone, head, proxies


def _clustered(batch: int, m: int, dim: int, spread: float = 0.3, seed: int = 0):
    """Unit embeddings of ``batch / m`` classes, ``m`` each, around random class centres
    (same-class cosine ~0.7 at ``spread=0.3``: a model part-way through training)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(batch // m).repeat_interleave(m)
    centres = F.normalize(torch.randn(batch // m, dim, generator=g), dim=1)
    noise = torch.randn(batch, dim, generator=g) * 4 * spread / dim**0.5
    return F.normalize(centres[labels] + noise, dim=1), labels


# -- SEE with proxy losses (the authors' formulation) ----------------------------------------

def test_see_term_reaches_only_the_proxies_with_proxy_anchor(make_cfg):
    """Authors' mode: the detached synthetic term changes proxy gradients only."""
    module, images, labels = _module_and_batch(make_cfg)
    module.eval()  # BatchNorm in eval: two passes see identical features
    see = SEECallback(n_points=4, p_min=0.5, p_max=0.5, scheduled=False, weight=0.2)
    b0, h0, p0 = _grads(module, images, labels)
    b1, h1, p1 = _grads(module, images, labels, see)
    for g0, g1 in zip(b0 + h0, b1 + h1):
        torch.testing.assert_close(g0, g1, rtol=0, atol=0)
    assert not torch.allclose(p0, p1), "the synthetic term must update the proxies"


def test_see_selects_top_fraction_and_counts(make_cfg):
    module, images, labels = _module_and_batch(make_cfg)
    see = SEECallback(n_points=4, p_min=0.25, p_max=0.25, scheduled=False)
    out = see(module, module(images), labels)
    assert out["see/expanded"].item() == 6  # round(24 * 0.25)
    assert out["see/synthetic"].item() == 24
    assert out["loss/synthetic"].item() > 0


def test_see_zero_fraction_adds_nothing(make_cfg):
    module, images, labels = _module_and_batch(make_cfg)
    see = SEECallback(p_min=0.0, p_max=0.4)  # epoch 0 of the ramp: p = p_min = 0
    out = see(module, module(images), labels)
    assert out["see/expanded"].item() == 0
    assert out["loss/synthetic"].item() == 0.0


def test_see_schedule_follows_epochs():
    see = SEECallback(p_min=0.0, p_max=0.4)
    see.max_epochs = 100
    levels = []
    for epoch in (0, 50, 99):
        see.epoch = epoch
        levels.append(see.current_level())
    assert levels[0] == 0.0
    assert levels[1] == pytest.approx(0.2)
    assert levels[2] == pytest.approx(0.4, abs=1e-3)
    see.scheduled = False
    assert see.current_level() == 0.4


def _fit_steps(module, callbacks, steps: int, batches_per_epoch: int, **trainer_kwargs):
    """A real Lightning fit over random images, ``batches_per_epoch`` batches of 24."""
    torch.manual_seed(0)
    images = torch.randn(24 * batches_per_epoch, 1, 28, 56)
    labels = torch.arange(6).repeat_interleave(4).repeat(batches_per_epoch)
    loader = DataLoader(TensorDataset(images, labels), batch_size=24)
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0,
                        callbacks=callbacks, **trainer_kwargs)
    trainer.fit(module, train_dataloaders=loader)
    return trainer


def test_see_schedule_follows_steps_when_training_by_steps(make_cfg):
    """``max_epochs=-1`` + ``max_steps``: the ramp follows the steps (it collapsed to p_max
    after the first epoch before, as if the run had one epoch)."""
    module, _, _ = _module_and_batch(make_cfg)
    levels = []

    class RecordingSEE(SEECallback):
        def __call__(self, module, embeddings, labels):
            out = super().__call__(module, embeddings, labels)
            levels.append(out["see/level"].item())
            return out

    see = RecordingSEE(n_points=2, p_min=0.0, p_max=0.4)
    _fit_steps(module, [see], steps=6, batches_per_epoch=3, max_epochs=-1)
    expected = [0.4 - 0.2 * (math.cos(math.pi * s / 6) + 1) for s in range(6)]
    assert levels == pytest.approx(expected, abs=1e-6)


# -- SEE with pair losses ---------------------------------------------------------------------

def test_class_axes_leave_the_sample_out_and_flag_singletons():
    emb = F.normalize(torch.randn(6, 5, dtype=torch.float64), dim=1)
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    axes, valid = class_axes(emb, labels)
    torch.testing.assert_close(axes[0], emb[1].float(), rtol=0, atol=1e-6)  # m = 2: the other
    torch.testing.assert_close(axes[2], F.normalize(emb[3] + emb[4], dim=0).float(),
                               rtol=0, atol=1e-6)
    assert valid.tolist() == [True, True, True, True, True, False]
    mean_axes, _ = class_axes(emb, labels, leave_one_out=False)
    torch.testing.assert_close(mean_axes[0], F.normalize(emb[:2].sum(0), dim=0).float(),
                               rtol=0, atol=1e-6)


def test_see_never_expands_a_class_alone_in_the_batch(make_cfg):
    """A singleton's batch axis is itself: expanding it made n copies of it."""
    module, _, _ = _module_and_batch(make_cfg, "multi_similarity")
    emb, _ = _clustered(8, 2, 16)
    labels = torch.tensor([0, 0, 1, 1, 2, 3, 3, 4])  # classes 2 and 4 have one sample
    see = SEECallback(n_points=2, mode="threshold", p_min=-1.0, p_max=-1.0, scheduled=False,
                      threshold_floor=-1.0)  # every sample passes the threshold
    out = see(module, emb, labels)
    assert out["see/expanded"].item() == 6
    top = SEECallback(n_points=2, p_min=1.0, p_max=1.0, scheduled=False)  # top fraction 1
    assert top(module, emb, labels)["see/expanded"].item() == 6


@pytest.mark.parametrize("loss", ["multi_similarity", "triplet"])
@pytest.mark.parametrize("m", [2, 4])
def test_pair_loss_see_is_mined_and_carries_gradient(make_cfg, loss, m):
    """On the default batch (64 images, 64-d), SEE points are mined beside the real ones:
    the mined tuples mixing real and synthetic points include synthetic *positives*, the
    term is non-zero and reaches the real embeddings. With the class mean as axis and m = 2
    every synthetic positive is easier than the real one, and the miner drops them all."""
    cfg = make_cfg(f"loss={loss}", f"data.m_per_class={m}", fast=False)
    module = DMLModule.from_config(cfg, num_classes=100)
    emb, labels = _clustered(cfg.data.batch_size, m, cfg.model.embed_dim)
    emb.requires_grad_(True)
    see = build_synthesis_callback(make_cfg(f"loss={loss}", "see.enabled=true",
                                            "see.scheduled=false", fast=False))
    assert see.pair_axes == "leave_one_out" and see.pair_integration == "mined"
    out = see(module, emb, labels)
    share = out["see/mined_share"].item()
    assert 0.0 < share <= 1.0
    assert out["loss/synthetic"].item() > 0
    out["loss/synthetic"].backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0

    def synthetic_positives(axes: str) -> int:
        b = len(labels)
        with torch.no_grad():
            cb = SEECallback(p_min=0.4, p_max=0.4, scheduled=False, pair_axes=axes)
            ax, valid = class_axes(emb, labels, axes == "leave_one_out")
            chosen = cb.select(emb, ax, valid)
            from see_dml.synthesis import spherical_expansion

            syn, syn_labels = spherical_expansion(emb[chosen], labels[chosen], ax[chosen], 8,
                                                  torch.Generator().manual_seed(0))
            tuples = module.criterion.mine(torch.cat([emb, syn]), torch.cat([labels, syn_labels]))
        if len(tuples) == 4:
            a1, p = tuples[:2]
            return int(((a1 < b) & (p >= b)).sum())
        a, p, _ = tuples
        return int(((a < b) & (p >= b)).sum())

    assert synthetic_positives("leave_one_out") > 0
    if m == 2:
        assert synthetic_positives("class_mean") == 0


def test_split_mixed_tuples_counts_by_hand():
    # pairs over 3 real rows (0..2) and 2 synthetic rows (3, 4)
    pairs = (torch.tensor([0, 0, 3]), torch.tensor([1, 3, 4]),
             torch.tensor([0, 4, 1]), torch.tensor([4, 3, 2]))
    kept, mixed, with_real = split_mixed_tuples(pairs, 3)
    assert [t.tolist() for t in kept] == [[0], [3], [0], [4]]
    assert (mixed, with_real) == (2, 4)  # (3, 4) and (4, 3) are synthetic-only
    triplets = (torch.tensor([0, 3, 0]), torch.tensor([1, 4, 3]), torch.tensor([2, 3, 4]))
    kept, mixed, with_real = split_mixed_tuples(triplets, 3)
    assert [t.tolist() for t in kept] == [[0], [3], [4]] and (mixed, with_real) == (1, 2)


def test_see_joint_integration_runs(make_cfg):
    module, images, labels = _module_and_batch(make_cfg, "contrastive")
    see = SEECallback(n_points=4, p_min=0.5, p_max=0.5, scheduled=False,
                      pair_integration="joint")
    out = see(module, module(images), labels)
    assert out["see/synthetic"].item() == 48 and out["loss/synthetic"].item() > 0


def test_generator_state_round_trips(make_cfg):
    module, images, labels = _module_and_batch(make_cfg)
    emb = module(images).detach()
    a = SEECallback(n_points=4, p_min=0.5, p_max=0.5, scheduled=False, seed=3)
    a(module, emb, labels)
    state = a.state_dict()
    b = SEECallback(n_points=4, p_min=0.5, p_max=0.5, scheduled=False, seed=3)
    b.load_state_dict(state)
    torch.testing.assert_close(a(module, emb, labels)["loss/synthetic"],
                               b(module, emb, labels)["loss/synthetic"])


# -- Embedding Expansion and Symmetrical Synthesis --------------------------------------------

def _ee_by_hand(x: torch.Tensor, labels: torch.Tensor, n: int, margin: float) -> torch.Tensor:
    """EE's HPHN triplet written out (float64): points on every same-class chord, each
    anchor's hardest real positive and hardest negative over its whole group."""
    b = len(labels)
    points, owners, point_labels = [], [], []
    for i in range(b):
        for j in range(i + 1, b):
            if labels[i] == labels[j]:
                for k in range(1, n + 1):
                    points.append(F.normalize((k * x[i] + (n + 1 - k) * x[j]) / (n + 1), dim=0))
                    owners.append({i, j})
                    point_labels.append(labels[i])
    all_x = torch.cat([x, torch.stack(points)])
    all_labels = torch.cat([labels, torch.stack(point_labels)])
    terms = []
    for a in range(b):
        d_ap = max((x[a] - x[p]).norm() for p in range(b) if p != a and labels[p] == labels[a])
        group = [a] + [b + q for q, owner in enumerate(owners) if a in owner]
        d_an = min((all_x[g] - all_x[q]).norm() for g in group for q in range(len(all_x))
                   if all_labels[q] != labels[a])
        terms.append(torch.relu(d_ap - d_an + margin))
    return torch.stack(terms).mean()


def test_ee_loss_is_the_hphn_triplet_by_hand(make_cfg):
    """The EE loss is one HPHN triplet per anchor, ``a2`` possibly synthetic, and it is the
    loss (``loss/metric``), not a term added to the plain mined triplet loss."""
    cfg = make_cfg("loss=triplet", "synthesis=embedding_expansion")
    module = DMLModule.from_config(cfg, num_classes=10)
    module.criterion.double()
    # 3 classes x 2 on a 4-sphere; angles picked so anchors' groups matter
    # the model's output is L2-normalised: compare gradients with respect to what it
    # normalises (the loss normalises again; its projection then changes nothing)
    raw = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    raw.requires_grad_(True)
    x = F.normalize(raw, dim=1)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    from see_dml.synthesis import embedding_expansion, hardest_negative_pairs

    _, _, a2, _ = hardest_negative_pairs(x, labels, *embedding_expansion(x, labels, 2))
    assert (a2 >= 6).sum() >= 3  # several anchors' negative pairs start at a synthetic point
    ee = build_synthesis_callback(cfg)
    assert isinstance(ee, EmbeddingExpansionCallback) and not ee.real_term
    # EE's own values (its main.py): margin 1e-5, 2 points per pair, neighbouring pairs
    assert (ee.margin, ee.n_points, ee.pairs) == (1e-5, 2, "neighbours")
    assert module.criterion.loss.margin != ee.margin  # not the configured triplet's margin
    out = ee(module, x, labels)
    assert "loss/synthetic" not in out and "loss/real" not in out
    expected = _ee_by_hand(x, labels, n=2, margin=1e-5)
    assert abs(out["loss/metric"].item() - expected.item()) < 1e-12, (out, expected)
    got_grad, = torch.autograd.grad(out["loss/metric"], raw, retain_graph=True)
    want_grad, = torch.autograd.grad(expected, raw, retain_graph=True)
    torch.testing.assert_close(got_grad, want_grad, rtol=0, atol=1e-12)
    assert out["embedding_expansion/synthetic"].item() == 3 * 2
    # the extra real-only term is an option, the plain loss of the real embeddings
    with_real = EmbeddingExpansionCallback(real_term=True, margin=1e-5)(module, x, labels)
    torch.testing.assert_close(with_real["loss/metric"], out["loss/metric"])
    torch.testing.assert_close(with_real["loss/real"], module.criterion(x, labels))


def test_ee_by_hand_with_four_per_class_pairs_neighbours_only(make_cfg):
    """With 4 images a class EE pairs (1st, 2nd) and (3rd, 4th) only (its code), and an
    anchor's group is its own pair's points; ``pairs=all`` gives the C(4, 2) version."""
    cfg = make_cfg("loss=triplet", "synthesis=embedding_expansion")
    module = DMLModule.from_config(cfg, num_classes=10)
    module.criterion.double()
    x = F.normalize(torch.randn(8, 4, dtype=torch.float64,
                                generator=torch.Generator().manual_seed(8)), dim=1)
    labels = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    ee = build_synthesis_callback(cfg)
    got = ee(module, x, labels)["loss/metric"]
    # neighbours within a class in batch order: class 0 = rows 0, 2, 4, 6 -> (0, 2), (4, 6)
    order = torch.tensor([0, 2, 4, 6, 1, 3, 5, 7])
    inverse = torch.argsort(order)
    # the by-hand loss over the pairs (2q, 2q + 1) of the class-sorted batch
    xs, ys = x[order], labels[order]
    points, owner, point_labels = [], [], []
    for q in range(4):
        i, j = 2 * q, 2 * q + 1
        for k in (1, 2):
            points.append(F.normalize((k * xs[i] + (3 - k) * xs[j]) / 3, dim=0))
            owner.append({i, j})
            point_labels.append(ys[i])
    all_x = torch.cat([xs, torch.stack(points)])
    all_y = torch.cat([ys, torch.stack(point_labels)])
    terms = []
    for a in range(8):
        d_ap = max((xs[a] - xs[p]).norm() for p in range(8) if p != a and ys[p] == ys[a])
        group = [a] + [8 + q for q, o in enumerate(owner) if a in o]
        d_an = min((all_x[g] - all_x[q]).norm() for g in group for q in range(len(all_x))
                   if all_y[q] != ys[a])
        terms.append(torch.relu(d_ap - d_an + 1e-5))
    expected = torch.stack(terms)[inverse].mean()
    assert abs(got.item() - expected.item()) < 1e-12, (got, expected)
    every = EmbeddingExpansionCallback(pairs="all", margin=1e-5)(module, x, labels)
    assert every["embedding_expansion/synthetic"].item() == 2 * 6 * 2
    assert abs(every["loss/metric"].item() - _ee_by_hand(x, labels, 2, 1e-5).item()) < 1e-12


def test_ee_with_a_pair_loss_uses_the_mined_pairs(make_cfg):
    module, images, labels = _module_and_batch(make_cfg, "multi_similarity")
    emb = module(images)
    out = EmbeddingExpansionCallback()(module, emb, labels)
    from see_dml.synthesis import embedding_expansion, hardest_negative_pairs

    syn, syn_labels, pairs = embedding_expansion(emb, labels, 2)
    indices = hardest_negative_pairs(emb, labels, syn, syn_labels, pairs)
    expected = module.criterion.loss(torch.cat([emb, syn]), torch.cat([labels, syn_labels]),
                                     indices)
    torch.testing.assert_close(out["loss/metric"], expected)


@pytest.mark.parametrize("cls, kwargs, pairs", [
    (EmbeddingExpansionCallback, {}, 6 * 2),  # neighbouring pairs: 2 per class of 4
    (EmbeddingExpansionCallback, {"pairs": "all"}, 6 * (4 * 3 // 2)),
    (SymmetricalSynthesisCallback, {"formulation": "hardest_pair"}, 6 * (4 * 3 // 2)),
    (SymmetricalSynthesisCallback, {}, 6 * 2),  # official: 2 disjoint pairs per class of 4
])
def test_pair_synthesis_is_differentiable(make_cfg, cls, kwargs, pairs):
    module, images, labels = _module_and_batch(make_cfg, "triplet")
    cb = cls(**kwargs)
    out = cb(module, module(images), labels)
    assert out[f"{cb.name}/synthetic"].item() == pairs * 2
    assert not any(k.startswith("see/") for k in out)
    out["loss/metric"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.head.parameters())


def _symm_npair_by_hand(x: torch.Tensor, labels: torch.Tensor, scale: float) -> torch.Tensor:
    """Symmetrical Synthesis + N-pair as the authors' code computes it, in float64 loops:
    consecutive same-class pairs, both reflections, the max over the six point pairs."""
    pairs = []
    for c in sorted(set(labels.tolist())):
        idx = [i for i in range(len(labels)) if labels[i] == c]
        pairs += [(idx[k], idx[k + 1]) for k in range(0, len(idx) - 1, 2)]
    pairs.sort()
    pts = []
    for i, j in pairs:
        a, p = x[i], x[j]
        pts.append([a, p, 2 * (a @ p) * a - p, 2 * (a @ p) * p - a])
    combos = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    terms = []
    for r, (i, _) in enumerate(pairs):
        logits = torch.stack([max(pts[r][u] @ pts[c][v] for u, v in combos)
                              for c in range(len(pairs))]) * scale
        same = [c for c, (k, _) in enumerate(pairs) if labels[k] == labels[i]]
        log_p = logits - torch.logsumexp(logits, dim=0)
        terms.append(-sum(log_p[c] for c in same) / len(same))
    return torch.stack(terms).mean()


@pytest.mark.parametrize("loss", ["multi_similarity", "proxy_anchor"])
def test_symmetric_official_is_the_authors_npair_by_hand(make_cfg, loss):
    """``formulation=official`` (the default) is the authors' loss whatever ``loss=`` says:
    the N-pair softmax over the max similarity of {anchor, positive, sym1, sym2}, checked
    against a float64 hand computation; ``hardest_pair`` keeps the old formulation."""
    cfg = make_cfg(f"loss={loss}", "synthesis=symmetric")
    module = DMLModule.from_config(cfg, num_classes=10)
    module.criterion.double()
    d = int(cfg.model.embed_dim)
    raw = torch.randn(7, d, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    raw.requires_grad_(True)
    x = F.normalize(raw, dim=1)
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 2])  # class 0: 3 samples, one left out
    cb = build_synthesis_callback(cfg)
    assert cb.formulation == "official" and cb.scale == 1.0
    out = cb(module, x, labels)
    for scale in (1.0, 4.0):
        got = SymmetricalSynthesisCallback(scale=scale)(module, x, labels)["loss/metric"]
        expected = _symm_npair_by_hand(x, labels, scale)
        assert abs(got.item() - expected.item()) < 1e-12, (got, expected)
        got_grad, = torch.autograd.grad(got, raw, retain_graph=True)
        want_grad, = torch.autograd.grad(expected, raw, retain_graph=True)
        torch.testing.assert_close(got_grad, want_grad, rtol=0, atol=1e-12)
    assert out["symmetric/synthetic"].item() == 2 * 3
    old = SymmetricalSynthesisCallback(formulation="hardest_pair")(module, x, labels)
    assert abs(old["loss/metric"].item() - out["loss/metric"].item()) > 1e-6
    with pytest.raises(ValueError, match="synthesis.formulation"):
        SymmetricalSynthesisCallback(formulation="max")


# -- Proxy Synthesis -------------------------------------------------------------------------

def _proxy_anchor_by_hand(x, y, proxies, alpha, delta):
    """Proxy-Anchor (Kim et al. 2020, eq. 4) over every proxy given, float64."""
    x, proxies = F.normalize(x, dim=1), F.normalize(proxies, dim=1)
    pos, neg = [], []
    for c in range(len(proxies)):
        s = x @ proxies[c]
        if (y == c).any():
            pos.append(torch.log1p(torch.exp(-alpha * (s[y == c] - delta)).sum()))
        neg.append(torch.log1p(torch.exp(alpha * (s[y != c] + delta)).sum()))
    return torch.stack(pos).mean() + torch.stack(neg).mean()


@pytest.mark.parametrize("loss", ["proxy_anchor", "norm_softmax"])
def test_proxy_synthesis_by_hand(make_cfg, loss, monkeypatch):
    """PS: mix embeddings and their proxies with λ, each mixture a new class with the mixed
    proxy as its proxy; the loss over the C + S classes is the loss."""
    cfg = make_cfg(f"loss={loss}", "synthesis=proxy_synthesis")
    module = DMLModule.from_config(cfg, num_classes=3)
    module.criterion.double()
    ps = build_synthesis_callback(cfg)
    assert isinstance(ps, ProxySynthesisCallback) and (ps.ratio, ps.alpha) == (1.0, 0.4)
    lam = 0.3
    monkeypatch.setattr(ps, "draw_lambda", lambda device: lam)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 16, dtype=torch.float64, generator=g)
    labels = torch.tensor([0, 0, 1, 2])
    out = ps(module, x, labels)

    partner = other_class_partners(labels)
    assert partner.tolist() == [2, 3, 0, 1]  # by hand: sorted order rolled by 2
    xn = F.normalize(x, dim=1)
    w = module.criterion.class_directions().detach()
    syn = F.normalize(lam * xn + (1 - lam) * xn[partner], dim=1)
    syn_proxies = F.normalize(lam * w[labels] + (1 - lam) * w[labels[partner]], dim=1)
    all_x = torch.cat([x, syn])
    all_y = torch.cat([labels, torch.arange(3, 7)])
    all_w = torch.cat([w, syn_proxies])
    if loss == "proxy_anchor":
        expected = _proxy_anchor_by_hand(all_x, all_y, all_w, alpha=32.0, delta=0.1)
    else:
        logits = F.normalize(all_x, dim=1) @ all_w.t() / module.criterion.loss.temperature
        expected = F.cross_entropy(logits, all_y)
    assert abs(out["loss/metric"].item() - expected.item()) < 1e-10
    assert out["proxy_synthesis/synthetic"].item() == 4
    assert out["proxy_synthesis/lambda"].item() == pytest.approx(lam)
    # gradients reach the real proxies through the mixed ones
    out["loss/metric"].backward()
    grads = [p.grad for p in module.criterion.parameters()]
    assert grads and all(gr is not None and gr.abs().sum() > 0 for gr in grads)


def test_proxy_synthesis_needs_proxies(make_cfg):
    cfg = make_cfg("loss=multi_similarity", "synthesis=proxy_synthesis")
    module = DMLModule.from_config(cfg, num_classes=10)
    with pytest.raises(ValueError, match="loss=multi_similarity has none"):
        build_synthesis_callback(cfg).setup(None, module, "fit")


def test_proxy_synthesis_lambda_follows_the_seeded_generator():
    a, b = ProxySynthesisCallback(seed=1), ProxySynthesisCallback(seed=1)
    draws = [a.draw_lambda(torch.device("cpu")) for _ in range(200)]
    assert draws == [b.draw_lambda(torch.device("cpu")) for _ in range(200)]
    assert all(0.0 < v < 1.0 for v in draws)
    # Beta(0.4, 0.4) is U-shaped: most mass near 0 and 1, mean 1/2
    assert abs(sum(draws) / 200 - 0.5) < 0.08
    assert sum(v < 0.1 or v > 0.9 for v in draws) > 200 * 0.35


# -- precision --------------------------------------------------------------------------------

@pytest.mark.parametrize("loss", LOSSES)
def test_losses_and_synthesis_stay_float32_under_bf16_autocast(make_cfg, loss):
    """Under CPU bf16 autocast, pytorch-metric-learning cast the proxies Parameter in place to
    bf16; every loss (and SEE's term) must compute in float32 and keep float32 parameters."""
    module, _, _ = _module_and_batch(make_cfg, loss)
    dtypes = []
    module.criterion.register_forward_hook(lambda mod, args, out: dtypes.append(out.dtype))
    see = SEECallback(n_points=2, p_min=0.5, p_max=0.5, scheduled=False)
    _fit_steps(module, [see], steps=2, batches_per_epoch=2, precision="bf16-mixed")
    assert dtypes and set(dtypes) == {torch.float32}
    for p in module.criterion.parameters():
        assert p.dtype == torch.float32


# -- config, builds and runs ------------------------------------------------------------------

@pytest.mark.parametrize("synthesis, cls", [
    ("embedding_expansion", EmbeddingExpansionCallback),
    ("symmetric", SymmetricalSynthesisCallback),
    ("proxy_synthesis", ProxySynthesisCallback),
])
def test_every_synthesis_node_is_instantiated_from_its_target(make_cfg, synthesis, cls):
    cfg = make_cfg(f"synthesis={synthesis}", "seed=7")
    assert cfg.synthesis._target_.endswith(cls.__name__)
    cb = build_synthesis_callback(cfg)
    assert type(cb) is cls and cb.name == synthesis and cb.seed == 7


@pytest.mark.parametrize("switch", ["see.enabled=true", "synthesis=see"])
def test_see_node_is_instantiated_from_its_target(make_cfg, switch):
    """``synthesis=see`` is the same choice as ``see.enabled=true`` (one sweep key for all)."""
    cfg = make_cfg(switch, "see.n_points=3", "see.directions=random")
    cb = build_synthesis_callback(cfg)
    assert type(cb) is SEECallback and cb.n_points == 3 and cb.directions == "random"
    validate_config(cfg)


def test_synthesis_none_is_the_plain_loss(make_cfg):
    cfg = make_cfg("synthesis=none")
    assert cfg.get("synthesis") is None and not cfg.see.enabled
    assert build_synthesis_callback(cfg) is None


def test_every_synthesis_option_builds(make_cfg):
    """Adding a synthesiser is one YAML file with a ``_target_``: each one builds."""
    for option in sorted(p.stem for p in (CONFIG_DIR / "synthesis").glob("*.yaml")):
        cb = build_synthesis_callback(make_cfg(f"synthesis={option}"))
        assert (cb is None) == (option == "none"), option


# one proxy and one pair loss end to end by default; the others in the slow suite
@pytest.mark.parametrize("loss", [
    loss if loss in ("proxy_anchor", "multi_similarity") else pytest.param(
        loss, marks=pytest.mark.slow) for loss in LOSSES])
def test_fast_run_with_see_every_loss(make_cfg, loss):
    cfg = make_cfg(f"loss={loss}", "see.enabled=true", "see.p_min=0.3", "trainer.max_epochs=1")
    assert isinstance(build_synthesis_callback(cfg), SEECallback)
    metrics = train(cfg)
    assert 0.0 <= metrics["test/map@r"] <= 1.0
    with open(Path(cfg.paths.run_dir) / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    synthetic = [float(r["train/see/synthetic_epoch"]) for r in rows
                 if r.get("train/see/synthetic_epoch")]
    assert synthetic and synthetic[0] > 0  # logged, and points were made
    if loss not in PROXY_LOSSES:
        shares = [float(r["train/see/mined_share_epoch"]) for r in rows
                  if r.get("train/see/mined_share_epoch")]
        assert shares and shares[0] > 0


@pytest.mark.parametrize("synthesis, loss", [
    ("embedding_expansion", "triplet"),
    ("symmetric", "multi_similarity"),
    pytest.param("embedding_expansion", "proxy_anchor", marks=pytest.mark.slow),
    ("proxy_synthesis", "proxy_anchor"),
    pytest.param("proxy_synthesis", "norm_softmax", marks=pytest.mark.slow)])
def test_fast_run_with_baselines(make_cfg, synthesis, loss):
    cfg = make_cfg(f"synthesis={synthesis}", f"loss={loss}")
    assert 0.0 <= train(cfg)["test/recall@1"] <= 1.0
    with open(Path(cfg.paths.run_dir) / "csv" / "metrics.csv") as f:
        columns = next(csv.reader(f))
    assert f"train/{synthesis}/synthetic_epoch" in columns
    assert not any(c.startswith("train/see/") for c in columns)


def test_see_ablation_switches_run(make_cfg):
    cfg = make_cfg("see.enabled=true", "see.mode=threshold", "see.p_max=0.9", "see.p_min=0.0",
                   "see.directions=random", "see.scheduled=false", "see.n_points=2",
                   "see.weight=0.5")
    cb = build_synthesis_callback(cfg)
    assert cb.mode == "threshold" and cb.directions == "random" and cb.n_points == 2
    assert train(cfg)["test/map@r"] >= 0.0


def test_bad_see_option_names_the_key():
    with pytest.raises(ValueError, match="see.directions must be one of"):
        SEECallback(directions="uniform")
    with pytest.raises(ValueError, match="see.pair_integration"):
        SEECallback(pair_integration="reference")


def test_two_synthesisers_is_a_config_error(make_cfg):
    cfg = make_cfg("see.enabled=true", "synthesis=symmetric")
    with pytest.raises(ConfigError, match="see.enabled=true and synthesis"):
        validate_config(cfg)


def test_too_many_points_for_the_dimension(make_cfg):
    cfg = make_cfg("see.enabled=true", "see.n_points=15", "model.embed_dim=16")
    with pytest.raises(ConfigError, match="see.n_points=15"):
        validate_config(cfg)


def test_see_off_builds_no_callback(make_cfg):
    assert build_synthesis_callback(make_cfg()) is None

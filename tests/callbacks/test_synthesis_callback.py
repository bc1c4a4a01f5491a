"""The synthesis callback wired into training: loss integration, schedule, logging, errors."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from see_dml.callbacks.synthesis import (
    PairSynthesisCallback,
    SEECallback,
    build_synthesis_callback,
    class_mean_axes,
)
from see_dml.config import ConfigError, validate_config
from see_dml.train import build_model, train

LOSSES = ["proxy_anchor", "multi_similarity", "contrastive", "triplet", "norm_softmax",
          "arcface"]


def _module_and_batch(make_cfg, loss: str = "proxy_anchor", embed_dim: int = 16):
    cfg = make_cfg(f"loss={loss}", f"model.embed_dim={embed_dim}")
    module = build_model(cfg, num_classes=10)
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


def test_see_pair_loss_uses_synthetic_points_as_references(make_cfg):
    module, images, labels = _module_and_batch(make_cfg, "multi_similarity")
    see = SEECallback(n_points=4, p_min=0.5, p_max=0.5, scheduled=False)
    emb = module(images)
    out = see(module, emb, labels)
    assert out["see/synthetic"].item() == 48
    out["loss/synthetic"].backward()  # gradients reach the real embeddings (anchors)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.head.parameters())


def test_class_mean_axes_are_unit_class_means():
    emb = torch.nn.functional.normalize(torch.randn(6, 5), dim=1)
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    axes = class_mean_axes(emb, labels)
    expected = torch.nn.functional.normalize(emb[:2].mean(0), dim=0)
    torch.testing.assert_close(axes[0], expected)
    torch.testing.assert_close(axes[1], expected)
    torch.testing.assert_close(axes[5], emb[5])


@pytest.mark.parametrize("method", ["embedding_expansion", "symmetric"])
def test_pair_synthesis_is_differentiable(make_cfg, method):
    module, images, labels = _module_and_batch(make_cfg, "triplet")
    cb = PairSynthesisCallback(method, n_points=2)
    out = cb(module, module(images), labels)
    pairs = 6 * (4 * 3 // 2)
    assert out["see/synthetic"].item() == pairs * 2
    out["loss/synthetic"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.head.parameters())


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


@pytest.mark.parametrize("loss", LOSSES)
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


@pytest.mark.parametrize("synthesis, loss", [("embedding_expansion", "triplet"),
                                             ("symmetric", "multi_similarity"),
                                             ("embedding_expansion", "proxy_anchor")])
def test_fast_run_with_baselines(make_cfg, synthesis, loss):
    cfg = make_cfg(f"synthesis={synthesis}", f"loss={loss}")
    assert isinstance(build_synthesis_callback(cfg), PairSynthesisCallback)
    assert 0.0 <= train(cfg)["test/recall@1"] <= 1.0


def test_see_ablation_switches_run(make_cfg):
    cfg = make_cfg("see.enabled=true", "see.mode=threshold", "see.p_max=0.9", "see.p_min=0.0",
                   "see.directions=random", "see.scheduled=false", "see.n_points=2",
                   "see.weight=0.5")
    cb = build_synthesis_callback(cfg)
    assert cb.mode == "threshold" and cb.directions == "random" and cb.n_points == 2
    assert train(cfg)["test/map@r"] >= 0.0


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

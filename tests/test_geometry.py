"""The geometry measures (see_dml.evaluation.geometry) on hand-made embeddings, and their
callback."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from helpers.memory import CLEAR_REFS, peak_rss_growth
from see_dml.evaluation import geometry
from see_dml.train import train


def _rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rows of ``x`` in the (e0, e1) plane turned by ``degrees``."""
    a = math.radians(degrees)
    r = torch.eye(x.shape[1], dtype=torch.float64)
    r[0, 0], r[0, 1], r[1, 0], r[1, 1] = math.cos(a), -math.sin(a), math.sin(a), math.cos(a)
    return x.double() @ r.T


def test_proxy_drift_is_the_rotation_angle():
    proxies = torch.zeros(5, 4, dtype=torch.float64)
    proxies[:, 0] = 1.0
    assert geometry.proxy_drift(proxies, proxies) == pytest.approx(0.0, abs=1e-5)
    assert geometry.proxy_drift(proxies, _rotate(proxies, 30.0)) == pytest.approx(30.0)
    # scale does not matter: the measure is on the sphere
    assert geometry.proxy_drift(3 * proxies, _rotate(proxies, 90.0)) == pytest.approx(90.0)
    with pytest.raises(ValueError, match="shape"):
        geometry.proxy_drift(proxies, proxies[:3])


def test_proxy_class_cosine_and_spread_on_known_angles():
    # class 0 along e0, class 1 along e1; each class's two embeddings at +-20 degrees
    proxies = torch.eye(3, dtype=torch.float64)[:2]
    emb0 = torch.stack([_rotate(proxies[:1], 20.0)[0], _rotate(proxies[:1], -20.0)[0]])
    e1 = torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64)
    t = math.radians(20)
    emb1 = torch.tensor([[0.0, math.cos(t), math.sin(t)], [0.0, math.cos(t), -math.sin(t)]])
    emb = torch.cat([emb0, emb1.double()])
    labels = torch.tensor([0, 0, 1, 1])
    # the class means point exactly along the proxies; each embedding sits 20 deg away
    assert geometry.proxy_class_cosine(proxies, emb, labels) == pytest.approx(1.0)
    assert geometry.class_spread(proxies, emb, labels) == pytest.approx(20.0)
    # proxies turned 60 deg away from their classes (in a plane normal to the spread)
    turned = torch.stack([_rotate(proxies[:1], 0.0)[0], e1[0]])
    turned[0] = torch.tensor([math.cos(math.radians(60)), 0.0, math.sin(math.radians(60))])
    cos = geometry.proxy_class_cosine(turned, emb, labels)
    assert cos == pytest.approx((math.cos(math.radians(60)) + 1.0) / 2)
    # labels index the proxies: a class absent from the batch does not count
    assert geometry.proxy_class_cosine(turned, emb[2:], labels[2:]) == pytest.approx(1.0)


def test_uniformity_bounds_and_order():
    # two antipodal points: ||x - y||^2 = 4, so log exp(-2 * 4) = -8
    pair = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert geometry.uniformity(pair) == pytest.approx(-8.0)
    # identical points: potential 1, log 1 = 0
    assert geometry.uniformity(torch.ones(4, 3)) == pytest.approx(0.0, abs=1e-9)
    # points spread over the circle are more uniform (lower) than points in one arc
    angles = torch.linspace(0, 2 * math.pi, 33)[:-1]
    circle = torch.stack([angles.cos(), angles.sin()], 1)
    arc = torch.stack([(angles / 8).cos(), (angles / 8).sin()], 1)
    assert geometry.uniformity(circle) < geometry.uniformity(arc)
    # matches the definition computed pair by pair
    x = torch.nn.functional.normalize(torch.randn(7, 5, dtype=torch.float64), dim=1)
    pots = [math.exp(-2 * float((x[i] - x[j]).pow(2).sum()))
            for i in range(7) for j in range(i + 1, 7)]
    assert geometry.uniformity(x) == pytest.approx(math.log(sum(pots) / len(pots)))
    with pytest.raises(ValueError, match="two"):
        geometry.uniformity(x[:1])


def _pdist_uniformity(x: torch.Tensor, t: float = 2.0) -> float:
    """The whole-matrix definition (what uniformity computed before it was blocked)."""
    sq = torch.pdist(torch.nn.functional.normalize(x.double(), dim=1)).pow(2)
    return float(torch.logsumexp(-t * sq, dim=0) - math.log(sq.numel()))


def test_uniformity_in_blocks_equals_every_pair(monkeypatch):
    x = torch.randn(300, 6)
    monkeypatch.setattr(geometry, "_BLOCK_ELEMENTS", 300 * 7)  # blocks of 7 rows
    assert geometry.uniformity(x, t=3.0) == pytest.approx(_pdist_uniformity(x, 3.0), abs=1e-9)
    assert geometry.uniformity(x, max_rows=None) == pytest.approx(_pdist_uniformity(x),
                                                                  abs=1e-9)


def test_uniformity_above_max_rows_is_a_fixed_sample_estimate():
    torch.manual_seed(0)
    x = torch.randn(3000, 8)
    exact = _pdist_uniformity(x)
    sampled = geometry.uniformity(x, max_rows=600)
    assert sampled == pytest.approx(exact, abs=0.02)
    assert sampled != exact  # a sample, not every pair
    assert geometry.uniformity(x, max_rows=600) == sampled  # the same rows every call
    assert geometry.uniformity(x, max_rows=600, seed=1) != sampled
    assert geometry.uniformity_rows(3000, 600) == 600
    assert geometry.uniformity_rows(500, 600) == 500 and geometry.uniformity_rows(9, None) == 9
    with pytest.raises(ValueError, match="max_rows"):
        geometry.uniformity(x, max_rows=1)


@pytest.mark.skipif(not CLEAR_REFS.exists(), reason="needs Linux /proc")
def test_uniformity_memory_does_not_grow_with_the_square():
    """30,000 embeddings: torch.pdist's float64 pairs alone would be 3.6 GB; the blocked,
    sampled measure stays within a few of its (block, rows) blocks."""
    x = torch.randn(30_000, 32)
    grown = peak_rss_growth(lambda: geometry.uniformity(x))
    n_pairs = 30_000 * 29_999 // 2
    assert grown < 400 * 2**20, grown
    assert grown * 10 < n_pairs * 8


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_monitor_logs_every_epoch_and_resumes_its_drift(make_cfg, tmp_path):
    """Each epoch: a geometry.csv row and the CSV logger's columns; a resumed run measures
    its first epoch's drift from the proxies saved in the checkpoint."""
    common = ["+callbacks.geometry._target_=see_dml.callbacks.geometry_monitor.GeometryMonitor",
              "+callbacks.geometry.dirpath=${paths.run_dir}", "callbacks.embedding_export=null",
              "test_final=false", "see.enabled=true", "see.p_min=0.4"]
    a, b = tmp_path / "a", tmp_path / "b"
    train(make_cfg(*common, "trainer.max_epochs=2", f"paths.run_dir={a}"))
    rows = _rows(a / "geometry.csv")
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert rows[0]["geometry/proxy_drift_deg"] == ""  # nothing to compare with yet
    for key in ("geometry/proxy_drift_deg", "geometry/proxy_class_cos",
                "geometry/class_spread_deg", "geometry/uniformity",
                "geometry/train_recall@1", "geometry/train_val_gap@1"):
        value = float(rows[1][key])
        assert math.isfinite(value), key
    assert float(rows[1]["geometry/proxy_drift_deg"]) > 0
    assert -1 <= float(rows[1]["geometry/proxy_class_cos"]) <= 1
    assert 0 <= float(rows[1]["geometry/train_recall@1"]) <= 1
    logged = _rows(a / "csv" / "metrics.csv")
    assert sum(1 for r in logged if r.get("geometry/uniformity")) == 2

    train(make_cfg(*common, "trainer.max_epochs=1", f"paths.run_dir={b}"))
    train(make_cfg(*common, "trainer.max_epochs=2", f"paths.run_dir={b}"))
    resumed = _rows(b / "geometry.csv")
    assert [r["epoch"] for r in resumed] == ["0", "1"]
    for key in rows[1]:
        assert float(resumed[1][key]) == pytest.approx(float(rows[1][key]), rel=1e-6), key

"""experiments/make_table.py on hand-made run folders: what is pooled, the paired Δ."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("make_table", REPO / "experiments" / "make_table.py")
make_table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_table)


def _run(root: Path, name: str, seed: int, map_r: float, *, see: bool = False,
         n_points: int = 8, lr: float = 1e-4, synthesis: str | None = None) -> None:
    run_dir = root / name
    run_dir.mkdir(parents=True)
    cfg = {
        "seed": seed,
        "ckpt_path": "auto",
        "paths": {"run_dir": str(run_dir), "output_dir": "outputs"},
        "dataset": {"_target_": "see_dml.data.mnist.DoubleMNIST", "seed": seed},
        "data": {"batch_size": 64, "seed": seed},
        "model": {"backbone": {"name": "small_cnn"}, "embed_dim": 16},
        "loss": {"name": "proxy_anchor"},
        "see": {"enabled": see, "n_points": n_points},
        "synthesis": {"name": synthesis, "n_points": 2} if synthesis else None,
        "optimizer": {"lr": lr},
        "trainer": {"max_epochs": 5, "default_root_dir": str(run_dir)},
        "callbacks": {"last_checkpoint": {"dirpath": str(run_dir / "checkpoints")}},
    }
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run_dir / "metrics.json").write_text(json.dumps({"test/map@r": map_r,
                                                      "test/recall@1": 2 * map_r}))


def test_runs_are_pooled_only_across_seeds_and_paired_to_none(tmp_path):
    for seed, (plain, see) in enumerate([(0.10, 0.13), (0.12, 0.13), (0.11, 0.15)]):
        _run(tmp_path, f"none{seed}", seed, plain)
        _run(tmp_path, f"see{seed}", seed, see, see=True)
        _run(tmp_path, f"see_n4_{seed}", seed, plain + 0.005, see=True, n_points=4)
    _run(tmp_path, "none_lr", 0, 0.5, lr=1e-3)  # another learning rate: its own row
    rows = make_table.table_rows(make_table.collect([tmp_path]))
    by = {(r["synthesis"], r["other"]): r for r in rows}
    assert sorted(by) == [("SEE", "see.n_points=4"), ("SEE", "see.n_points=8"),
                          ("none", "optimizer.lr=0.0001"), ("none", "optimizer.lr=0.001")]
    assert [by[k]["seeds"] for k in sorted(by)] == [3, 3, 3, 1]
    see = by[("SEE", "see.n_points=8")]
    assert see["MAP@R"][0] == pytest.approx(100 * (0.13 + 0.13 + 0.15) / 3)
    # paired differences by hand: 3, 1, 4 points; mean 8/3, sd 1.5275, t(0.975, 2) = 4.3027
    mean, low, high, pairs = see["ΔMAP@R"]
    half = 4.302653 * math.sqrt(((3 - 8 / 3) ** 2 + (1 - 8 / 3) ** 2 + (4 - 8 / 3) ** 2) / 2)
    half /= math.sqrt(3)
    assert pairs == 3 and mean == pytest.approx(8 / 3)
    assert (low, high) == pytest.approx((8 / 3 - half, 8 / 3 + half), abs=1e-4)
    assert low < 0 < high  # three seeds cannot tell this effect from none
    n4 = by[("SEE", "see.n_points=4")]["ΔMAP@R"]
    assert n4[0] == pytest.approx(0.5) and n4[1] == pytest.approx(0.5)  # constant: no spread
    # the lr=1e-3 run has no baseline of its own kind: no Δ; baselines have none either
    assert by[("none", "optimizer.lr=0.001")]["ΔMAP@R"] is None
    assert by[("none", "optimizer.lr=0.0001")]["ΔMAP@R"] is None
    markdown = make_table.to_markdown(rows)
    assert "+2.67 [" in markdown and "| other |" in markdown


def test_baselines_by_name_and_duplicate_seeds(tmp_path):
    _run(tmp_path, "ee0", 0, 0.2, synthesis="embedding_expansion")
    _run(tmp_path, "none0", 0, 0.1)
    rows = make_table.table_rows(make_table.collect([tmp_path]))
    ee = next(r for r in rows if r["synthesis"] == "embedding_expansion")
    assert ee["ΔMAP@R"][0] == pytest.approx(10.0) and math.isnan(ee["ΔMAP@R"][1])
    _run(tmp_path, "none0_again", 0, 0.1)
    with pytest.raises(SystemExit, match="seed 0"):
        make_table.collect([tmp_path])


def test_plot_has_one_panel_per_requested_metric(tmp_path):
    from matplotlib.image import imread

    for seed in range(2):
        for dim in (16, 64):
            _run(tmp_path / f"d{dim}", f"none{seed}", seed, 0.1 + seed / 100)
            _run(tmp_path / f"d{dim}", f"see{seed}", seed, 0.12, see=True)
    for path in tmp_path.rglob("config.yaml"):  # the two sizes
        cfg = yaml.safe_load(path.read_text())
        cfg["model"]["embed_dim"] = int(path.parent.parent.name[1:])
        path.write_text(yaml.safe_dump(cfg))
    make_table.main([str(tmp_path)])
    one = imread(tmp_path / "results.png").shape
    make_table.main([str(tmp_path), "--plot-metrics", "R@1", "MAP@R"])
    two = imread(tmp_path / "results.png").shape
    assert two[0] == one[0] and two[1] == 2 * one[1]
    with pytest.raises(SystemExit):
        make_table.main([str(tmp_path), "--plot-metrics", "nope"])

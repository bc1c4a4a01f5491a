"""see_dml.reporting: paired intervals, Markdown tables and the geometry report, on runs
written by hand in the layout train leaves behind."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from see_dml import reporting
from see_dml.reporting.__main__ import main as reporting_main
from see_dml.reporting.geometry import geometry_frame, geometry_summary


def test_paired_interval_is_the_student_t_interval():
    diffs = [0.5, 0.1, 0.3, 0.7]
    mean, low, high = reporting.paired_interval(diffs)
    n, m = len(diffs), sum(diffs) / len(diffs)
    sd = math.sqrt(sum((d - m) ** 2 for d in diffs) / (n - 1))
    half = 3.182446305284263 * sd / math.sqrt(n)  # t(0.975, 3)
    assert (mean, low, high) == pytest.approx((m, m - half, m + half))
    assert math.isnan(reporting.paired_interval([0.2])[1])
    assert reporting.paired_interval([0.2, 0.2]) == (0.2, 0.2, 0.2)


def test_markdown_table_and_interval_format():
    text = reporting.markdown_table(pd.DataFrame({"a": [1.234, 2.0], "b": ["x, y", "z"]}))
    lines = text.splitlines()
    assert lines[0].replace(" ", "") == "|a|b|"
    assert "1.23" in lines[2] and "x, y" in lines[2]
    assert reporting.format_interval(0.3, 0.07, 0.57) == "+0.30 [+0.07, +0.57]"
    assert reporting.format_interval(-0.1, math.nan, math.nan) == "-0.10"


def _run(root: Path, name: str, arm: str, dim: int, seed: int, drift: list[float],
         finished: bool = True) -> Path:
    run = root / name
    (run / "csv").mkdir(parents=True)
    cfg = {"task_name": "study", "seed": seed, "model": {"embed_dim": dim},
           "see": {"enabled": arm == "SEE"}, "synthesis": None}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    epochs = range(len(drift))
    pd.DataFrame({"epoch": list(epochs), "geometry/proxy_drift_deg": drift,
                  "geometry/uniformity": [-2.0 - 0.1 * e for e in epochs]}
                 ).to_csv(run / "geometry.csv", index=False)
    # the CSV logger: step rows without val metrics, then one epoch row each
    rows = [{"epoch": e, "step": e * 10, "train/loss_step": 1.0} for e in epochs]
    rows += [{"epoch": e, "step": e * 10 + 9, "val/recall@1": 0.4 + 0.01 * e + 0.001 * seed}
             for e in epochs]
    pd.DataFrame(rows).to_csv(run / "csv" / "metrics.csv", index=False)
    if finished:
        (run / "metrics.json").write_text(json.dumps({"test/recall@1": 0.5}))
    return run


def test_geometry_report_pairs_seeds_and_plots_both_arms(tmp_path):
    for seed in (0, 1, 2):
        _run(tmp_path, f"none{seed}", "none", 32, seed, [math.nan, 5.0, 4.0])
        _run(tmp_path, f"see{seed}", "SEE", 32, seed, [math.nan, 6.0, 4.0 + 0.5 * (seed + 1)])
    _run(tmp_path, "running", "SEE", 32, 3, [math.nan, 9.0], finished=False)
    frame = geometry_frame([tmp_path])
    assert len(frame) == 3 * 6 + 2
    assert set(frame["arm"]) == {"none", "SEE"}
    # val R@1 joined from the logger's epoch rows
    assert frame.loc[(frame["run"].str.endswith("see1")) & (frame["epoch"] == 2),
                     "val/recall@1"].item() == pytest.approx(0.421)
    summary = geometry_summary(frame).set_index("arm")
    assert summary.loc["SEE", "seeds"] == 3  # the unfinished run is not in the table
    assert summary.loc["none", "proxy drift (deg / epoch)"] == "4.000 ± 0.000"
    # SEE - none at the last epoch, seed by seed: 0.5, 1.0, 1.5
    mean, low, high = reporting.paired_interval([0.5, 1.0, 1.5])
    assert summary.loc["SEE", "Δ proxy drift (deg / epoch)"] == (
        f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]")
    assert pd.isna(summary.loc["none"].get("Δ proxy drift (deg / epoch)"))
    assert reporting_main(["geometry", str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    for name in ("geometry_summary.md", "geometry_summary.csv", "geometry.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0


def test_geometry_report_without_runs_names_the_folder(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        reporting_main(["geometry", str(tmp_path)])
    assert err.value.code == 2
    assert str(tmp_path) in capsys.readouterr().err

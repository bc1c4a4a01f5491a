"""see_dml.reporting: paired intervals, Markdown tables, the geometry report and what the
results table refuses to pool, on runs written by hand in the layout train leaves behind."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from see_dml import reporting
from see_dml.reporting.__main__ import main as reporting_main
from see_dml.reporting.geometry_table import geometry_frame, geometry_summary
from see_dml.runtime.errors import AmbiguousBaselineError, ProvenanceMismatchError


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


# --- the results table (see_dml.reporting.tables): what it refuses to pool, and what it says
# about seeds it cannot average over all ---

COMMIT = "0123456789abcdef0123456789abcdef01234567"
PROVENANCE = {"provenance/commit": COMMIT, "provenance/dirty": False,
              "provenance/torch": "2.4.0", "provenance/lightning": "2.4.0",
              "provenance/timm": "1.0.9", "provenance/pytorch_metric_learning": "2.6.0",
              "provenance/device": "NVIDIA H200", "provenance/device_count": 1}


def _table_run(root: Path, name: str, seed: int, map_r: float, *, see: bool = False,
               n_points: int = 8, provenance: dict | None = None,
               drop: tuple[str, ...] = ()) -> Path:
    """A finished run as train leaves it; ``provenance``: keys that replace the default ones
    (``None`` values removed), or ``{}`` for a run from before provenance was recorded;
    ``drop``: metrics it lacks."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    cfg = {"seed": seed, "paths": {"run_dir": str(run_dir)}, "protocol": "held_out",
           "dataset": {"_target_": "see_dml.data.mnist.DoubleMNIST", "seed": seed},
           "model": {"backbone": {"name": "small_cnn"}, "embed_dim": 16},
           "loss": {"name": "proxy_anchor"}, "see": {"enabled": see, "n_points": n_points},
           "synthesis": None, "trainer": {"max_epochs": 5}}
    origin = {} if provenance == {} else {**PROVENANCE, **(provenance or {})}
    metrics = {"test/map@r": map_r, "test/recall@1": 2 * map_r, "test/recall@2": 2 * map_r + 0.1,
               **{k: v for k, v in origin.items() if v is not None}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run_dir / "metrics.json").write_text(json.dumps({k: v for k, v in metrics.items()
                                                      if k not in drop}))
    return run_dir


def _table_error(capsys, argv: list[str]) -> str:
    """The table's CLI stopped by an error of the user's making: status 2, one ``error:``
    message on stderr (its first line the error line, then the runs)."""
    with pytest.raises(SystemExit) as stop:
        reporting_main(["table", *argv])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def test_table_keys_are_those_provenance_writes():
    from see_dml.reporting import tables
    from see_dml.runtime.provenance import provenance
    assert set(provenance(("cpu", 1))) == {*tables.CODE_KEYS, *tables.SETUP_KEYS,
                                           *tables.RECORDED_KEYS}


def test_table_does_not_pool_seeds_of_other_libraries_devices_or_commits(tmp_path, capsys):
    from see_dml.reporting import tables
    # a torch upgrade between the seeds of one config: the spread would be the upgrade's too
    old = _table_run(tmp_path / "a", "s0", 0, 0.10)
    new = _table_run(tmp_path / "a", "s1", 1, 0.12, provenance={"provenance/torch": "2.5.1"})
    _table_run(tmp_path / "a", "s2", 2, 0.11, provenance={})  # older: pools with either
    with pytest.raises(ProvenanceMismatchError) as err:
        tables.check_provenance(tables.collect([tmp_path / "a"]))
    assert isinstance(err.value, ValueError)
    err = _table_error(capsys, [str(tmp_path / "a")])
    assert "differ in provenance/torch:" in err and "synthesis=none" in err
    assert f"{old}: provenance/torch=2.4.0\n" in err and f"{new}: provenance/torch=2.5.1\n" in err
    assert "--pool-commits" in err  # what to do
    # libraries and devices stay strict under --pool-commits
    assert "provenance/torch=2.5.1" in _table_error(capsys, [str(tmp_path / "a"),
                                                             "--pool-commits"])
    _table_run(tmp_path / "b", "s0", 0, 0.10, provenance={"provenance/device_count": 2})
    _table_run(tmp_path / "b", "s1", 1, 0.12, provenance={"provenance/device": "cpu"})
    err = _table_error(capsys, [str(tmp_path / "b"), "--pool-commits"])
    assert "provenance/device=NVIDIA H200 provenance/device_count=2" in err
    assert "provenance/device=cpu provenance/device_count=1" in err

    # two commits, or one commit with and without local changes: strict unless asked
    other = "fedcba9876543210fedcba9876543210fedcba98"
    _table_run(tmp_path / "c", "s0", 0, 0.10)
    _table_run(tmp_path / "c", "s1", 1, 0.12, provenance={"provenance/commit": other})
    _table_run(tmp_path / "c", "s2", 2, 0.14, provenance={"provenance/dirty": True})
    _table_run(tmp_path / "c", "s3", 3, 0.16, provenance={"provenance/commit": "unknown",
                                                          "provenance/dirty": "unknown"})
    err = _table_error(capsys, [str(tmp_path / "c")])
    assert "differ in provenance/commit, provenance/dirty:" in err
    assert f"provenance/commit={other} provenance/dirty=false" in err
    markdown = tables.main([str(tmp_path / "c"), "--pool-commits"])
    capsys.readouterr()
    row = next(line for line in markdown.splitlines() if "| none |" in line)
    assert "| 4 | 26.00 ± 5.16 |" in row  # R@1 of all four seeds: 20, 24, 28, 32
    assert ("Code versions pooled (`--pool-commits`) in 1 of 1 cells, from the commits "
            f"{COMMIT[:12]} (1 run), {COMMIT[:12]}+dirty (1 run), {other[:12]} (1 run), "
            "unknown (1 run)") in markdown

    # a clean sweep with an older run: pooled, and the note counts the runs without provenance
    _table_run(tmp_path / "d", "s0", 0, 0.10)
    _table_run(tmp_path / "d", "s1", 1, 0.12, provenance={})
    markdown = tables.main([str(tmp_path / "d")])
    assert "| 2 | 22.00 ± 2.83 |" in markdown
    assert "Provenance: 1 of 2 runs record none" in markdown
    assert "Code versions pooled" not in markdown
    assert (tmp_path / "d" / "results.md").read_text() == markdown + "\n"


def test_table_names_the_seeds_that_lack_a_metric(tmp_path, capsys):
    from see_dml.reporting import tables
    for seed in range(3):
        _table_run(tmp_path, f"none{seed}", seed, 0.10 + seed / 100)
    lacking = _table_run(tmp_path, "see0", 0, 0.20, see=True, drop=("test/recall@2",))
    _table_run(tmp_path, "see1", 1, 0.22, see=True)
    markdown = tables.main([str(tmp_path)])
    capsys.readouterr()
    notes = [n for n in markdown.split("\n\n") if n.startswith("Missing metrics:")]
    assert notes == [
        "Missing metrics: dataset=DoubleMNIST backbone=small_cnn dim=16 loss=proxy_anchor "
        f"synthesis=SEE epochs=5: `test/recall@2` missing from seed 0 ({lacking}); those "
        "means are over fewer than its 2 seeds."]
    rows = tables.table_rows(tables.collect([tmp_path]))
    see = next(r for r in rows if r["synthesis"] == "SEE")
    assert see["at"]["recall@2"][0] == pytest.approx(54.0)  # seed 1 alone, as before
    assert see["ΔR@1"][3] == 2  # R@1: both seeds, no note
    assert not next(r for r in rows if r["synthesis"] == "none")["missing"]


def test_table_pairs_with_the_one_baseline_cell_or_says_which_match(tmp_path, capsys):
    """Baseline runs that differ only in see.* values (SEE off) are two cells of one context:
    a SEE row is paired with the one of its own n_points, and a row that none or both fit is
    an error naming them, not a pairing with whichever sorted last."""
    from see_dml.reporting import tables
    for seed in range(2):
        _table_run(tmp_path, f"none_n4_{seed}", seed, 0.10 + seed / 100, n_points=4)
        _table_run(tmp_path, f"none_n8_{seed}", seed, 0.30 + seed / 100, n_points=8)
        _table_run(tmp_path, f"see_n4_{seed}", seed, 0.13 + seed / 50, see=True, n_points=4)
    rows = {(r["synthesis"], r["other"]): r for r in tables.table_rows(
        tables.collect([tmp_path]))}
    # SEE n4 - none n4: MAP@R 3, 4 points (against none n8 it would be -17, -16)
    mean, low, high, pairs = rows[("SEE", "")]["ΔMAP@R"]
    assert (mean, pairs) == (pytest.approx(3.5), 2)
    assert rows[("none", "see.n_points=4")]["ΔMAP@R"] is None  # a baseline is not paired
    assert rows[("none", "see.n_points=8")]["ΔMAP@R"] is None
    _table_run(tmp_path, "see_n2_0", 0, 0.2, see=True, n_points=2)
    with pytest.raises(AmbiguousBaselineError):
        tables.table_rows(tables.collect([tmp_path]))
    err = _table_error(capsys, [str(tmp_path)])
    assert "synthesis=SEE epochs=5 see.n_points=2 (see.n_points=2): 2 baseline cells" in err
    assert "synthesis=none epochs=5 see.n_points=4: see.n_points=4 (2 runs, e.g. " in err
    assert "synthesis=none epochs=5 see.n_points=8: see.n_points=8 (2 runs" in err


def test_tuned_arms_pair_seed_by_seed_across_their_tuned_keys(tmp_path):
    """Each arm of a tuned comparison has its own learning rate: --tuned names the keys the
    pairing may cross, and the SEE row is paired with the baseline, seed by seed."""
    from see_dml.reporting import tables
    for seed in range(3):
        none = _table_run(tmp_path, f"none_{seed}", seed, 0.10 + seed / 100)
        see = _table_run(tmp_path, f"see_{seed}", seed, 0.12 + seed / 50, see=True)
        for run, lr in ((none, 1e-4), (see, 3e-4)):
            cfg = yaml.safe_load((run / "config.yaml").read_text())
            cfg["optimizer"] = {"lr": lr, "weight_decay": 1e-4}
            (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    untuned = {r["synthesis"]: r for r in tables.table_rows(tables.collect([tmp_path]))}
    assert untuned["SEE"]["ΔMAP@R"] is None  # other learning rates: no baseline
    rows = {r["synthesis"]: r for r in tables.table_rows(tables.collect([tmp_path]),
                                                         tuned=("optimizer.lr",))}
    mean, low, high, pairs = rows["SEE"]["ΔMAP@R"]
    assert (mean, pairs) == (pytest.approx(3.0), 3)  # 2 + 1 x seed points, seeds 0-2
    assert reporting_main(["table", str(tmp_path), "--tuned", "optimizer.lr"]) == 0
    assert "| +3.00 [" in (tmp_path / "results.md").read_text()


# --- a sweep's records without checkpoints (see_dml.reporting.records) ---


def test_records_keep_what_the_reports_read_and_leave_checkpoints_behind(tmp_path):
    sweep = tmp_path / "sweep"
    for seed in (0, 1):
        for arm in ("none", "SEE"):
            run = _run(sweep / "runs", f"{arm}{seed}", arm, 32, seed, [math.nan, 5.0 + seed])
            (run / "checkpoints").mkdir()
            (run / "checkpoints" / "last.ckpt").write_bytes(b"\0" * 64)
            (run / "checkpoints" / "hparams.yaml").write_text("a: 1\n")  # under checkpoints/
            (run / "test_embeddings.npz").write_bytes(b"\0" * 64)
            (run / ".hydra").mkdir()
            (run / ".hydra" / "overrides.yaml").write_text(f"- seed={seed}\n")
            (run / "train.log").write_text("epoch 0\n")
    _run(sweep / "runs", "running", "SEE", 32, 2, [math.nan, 9.0], finished=False)
    out = tmp_path / "records"
    assert reporting_main(["records", str(sweep), "--out", str(out)]) == 0
    kept = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert kept == sorted(f"runs/{arm}{seed}/{name}" for seed in (0, 1) for arm in ("none", "SEE")
                          for name in (".hydra/overrides.yaml", "config.yaml", "csv/metrics.csv",
                                       "geometry.csv", "metrics.json", "train.log"))
    # the records give the geometry report the sweep gives (less the run paths)
    on_sweep = geometry_summary(geometry_frame([sweep]))
    on_records = geometry_summary(geometry_frame([out]))
    pd.testing.assert_frame_equal(on_sweep, on_records)


def test_records_refuse_two_runs_at_one_place_and_an_empty_sweep(tmp_path, capsys):
    for folder in ("a", "b"):
        _run(tmp_path / folder, "run0", "none", 32, 0, [math.nan, 5.0])
    with pytest.raises(SystemExit) as stop:
        reporting_main(["records", str(tmp_path / "a"), str(tmp_path / "b"),
                        "--out", str(tmp_path / "out")])
    assert stop.value.code == 2
    assert "two runs would be kept at" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as stop:
        reporting_main(["records", str(tmp_path / "empty"), "--out", str(tmp_path / "out")])
    assert stop.value.code == 2
    assert "no finished runs" in capsys.readouterr().err

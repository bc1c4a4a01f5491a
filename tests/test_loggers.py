"""The logger group: W&B offline without an account, TensorBoard, and none."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from see_dml.runtime.config import path_id
from see_dml.train import train

#: one short epoch, evaluation on a batch per split (the loggers are under test, not metrics)
SHORT = ["trainer.limit_train_batches=2", "+trainer.limit_val_batches=1",
         "+trainer.limit_test_batches=1", "data.eval_batch_size=64"]


def run(make_cfg, *overrides: str) -> tuple[dict, Path]:
    cfg = make_cfg(*SHORT, *overrides)
    metrics = train(cfg)
    assert 0.0 <= metrics["test/recall@1"] <= 1.0
    return metrics, Path(cfg.paths.run_dir)


def test_wandb_runs_offline_without_an_account(make_cfg, monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb_cache"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc login to fall back on
    cfg = make_cfg(*SHORT, "logger=wandb")
    run_id = cfg.logger.wandb.id
    assert run_id == path_id(cfg.paths.run_dir) and len(run_id) == 12
    assert make_cfg("logger=wandb", "paths.run_dir=/elsewhere").logger.wandb.id != run_id
    # a paper table's runs are told apart by name (dataset, backbone, size) and grouped by
    # setting
    paper = make_cfg("experiment=paper/deit_small_128_cub", "logger=wandb", "seed=2",
                     fast=False).logger.wandb
    assert paper.name == "CUB200-deit_small_distilled_patch16_224-d128-proxy_anchor-seeTrue-s2"
    assert paper.group == "paper_deit_small_128_cub"
    _, run_dir = run(make_cfg, "logger=wandb")
    offline = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1, list(run_dir.rglob("*"))[:20]
    assert offline[0].name.endswith(f"-{run_id}")  # the run directory's id, stable on resume
    wandb_file = list(offline[0].glob("*.wandb"))
    assert wandb_file and wandb_file[0].stat().st_size > 0
    # the CSV logger of the same config still writes its metrics
    assert (run_dir / "csv" / "metrics.csv").read_text().count("train/loss") >= 1


def test_wandb_run_still_ends_with_the_run_directory(make_cfg, wandb_offline, capfd):
    """W&B prints its sync hints when its run finishes: that happens before our last line."""
    _, run_dir = run(make_cfg, "logger=wandb")
    lines = capfd.readouterr().out.strip().splitlines()
    assert lines[-1] == f"Run directory: {run_dir.resolve()}"
    import wandb

    assert wandb.run is None  # finished by train, not at interpreter exit


def test_tensorboard_writes_an_events_file(make_cfg):
    _, run_dir = run(make_cfg, "logger=tensorboard")
    events = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    assert {"train/loss_epoch", "test/recall@1"} <= scalars, scalars


def test_no_logger_runs(make_cfg):
    metrics, run_dir = run(make_cfg, "logger=none")
    assert not (run_dir / "csv").exists()
    assert not (run_dir / "tensorboard").exists()
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["test/recall@1"] == pytest.approx(metrics["test/recall@1"])


@pytest.fixture
def wandb_offline(monkeypatch, tmp_path):
    for key, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true",
                       "WANDB_DIR": tmp_path / "wandb_dir",
                       "WANDB_CONFIG_DIR": tmp_path / "wandb_config",
                       "WANDB_CACHE_DIR": tmp_path / "wandb_cache",
                       "HOME": tmp_path / "home"}.items():
        monkeypatch.setenv(key, str(value))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


@pytest.mark.parametrize("logger", ["csv", "wandb", "tensorboard"])
def test_a_resumed_run_keeps_what_every_logger_wrote(make_cfg, wandb_offline, logger):
    """1 epoch, then the same run resumed for a 2nd: nothing the first run logged is lost."""
    short = ["trainer.limit_train_batches=2", "callbacks.embedding_export=null",
             "test_final=false", f"logger={logger}"]
    _, run_dir = run(make_cfg, *short, "trainer.max_epochs=1")
    files = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()
             and p.parent.name in ("csv", "tensorboard")}
    assert files
    run(make_cfg, *short, "trainer.max_epochs=2")
    for path, before in files.items():
        after = path.read_bytes()
        assert after[:len(before)] == before, f"{path.name} lost what the first run wrote"
    if logger in ("csv", "wandb"):  # both log to the CSV file: both epochs are in it
        with (run_dir / "csv" / "metrics.csv").open(newline="") as f:
            epochs = {r["epoch"] for r in csv.DictReader(f) if r.get("train/loss_epoch")}
        assert epochs == {"0", "1"}

"""test_every_epoch: the papers' best-on-test number, reported beside ours and selecting nothing.

The test split(s) are scored in the validation loop after every epoch (``test_epoch/...``),
kept per epoch in the module (and its checkpoints), and the epoch with the best test
Recall@1 is written as ``best_on_test/...``. The validation-selected ``test/...`` numbers,
and the training itself, are those of the same run with the option off.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import open_dict

from conftest import FAST, compose_config
from helpers.dataset_fixtures import make_fixture
from see_dml.evaluation.report import best_on_test, format_results
from see_dml.runtime.errors import ConfigError
from see_dml.train import train

QUIET = ["callbacks.embedding_export=null", "test_final=false"]


def _cfg(tmp: Path, name: str, *overrides: str):
    # the session's dataset cache, as make_cfg's (conftest.py)
    cache = tmp.parent / "see_dml_cache"
    cfg = compose_config([f"paths.run_dir={tmp / name}", f"paths.cache_dir={cache}",
                          f"paths.output_dir={tmp / 'outputs'}", *FAST, *QUIET, *overrides])
    with open_dict(cfg):
        if cfg.dataset._target_.endswith("DoubleMNIST"):
            cfg.dataset.images_per_class = 20
    return cfg


def _per_epoch(run_dir: Path, key: str = "test_epoch/recall@1") -> dict[int, float]:
    """``{epoch: value}`` of ``key`` in the run's metrics.csv (a resumed epoch: its last row)."""
    with (run_dir / "csv" / "metrics.csv").open(newline="") as f:
        return {int(r["epoch"]): float(r[key]) for r in csv.DictReader(f) if r.get(key)}


def _history(run_dir: Path) -> dict[int, dict[str, float]]:
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu",
                       weights_only=False)
    return state["see_dml_test_history"]


def _assert_best_is_the_max(metrics: dict[str, Any], run_dir: Path, epochs: int) -> None:
    per_epoch = _per_epoch(run_dir)
    assert sorted(per_epoch) == list(range(epochs))
    best = max(per_epoch.values())
    assert metrics["best_on_test/recall@1"] == pytest.approx(best, abs=1e-7)
    assert metrics["best_on_test/epoch"] == min(e for e, v in per_epoch.items() if v == best)
    # every test metric of that epoch, as the module kept it
    kept = _history(run_dir)[metrics["best_on_test/epoch"]]
    assert {f"best_on_test/{k}" for k in kept} | {"best_on_test/epoch"} == {
        k for k in metrics if k.startswith("best_on_test/")}
    for key, value in kept.items():
        assert metrics[f"best_on_test/{key}"] == pytest.approx(value, abs=0, nan_ok=True), key


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Any]:
    """The same 3-epoch Double-MNIST run with the option on and off."""
    tmp = tmp_path_factory.mktemp("best_on_test")
    out = {}
    for name, on in (("on", "true"), ("off", "false")):
        cfg = _cfg(tmp, name, "trainer.max_epochs=3", f"test_every_epoch={on}")
        out[name] = (train(cfg), Path(cfg.paths.run_dir))
    return out


@pytest.mark.slow
def test_best_on_test_is_the_best_epoch_on_the_test_classes(runs):
    metrics, run_dir = runs["on"]
    _assert_best_is_the_max(metrics, run_dir, epochs=3)
    # the checkpoint still selects on validation: and the test split scored in the epoch it
    # selected gives the numbers of the real test of that checkpoint
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=False)
    (selector,) = (s for s in last["callbacks"].values()
                   if s.get("best_model_path") == metrics["best_checkpoint"])
    assert selector["monitor"] == "val/map@r"
    selected = torch.load(metrics["best_checkpoint"], map_location="cpu", weights_only=False)
    at_selected = _history(run_dir)[selected["epoch"]]
    for key in ("recall@1", "map@r", "r_precision"):
        assert at_selected[key] == pytest.approx(metrics[f"test/{key}"], abs=1e-6), key


@pytest.mark.slow
def test_option_changes_neither_training_nor_selection(runs):
    (on, on_dir), (off, off_dir) = runs["on"], runs["off"]
    assert not any(k.startswith(("best_on_test/", "test_epoch/")) for k in off)
    assert sorted(k for k in on if not k.startswith("best_on_test/")) == sorted(off)
    for key in off:
        if key.startswith(("test/", "best/")) or key == "epochs":
            assert on[key] == off[key], key
    assert Path(on["best_checkpoint"]).name == Path(off["best_checkpoint"]).name
    a, b = (torch.load(d / "checkpoints" / "last.ckpt", map_location="cpu",
                       weights_only=False)["state_dict"] for d in (on_dir, off_dir))
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert "see_dml_test_history" not in torch.load(
        off_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)


@pytest.mark.slow
def test_test_epochs_schedule_scores_only_those_epochs(runs, tmp_path, monkeypatch):
    """test_epochs.start / every (the SEE authors' scripts: from the warm-up's end; on SOP
    every 5 from epoch 40): the other epochs read no test image, the best is over the
    scored ones, and training is still that of the run without the option."""
    from see_dml.data.base import RetrievalDataset

    reads: list[int] = []
    getitem = RetrievalDataset.__getitem__

    def counting(self, index):
        if self.split.name == "test":
            reads.append(index)
        return getitem(self, index)

    monkeypatch.setattr(RetrievalDataset, "__getitem__", counting)
    cfg = _cfg(tmp_path, "sched", "trainer.max_epochs=3", "test_every_epoch=true",
               "test_epochs.start=1", "test_epochs.every=2")
    metrics = train(cfg)
    history = _history(Path(cfg.paths.run_dir))
    assert sorted(history) == [1]  # epochs 1, 3, ... of 0..2
    assert metrics["best_on_test/epoch"] == 1
    assert sorted(_per_epoch(Path(cfg.paths.run_dir))) == [1]
    # the test split read once in epoch 1, then by the two tests at the end (test_final off:
    # once, for the selected checkpoint)
    n_test = len(set(reads))
    assert len(reads) == 2 * n_test
    off = runs["off"][0]
    for key in off:
        if key.startswith(("test/", "best/")) or key == "epochs":
            assert metrics[key] == off[key], key


@pytest.mark.slow
def test_printed_results_label_the_papers_number(runs):
    table = format_results(runs["on"][0])
    epoch = runs["on"][0]["best_on_test/epoch"]
    assert (f"| best on test (papers' protocol, for comparison only), epoch {epoch} |"
            in table)
    assert "| selected (val) |" in table
    assert "best on test" not in format_results(runs["off"][0])


def test_without_validation_classes(tmp_path):
    """dataset.val_fraction=0 (the papers' protocol): the validation loop, which does not run
    at all without the option, scores the test split alone; training and the selected
    checkpoint (the final epoch) are those of the run without the option."""
    make_fixture("cub", tmp_path / "data", n_classes=4, per_class=4)
    common = ["dataset=cub", f"paths.data_dir={tmp_path / 'data'}", "dataset.val_fraction=0",
              "dataset.strict_counts=false", "data.transforms.image_size=32",
              "data.transforms.resize=36", "data.batch_size=8", "data.m_per_class=2",
              "data.eval_batch_size=16", "trainer.max_epochs=2"]
    metrics = train(_cfg(tmp_path, "on", *common, "test_every_epoch=true"))
    off = train(_cfg(tmp_path, "off", *common))
    assert not any(k.startswith(("val/", "best/")) for k in metrics)
    _assert_best_is_the_max(metrics, tmp_path / "on", epochs=2)
    assert torch.load(metrics["best_checkpoint"], map_location="cpu",
                      weights_only=False)["epoch"] == 1
    assert _history(tmp_path / "on")[1]["map@r"] == pytest.approx(metrics["test/map@r"],
                                                                  abs=1e-6)
    assert {k: v for k, v in metrics.items() if not k.startswith("best_on_test/")} == {
        **off, "best_checkpoint": metrics["best_checkpoint"]}
    a, b = (torch.load(tmp_path / d / "checkpoints" / "last.ckpt", map_location="cpu",
                       weights_only=False)["state_dict"] for d in ("on", "off"))
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_query_gallery_dataset(tmp_path):
    """In-Shop (fixture files): query and gallery are both scored every epoch."""
    make_fixture("inshop", tmp_path / "data", n_train=6, n_test=4, per_item=4)
    cfg = _cfg(tmp_path, "run", "dataset=inshop", f"paths.data_dir={tmp_path / 'data'}",
               "dataset.val_fraction=0.2", "dataset.strict_counts=false",
               "data.transforms.image_size=32", "data.transforms.resize=36",
               "data.batch_size=8", "data.m_per_class=2", "data.eval_batch_size=16",
               "trainer.max_epochs=2", "test_every_epoch=true")
    metrics = train(cfg)
    run_dir = Path(cfg.paths.run_dir)
    _assert_best_is_the_max(metrics, run_dir, epochs=2)
    assert "best/val/map@r" in metrics
    # 4 test items x 4 images, half of them queries: every query scored, none excluded
    assert metrics["best_on_test/num_queries"] == metrics["test/num_queries"] > 0


@pytest.mark.slow
def test_resumed_run_reports_the_best_of_all_epochs(runs, tmp_path):
    """SIGTERM in the third epoch, resumed: the history of the first two epochs comes back
    from last.ckpt, and the run reports what the unbroken run did."""
    common = ["trainer.max_epochs=3", "test_every_epoch=true"]
    stop = ["+callbacks.stop._target_=helpers.preemption.SignalOnce", "+callbacks.stop.step=7",
            "+callbacks.stop.signum=SIGTERM", f"+callbacks.stop.marker={tmp_path / 'marker'}"]
    with pytest.raises(SystemExit) as stopped:
        train(_cfg(tmp_path, "run", *common, *stop))
    assert stopped.value.code == 143
    run_dir = tmp_path / "run"
    assert sorted(_history(run_dir)) == [0, 1]
    resumed = train(_cfg(tmp_path, "run", *common))
    assert sorted(_history(run_dir)) == [0, 1, 2]
    unbroken = runs["on"][0]
    for key in unbroken:
        if key.startswith(("best_on_test/", "test/")):
            assert resumed[key] == unbroken[key], key
    _assert_best_is_the_max(resumed, run_dir, epochs=3)


def test_best_on_test_picks_the_earliest_of_equal_epochs():
    history = {2: {"recall@1": 0.5, "map@r": 0.3}, 0: {"recall@1": 0.4, "map@r": 0.9},
               1: {"recall@1": 0.5, "map@r": 0.2}, 3: {"recall@1": math.nan, "map@r": 1.0}}
    assert best_on_test(history) == {"best_on_test/recall@1": 0.5, "best_on_test/map@r": 0.2,
                                     "best_on_test/epoch": 1}
    assert best_on_test({}) == {}


def test_test_metrics_never_select(tmp_path):
    for monitor in ("test_epoch/recall@1", "best_on_test/recall@1", "test/map@r"):
        cfg = _cfg(tmp_path, "run", "test_every_epoch=true",
                   f"callbacks.model_checkpoint.monitor={monitor}")
        with pytest.raises(ConfigError, match=r"callbacks\.model_checkpoint\.monitor"):
            train(cfg)
    assert not (tmp_path / "run").exists()  # failed before anything was written


@pytest.mark.slow  # two spawned gloo processes
@pytest.mark.timeout(900)
def test_ddp_cpu(tmp_path):
    """Under DDP (ddp_spawn, 2 CPU processes) the test split is gathered as validation is,
    and the history the spawned workers kept comes back from last.ckpt."""
    cfg = _cfg(tmp_path, "run", "trainer=ddp_cpu", "trainer.max_epochs=2",
               "trainer.limit_train_batches=2", "test_every_epoch=true")
    metrics = train(cfg)
    run_dir = Path(cfg.paths.run_dir)
    _assert_best_is_the_max(metrics, run_dir, epochs=2)
    selected = torch.load(metrics["best_checkpoint"], map_location="cpu", weights_only=False)
    assert _history(run_dir)[selected["epoch"]]["map@r"] == pytest.approx(
        metrics["test/map@r"], abs=1e-6)
    # a sparse schedule: each rank's sampler is told the epoch, so both skip epoch 0 alike
    # (a rank that read the test split alone would hang the gather)
    cfg = _cfg(tmp_path, "sched", "trainer=ddp_cpu", "trainer.max_epochs=2",
               "trainer.limit_train_batches=2", "test_every_epoch=true", "test_epochs.start=1")
    metrics = train(cfg)
    assert sorted(_history(Path(cfg.paths.run_dir))) == [1]
    assert metrics["best_on_test/epoch"] == 1

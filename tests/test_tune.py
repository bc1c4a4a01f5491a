"""The tuner (``python -m see_dml.tune``): its objective is a validation metric and never a test
one, a bad search space fails before any training with one line, and a tiny study runs,
resumes after a kill to the same trial count, and runs under the submitit local launcher."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from see_dml.runtime.config import compose
from see_dml.runtime.errors import ConfigError
from see_dml.training.config_checks import (
    NO_VALIDATION_CLASSES,
    check_objective,
    objective_value,
    validate_config,
)
from see_dml.tune import check_space, parse_study, trial_overrides

SRC = Path(__file__).resolve().parents[1] / "src"
TESTS = Path(__file__).resolve().parent


def _train(*overrides: str) -> str:
    """The override that sets the study's training overrides (quoted: they hold '=')."""
    return "study.train=[" + ",".join(f"'{o}'" for o in overrides) + "]"


def _study(*overrides: str):
    return parse_study(compose(["study=double_mnist_tiny", *overrides], "tune").study)


# --- the objective ------------------------------------------------------------------------

@pytest.mark.parametrize("metric", ["test/map@r", "test_final/recall@1", "best_on_test/map@r",
                                    "test_epoch/map@r"])
def test_a_test_metric_is_never_an_objective(make_cfg, metric):
    """Every way an objective reaches a tuner refuses a test metric: the training config
    (before it trains), the study file, and the value handed back."""
    cfg = make_cfg(f"objective={metric}")
    with pytest.raises(ConfigError, match=f"objective={metric} would tune on the test classes"):
        validate_config(cfg)
    with pytest.raises(ConfigError, match="would tune on the test classes"):
        _study(f"study.objective={metric}")
    with pytest.raises(ConfigError, match="would tune on the test classes"):
        objective_value(cfg, {f"best/{metric}": 0.9, metric: 0.9})


def test_objective_is_the_chosen_checkpoints_validation_metric(make_cfg):
    cfg = make_cfg()
    assert check_objective(cfg) == "val/map@r"
    metrics = {"best/val/map@r": 0.31, "test/map@r": 0.99, "test_final/map@r": 0.98}
    assert objective_value(cfg, metrics) == pytest.approx(0.31)
    # no validation classes: nothing (and the test metrics are not a fallback)
    assert objective_value(cfg, {"test/map@r": 0.99}) is None
    # the tuner's trial overrides carry the objective to the training config
    spec = _study()
    assert f"objective={spec.objective}" in trial_overrides(spec, {"optimizer.lr": 1e-3})


def test_train_main_returns_the_validation_objective(make_cfg):
    """What ``python -m see_dml.train`` hands an optimising sweeper: the chosen checkpoint's
    validation MAP@R (the run's best/val/map@r), not its test MAP@R."""
    from see_dml.train import main

    cfg = make_cfg("test_final=false", "callbacks.embedding_export=null")
    value = main.__wrapped__(cfg)  # the function hydra.main wraps, on the composed config
    metrics = json.loads((Path(cfg.paths.run_dir) / "metrics.json").read_text())
    assert value == pytest.approx(metrics["best/val/map@r"])
    assert value != pytest.approx(metrics["test/map@r"])


def test_objective_must_be_the_checkpoint_monitor(make_cfg):
    with pytest.raises(ConfigError, match="objective=val/recall@1 but the checkpoint is chosen"):
        validate_config(make_cfg("objective=val/recall@1"))
    validate_config(make_cfg("objective=val/recall@1",
                             "callbacks.model_checkpoint.monitor=val/recall@1"))
    with pytest.raises(ConfigError, match="must name a validation metric"):
        validate_config(make_cfg("objective=train/loss"))


def test_tuning_without_validation_classes_is_one_line():
    """MNIST with dataset.val_fraction=0 has no validation classes: no study."""
    spec = _study(_train("dataset=mnist", "dataset.val_fraction=0"))
    with pytest.raises(ConfigError) as err:
        check_space(spec)
    assert NO_VALIDATION_CLASSES in str(err.value)


# --- the space ------------------------------------------------------------------------------

@pytest.mark.parametrize(("override", "message"), [
    ("+study.space.optimizer.lrx={type:float,low:1,high:2}",
     "study.space.optimizer.lrx is not a key of the training config"),
    ("study.space.optimizer.lr.low=0.1", "study.space.optimizer.lr: low=0.1 must be below "
                                         "high=0.01"),
    ("study.space.optimizer.lr.low=0", "study.space.optimizer.lr: a log scale needs low > 0"),
    ("study.space.optimizer.lr.type=beta",
     "study.space.optimizer.lr.type='beta' is not a known distribution"),
    ("study.space.loss.lr_multiplier.choices=[]", "choices must be a non-empty list"),
    ("study.n_trials=0", "study.n_trials must be a positive integer"),
    ("study.sampler.name=grid", "study.sampler.name must be one of tpe, random"),
])
def test_bad_space_is_one_line(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        check_space(_study(override), check_data=False)


def test_space_is_checked_at_its_ends(tmp_path):
    """A range whose end cannot train (SEE's points beyond the embedding's room) is named
    before any training, with the setting that fails."""
    spec = _study(_train("see.enabled=true", "model.embed_dim=16"),
                  "+study.space.see.n_points={type:int,low:2,high:20}")
    with pytest.raises(ConfigError, match=r"see.n_points=20: see.n_points=20 needs "
                                         r"model.embed_dim >= n_points \+ 2 = 22"):
        check_space(spec, check_data=False)


def _tune(tmp_path: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "see_dml.tune", *args], capture_output=True,
                          text=True, timeout=timeout, env=_env(), cwd=tmp_path)


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(TESTS), str(SRC), os.environ.get("PYTHONPATH"))
                           if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def test_bad_space_fails_before_training_with_exit_2(tmp_path):
    proc = _tune(tmp_path, "study=double_mnist_tiny", f"paths.output_dir={tmp_path / 'out'}",
                 "study.space.optimizer.lr.high=1e-5", timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    # (other lines: warnings of Hydra's plugin discovery, whatever the environment holds)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: study.space.optimizer.lr: low=0.0001 must be below high=1e-05"]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "tune").exists()  # nothing trained, nothing left behind


# --- the tiny study ----------------------------------------------------------------------

def _rows(study_dir: Path) -> list[dict[str, str]]:
    with (study_dir / "trials.csv").open() as f:
        return list(csv.DictReader(f))


def _tiny(tmp_path: Path, *extra: str) -> list[str]:
    return ["study=double_mnist_tiny", f"paths.output_dir={tmp_path / 'out'}",
            f"paths.cache_dir={tmp_path / 'cache'}", *extra]


@pytest.mark.slow  # 2 trials of a seconds-long training, each its own process: ~40 s
def test_tiny_study_runs_and_summarises(tmp_path):
    proc = _tune(tmp_path, *_tiny(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    study_dir = tmp_path / "out" / "tune" / "double_mnist_tiny"
    rows = _rows(study_dir)
    assert [r["state"] for r in rows] == ["COMPLETE", "COMPLETE"]
    for row in rows:  # each trial a normal run directory; its objective its val metric
        metrics = json.loads((Path(row["trial_dir"]) / "metrics.json").read_text())
        assert float(row["val/map@r"]) == pytest.approx(metrics["best/val/map@r"])
        assert float(row["val/map@r"]) != pytest.approx(metrics["test/map@r"])
    best = OmegaConf.load(study_dir / "best.yaml")
    assert best.value == pytest.approx(max(float(r["val/map@r"]) for r in rows))
    assert f"optimizer.lr={best.params['optimizer.lr']!r}" in best.overrides
    assert (study_dir / "history.png").stat().st_size > 0
    assert "best trial" in proc.stdout
    again = _tune(tmp_path, *_tiny(tmp_path))  # a finished study: nothing more to train
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(_rows(study_dir)) == 2
    summary = _tune(tmp_path, *_tiny(tmp_path), "summary_only=true", "study.n_trials=5")
    assert summary.returncode == 0, summary.stderr[-3000:]
    assert "2 of 5 trials finished" in summary.stdout and len(_rows(study_dir)) == 2


@pytest.mark.slow  # a killed 3-epoch trial, resumed, then a second trial: ~60 s each
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_killed_study_resumes_to_the_same_trial_count(tmp_path, signum):
    """Kill the tuner in its first trial's second epoch (SIGKILL, or a scheduler's SIGTERM):
    the training stops with it; the same command again marks that trial failed
    (interrupted), re-runs its parameters resuming its run directory, and ends with n_trials
    finished trials."""
    args = _tiny(tmp_path, _train("trainer.max_epochs=3", "+trainer.limit_train_batches=3",
                                  "trainer.enable_progress_bar=false", "data.batch_size=32",
                                  "data.m_per_class=4", "model.embed_dim=16",
                                  "dataset.images_per_class=20",
                                  "callbacks.embedding_export=null", "test_final=false"))
    tuner = subprocess.Popen([sys.executable, "-m", "see_dml.tune", *args], env=_env(),
                             cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = tmp_path / "out" / "tune" / "double_mnist_tiny" / "trials" / "0000"
    deadline = time.time() + 300
    while not (first / "checkpoints" / "last.ckpt").exists():  # epoch 1 of 3 written
        assert tuner.poll() is None and time.time() < deadline, "the first trial never saved"
        time.sleep(0.2)
    tuner.send_signal(signum)
    status = tuner.wait(timeout=120)
    assert status == (-signal.SIGKILL if signum == signal.SIGKILL else 143)
    deadline = time.time() + 60  # the training follows its tuner (and frees its directory)
    while (first / ".see_dml.lock.holder").exists() and time.time() < deadline:
        time.sleep(0.2)
    assert not (first / "metrics.json").exists()

    proc = _tune(tmp_path, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _rows(tmp_path / "out" / "tune" / "double_mnist_tiny")
    assert [r["state"] for r in rows] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert rows[0]["note"] == "interrupted"
    assert rows[1]["note"] == "re-runs trial 0"
    assert rows[1]["trial_dir"] == rows[0]["trial_dir"] == str(first)
    assert rows[1]["optimizer.lr"] == rows[0]["optimizer.lr"]
    commands = [line for line in (first / "output.log").read_text().splitlines()
                if line.startswith("# ")]
    assert "hydra.run.dir=" in commands[0] and f"resume={first}" in commands[1]
    assert json.loads((first / "metrics.json").read_text())["epochs"] == 3


@pytest.mark.slow  # two submitit jobs, each a worker with one trial: ~60 s
def test_tiny_study_under_the_submitit_local_launcher(tmp_path):
    """Two workers, two submitit jobs, one journal: the study ends with its 2 trials, one
    each."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    proc = _tune(tmp_path, "-m", *_tiny(tmp_path), "hydra/launcher=submitit_local",
                 "worker=0,1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    study_dir = tmp_path / "out" / "tune" / "double_mnist_tiny"
    rows = _rows(study_dir)
    assert [r["state"] for r in rows] == ["COMPLETE", "COMPLETE"]
    assert (study_dir / "best.yaml").is_file()
    assert sorted(p.name for p in (study_dir / "workers").iterdir()) == ["0", "1"]


@pytest.mark.slow  # one trial of 2 folds: ~40 s
def test_kfold_study_objective_is_the_mean_of_its_folds(tmp_path):
    proc = _tune(tmp_path, *_tiny(tmp_path, "study.folds=2", "study.n_trials=1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = _rows(tmp_path / "out" / "tune" / "double_mnist_tiny")
    folds = []
    for i in range(2):
        run = Path(row["trial_dir"]) / f"fold{i}"
        cfg = OmegaConf.load(run / "config.yaml")
        assert (cfg.dataset.folds, cfg.dataset.fold, cfg.dataset.val_fraction) == (2, i, 0.0)
        folds.append(json.loads((run / "metrics.json").read_text())["best/val/map@r"])
        assert float(row[f"fold{i}"]) == pytest.approx(folds[-1])
    assert float(row["val/map@r"]) == pytest.approx(sum(folds) / 2)

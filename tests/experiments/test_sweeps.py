"""Sweeps: every experiment file composes, a local multirun runs, the table script reads it,
and a preempted submitit job (the SLURM path) is requeued and resumes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from see_dml.runtime.config import CONFIG_DIR, compose
from see_dml.runtime.errors import ConfigError
from see_dml.training.config_checks import validate_config

REPO = Path(__file__).resolve().parents[2]
#: every experiment, paper/ included; recipe/ holds the parts experiments are built from
EXPERIMENTS = sorted(
    p.relative_to(CONFIG_DIR / "experiment").with_suffix("").as_posix()
    for p in (CONFIG_DIR / "experiment").rglob("*.yaml")
    if p.relative_to(CONFIG_DIR / "experiment").parts[0] != "recipe")


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_and_validates(make_cfg, name):
    cfg = make_cfg(f"experiment={name}", fast=False)
    assert cfg.task_name != "train"  # an experiment writes to its own folder
    if cfg.get("sweep_only"):  # a paper table: its jobs are checked in test_paper.py
        with pytest.raises(ConfigError, match="only lists a sweep"):
            validate_config(cfg)
        return
    validate_config(cfg)


def test_slurm_launcher_config_resolves():
    cfg = compose(["hydra/launcher=slurm", "trainer=ddp", "trainer.num_nodes=2"], hydra=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.nodes == 2
    assert launcher.tasks_per_node == launcher.gpus_per_node
    assert launcher.max_num_timeout > 0


def test_gpus_per_node_follows_trainer_devices(monkeypatch):
    from see_dml.runtime.config import gpus_per_node

    assert (gpus_per_node(2), gpus_per_node([0, 1, 2]), gpus_per_node("4")) == (2, 3, 4)
    monkeypatch.delenv("SEE_DML_GPUS_PER_NODE", raising=False)
    assert gpus_per_node(-1) == gpus_per_node("auto") == 1  # "all": one unless told
    monkeypatch.setenv("SEE_DML_GPUS_PER_NODE", "8")
    assert gpus_per_node(-1) == 8


@pytest.mark.slow  # a subprocess multirun of two trainings: ~140 s on 2 cores
def test_local_multirun_and_table(tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "see_dml.train", "-m", "dataset=mnist", "data.batch_size=16",
           "see.enabled=false,true", "see.p_min=0.3", "see.n_points=4", "model.embed_dim=8",
           "trainer.max_epochs=1", "+trainer.limit_train_batches=2",
           "trainer.enable_progress_bar=false", f"hydra.sweep.dir={sweep}",
           f"paths.cache_dir={tmp_path / 'cache'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(p.parent for p in sweep.rglob("metrics.json"))
    assert len(runs) == 2 and runs[0] != runs[1]
    # the sweep ends by listing its run directories (RunDirectories, conf/hydra)
    tail = proc.stdout.strip().splitlines()[-3:]
    assert tail[-1] == f"Sweep directory: {sweep.resolve()}"
    assert [line.split()[0] for line in tail[:2]] == [str(r.resolve()) for r in runs]
    table = subprocess.run([sys.executable, str(REPO / "experiments" / "make_table.py"),
                            str(sweep)], capture_output=True, text=True, timeout=120)
    assert table.returncode == 0, table.stderr
    lines = [line for line in table.stdout.splitlines() if line.startswith("| MNIST")]
    assert len(lines) == 2
    assert {"SEE", "none"} == {line.split("|")[5].strip() for line in lines}
    for name in ("results.md", "results.csv", "results.png"):
        assert (sweep / name).stat().st_size > 0


@pytest.mark.slow  # a submitit job process trained, preempted and requeued: ~60 s
def test_preempted_submitit_job_is_requeued_and_resumes(tmp_path):
    """The SLURM path without SLURM: hydra-submitit's local launcher runs the job in its own
    process; SIGUSR2 (SLURM's preemption notice) makes submitit requeue it; the requeued
    attempt runs in the same run directory and resumes from last.ckpt (ckpt_path=auto)."""
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "see_dml.train", "-m", "hydra/launcher=submitit_local",
           "trainer.max_epochs=3", "+trainer.limit_train_batches=4", "data.batch_size=32",
           "model.embed_dim=16", "dataset.images_per_class=20", "callbacks.embedding_export=null",
           "test_final=false", "trainer.enable_progress_bar=false", f"hydra.sweep.dir={sweep}",
           f"paths.cache_dir={tmp_path / 'cache'}",
           "+callbacks.preempt._target_=helpers.preemption.PreemptOnce",
           f"+callbacks.preempt.marker={tmp_path / 'preempted'}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "preempted").exists()  # the first attempt was preempted in epoch 1
    logs = "".join(f.read_text() for f in (sweep / ".submitit").rglob("*_log.*"))
    assert "Requeued job" in logs
    last = sweep / "0" / "checkpoints" / "last.ckpt"
    assert f"Restoring states from the checkpoint path at {last}" in logs  # resumed, not anew
    assert json.loads((sweep / "0" / "metrics.json").read_text())["epochs"] == 3
    # the job printed into its own log; the sweep's terminal still gets the run directory
    tail = proc.stdout.strip().splitlines()[-2:]
    assert tail[0].startswith(f"{(sweep / '0').resolve()}  R@1 ")
    assert tail[1] == f"Sweep directory: {sweep.resolve()}"


def test_sweep_summary_names_every_job_and_its_numbers(tmp_path, monkeypatch):
    from see_dml.runtime import hydra_hooks as hydra_callbacks
    from see_dml.runtime.hydra_hooks import (
        FAILURE_FILE,
        read_failure,
        record_failed_job,
        sweep_summary,
    )

    monkeypatch.setattr(hydra_callbacks, "_FAILED_JOBS", {})  # this test's records only

    for job, metrics in (("0", {"test/recall@1": 0.5, "test/map@r": 0.25}), ("1", None),
                         ("2", None), ("10", {"test/recall@1": 1.0, "test/map@r": 0.125})):
        (tmp_path / job).mkdir()
        if metrics:
            (tmp_path / job / "metrics.json").write_text(json.dumps(metrics))
    (tmp_path / ".submitit").mkdir()  # not a job
    # job 2 failed in a process of its own (submitit): only its file says so
    (tmp_path / "2" / FAILURE_FILE).write_text(json.dumps({"error": "data.batch_size: -4",
                                                           "user_error": True}))
    lines = sweep_summary(tmp_path)
    assert lines == [f"{tmp_path / '0'}  R@1 50.00, MAP@R 25.00",
                     f"{tmp_path / '1'}  no metrics.json: failed or still running "
                     "(its log says which)",
                     f"{tmp_path / '2'}  failed: data.batch_size: -4",
                     f"{tmp_path / '10'}  R@1 100.00, MAP@R 12.50",
                     f"Sweep directory: {tmp_path}"]
    # a record in a directory that is another run's stays in this process's memory
    record_failed_job(tmp_path / "1", "run directory locked", user_error=True, write=False)
    assert not (tmp_path / "1" / FAILURE_FILE).exists()
    assert read_failure(tmp_path / "1") == ("run directory locked", True)
    assert read_failure(tmp_path / "0") is None


def test_table_script_rejects_an_empty_folder(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "experiments" / "make_table.py"),
                           str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "no finished runs" in proc.stderr

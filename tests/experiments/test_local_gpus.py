"""hydra/launcher=local_gpus: a local sweep that runs one job per free GPU set, checked on the
CPU with stand-in device ids (the jobs only record the CUDA_VISIBLE_DEVICES they were given)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from see_dml.runtime.config import compose
from see_dml.runtime.errors import ConfigError
from see_dml.runtime.local_gpus import gpu_sets

REPO = Path(__file__).resolve().parents[2]


def test_gpu_sets_are_disjoint_runs_of_gpus_per_job(monkeypatch):
    assert gpu_sets("0,1,2,3", 2) == [("0", "1"), ("2", "3")]
    assert gpu_sets([0, 1, 2], 1) == [("0",), ("1",), ("2",)]
    assert gpu_sets([0, 1, 2, 3, 4, 5], 4) == [("0", "1", "2", "3")]  # 4 and 5 left over
    assert gpu_sets(7, 1) == [("7",)]
    assert gpu_sets("GPU-aa, GPU-bb", 1) == [("GPU-aa",), ("GPU-bb",)]  # UUIDs kept as given
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert gpu_sets(None, 1) == [("3",), ("5",)]  # the default: what this process may use
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(ConfigError, match=r"found no GPU \(CUDA_VISIBLE_DEVICES"):
        gpu_sets(None, 1)
    with pytest.raises(ConfigError, match="hydra.launcher.gpus_per_job=4"):
        gpu_sets("0,1", 4)
    with pytest.raises(ConfigError, match="names a GPU twice"):
        gpu_sets("0,1,1", 1)
    with pytest.raises(ConfigError, match="hydra.launcher.gpus_per_job=0"):
        gpu_sets("0,1", 0)


def test_local_gpus_launcher_config_is_a_hydra_launcher():
    from hydra.core.plugins import Plugins

    from see_dml.runtime.local_gpus import LocalGPUsLauncher

    cfg = compose(["hydra/launcher=local_gpus", "hydra.launcher.gpus_per_job=2",
                   "hydra.launcher.devices=[0,1,2,3]"], hydra=True)
    # what Hydra does with hydra.launcher (plugins only from the hydra_plugins namespace)
    launcher = Plugins.instance()._instantiate(cfg.hydra.launcher)
    assert isinstance(launcher, LocalGPUsLauncher)
    assert launcher.gpus_per_job == 2 and launcher.devices == [0, 1, 2, 3]
    assert launcher.max_num_timeout > 0  # a preempted job is requeued, as under SLURM
    assert cfg.hydra.launcher.submitit_folder.endswith("/.submitit/%j")


def _sweep(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict[int, dict]]:
    """A multirun of the stand-in job (``tests/helpers/gpu_probe_app.py``) under
    ``hydra/launcher=local_gpus``; returns the process and each job's record."""
    probe = tmp_path / "probe"
    cmd = [sys.executable, "-m", "helpers.gpu_probe_app", "-m", "hydra/launcher=local_gpus",
           f"hydra.sweep.dir={tmp_path / 'sweep'}", f"paths.output_dir={tmp_path / 'out'}",
           f"+probe.dir={probe}", *args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    records = {int(p.stem): json.loads(p.read_text()) for p in probe.glob("*.json")}
    started = {int(p.stem): json.loads(p.read_text()) for p in probe.glob("*.start")}
    return proc, {**started, **records}


def _check_sets_and_concurrency(records: dict[int, dict], sets: list[str]) -> int:
    """Every job ran on one of ``sets``; jobs that ran at the same time had disjoint GPUs and
    were never more than the sets. Returns the most jobs seen running at once."""
    finished = {n: r for n, r in records.items() if "end" in r}
    for r in records.values():
        assert r["cuda_visible_devices"] in sets, r
    most = 0
    for n, r in finished.items():
        at_once = [m for m, s in finished.items() if s["start"] <= r["start"] < s["end"]]
        most = max(most, len(at_once))
        gpus = [set(finished[m]["cuda_visible_devices"].split(",")) for m in at_once]
        assert sum(len(g) for g in gpus) == len(set().union(*gpus)), (n, at_once)
    assert most <= len(sets)
    return most


@pytest.mark.slow  # five job processes, two at a time: ~25 s
def test_local_gpus_sweep_gives_each_running_job_its_own_gpu_set(tmp_path):
    # 4 stand-in GPUs, 2 per job: 2 sets. Jobs 0 and 1 wait until both have started (they
    # end only if the launcher runs them at once); seed 3 fails as a training's user error
    # does, seed 4's process is killed and leaves no result
    proc, records = _sweep(tmp_path, "seed=0,1,2,3,4", "hydra.launcher.devices=[0,1,2,3]",
                           "hydra.launcher.gpus_per_job=2", "+probe.together=2",
                           "+probe.fail_seed=3", "+probe.kill_seed=4")
    assert sorted(records) == [0, 1, 2, 3, 4], proc.stderr[-3000:]
    assert _check_sets_and_concurrency(records, ["0,1", "2,3"]) == 2
    assert records[0]["waited_for_all"] and records[1]["waited_for_all"]
    assert {records[0]["cuda_visible_devices"], records[1]["cuda_visible_devices"]} == {
        "0,1", "2,3"}
    assert "end" not in records[4]  # killed
    # the sweep's end, as any sweep's: every run directory listed, each failed job with its
    # error, one error line each, status 1 (job 4's failure is not the user's)
    sweep = (tmp_path / "sweep").resolve()
    assert proc.returncode == 1, proc.stderr[-3000:]
    listed = proc.stdout.strip().splitlines()[-6:]
    assert [line.split()[0] for line in listed[:5]] == [str(sweep / str(n)) for n in range(5)]
    assert listed[3] == f"{sweep / '3'}  failed: seed 3 fails here"
    assert listed[4].startswith(f"{sweep / '4'}  failed: the job's process ended without a "
                                "result (killed, or crashed); its log: ")
    assert listed[5] == f"Sweep directory: {sweep}"
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors[0] == "error: job 3 of the sweep failed: seed 3 fails here"
    assert errors[1].startswith("error: job 4 of the sweep failed: the job's process ended")
    assert len(errors) == 2
    assert json.loads((sweep / "4" / "failed.json").read_text())["user_error"] is False


@pytest.mark.slow  # four job processes, three at a time: ~10 s
def test_local_gpus_sweep_one_gpu_per_job(tmp_path):
    proc, records = _sweep(tmp_path, "seed=0,1,2,3", "hydra.launcher.devices='0,1,2'",
                           "+probe.together=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(records) == [0, 1, 2, 3]
    assert _check_sets_and_concurrency(records, ["0", "1", "2"]) == 3
    assert all(records[n]["waited_for_all"] for n in (0, 1, 2))


def test_local_gpus_without_gpus_is_one_error_line(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": os.pathsep.join(
        [str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "helpers.gpu_probe_app", "-m", "hydra/launcher=local_gpus",
         "seed=0,1", f"hydra.sweep.dir={tmp_path / 'sweep'}", f"+probe.dir={tmp_path}"],
        capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: hydra/launcher=local_gpus found no GPU (CUDA_VISIBLE_DEVICES / "
        "torch.cuda.device_count()): give hydra.launcher.devices=[0,1,...], or use the "
        "default launcher on a machine without GPUs")
    assert not list(tmp_path.glob("*.start"))  # no job started

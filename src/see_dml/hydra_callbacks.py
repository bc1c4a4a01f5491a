"""Hydra callbacks: what a sweep prints when it ends, whichever launcher ran its jobs.

Under the submitit launchers (SLURM, ``submitit_local``) each job prints into its own log
file, so the terminal that started the sweep saw no results and no run directories.
:class:`RunDirectories` lists them at the end of every multirun, with each run's numbers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


def sweep_summary(sweep_dir: str | Path) -> list[str]:
    """One line per job directory of a sweep (``<sweep>/<n>``, in job order): its test R@1
    and MAP@R (validation-selected checkpoint), or why there are none; then the sweep."""
    sweep = Path(sweep_dir)
    jobs = sorted((p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()),
                  key=lambda p: int(p.name)) if sweep.is_dir() else []
    lines = []
    for job in jobs:
        metrics_file = job / "metrics.json"
        if metrics_file.exists():
            metrics = json.loads(metrics_file.read_text())
            numbers = ", ".join(f"{name} {100 * metrics[key]:.2f}" for key, name in
                                (("test/recall@1", "R@1"), ("test/map@r", "MAP@R"))
                                if isinstance(metrics.get(key), (int, float)))
            lines.append(f"{job.resolve()}  {numbers or 'finished'}")
        else:
            lines.append(f"{job.resolve()}  no metrics.json: failed or still running "
                         "(its log says which)")
    lines.append(f"Sweep directory: {sweep.resolve()}")
    return lines


class RunDirectoryInUse(Callback):
    """Refuse a run whose ``hydra.run.dir`` another live run holds (see
    :mod:`see_dml.rundir`) before Hydra writes its ``.hydra`` files over that run's: one
    ``error:`` line, status 2. The run's own lock, taken in ``train``, closes the race."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        import sys

        from omegaconf import OmegaConf

        from see_dml.rundir import held_by_another, is_rank_zero

        # DDP's other ranks start in the directory their rank zero holds
        if OmegaConf.select(config, "task_name") != "train" or not is_rank_zero():
            return
        try:
            run_dir = OmegaConf.select(config, "hydra.run.dir")
        except Exception:  # noqa: BLE001 - an unresolvable dir is Hydra's to report
            return
        message = held_by_another(run_dir) if run_dir else None
        if message:
            print(f"error: {message}", file=sys.stderr)
            sys.exit(2)


class RunDirectories(Callback):
    """Print every job's run directory and numbers when a multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        print("\n" + "\n".join(sweep_summary(config.hydra.sweep.dir)), flush=True)

"""Hydra callbacks: what a sweep prints when it ends, whichever launcher ran its jobs.

Under the submitit launchers (SLURM, ``submitit_local``) each job prints into its own log
file, so the terminal that started the sweep saw no results and no run directories.
:class:`RunDirectories` lists them at the end of every multirun, with each run's numbers.

A job of a sweep of Hydra's basic sweeper that fails is recorded (:func:`record_failed_job`)
instead of raising: the sweeper would end the sweep with the first failure's traceback, and
no list. The record is a file in the job's run directory, so it reaches the sweep's process
whether the job ran in it (the basic launcher) or in a process of its own (submitit,
SLURM). The sweep then ends with the list (each failed job with its error), one ``error:``
line per failed job and a non-zero status (2 when every failure is the user's).
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

#: the file a failed job of a sweep leaves in its run directory: ``{"error": its one error
#: line, "user_error": of the user's making}``; a job that starts again removes it (train)
FAILURE_FILE = "failed.json"

#: The failed jobs of this process: ``{resolved run dir: (error line, the user's error)}``,
#: for a job whose run directory could not take :data:`FAILURE_FILE`.
_FAILED_JOBS: dict[str, tuple[str, bool]] = {}


def record_failed_job(run_dir: str | Path, line: str, user_error: bool,
                      write: bool = True) -> None:
    """Note that the job of ``run_dir`` failed with ``line`` (one line; ``user_error``: of the
    user's making): :class:`RunDirectories` lists it and ends the sweep with it. The record
    goes to the run directory's :data:`FAILURE_FILE` (``write``: False for a directory that
    is another run's), which reaches the sweep's process from a job process of its own
    (submitit, SLURM), and to this process's memory."""
    _FAILED_JOBS[str(Path(run_dir).resolve())] = (line, user_error)
    if write:
        # an OSError: the run directory itself is what failed, and the job's log says so
        with contextlib.suppress(OSError):
            Path(run_dir, FAILURE_FILE).write_text(
                json.dumps({"error": line, "user_error": user_error}) + "\n")


def read_failure(job: Path) -> tuple[str, bool] | None:
    """``(error line, user's error)`` of the job whose run directory is ``job``, if it failed
    (its :data:`FAILURE_FILE`, or this process's record); None otherwise."""
    if str(job.resolve()) in _FAILED_JOBS:
        return _FAILED_JOBS[str(job.resolve())]
    try:
        record = json.loads((job / FAILURE_FILE).read_text())
        return str(record["error"]), bool(record["user_error"])
    except (OSError, ValueError, KeyError, TypeError):  # none, or not one of ours
        return None


def _job_dirs(sweep: Path) -> list[Path]:
    return sorted((p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()),
                  key=lambda p: int(p.name)) if sweep.is_dir() else []


def failed_jobs(sweep_dir: str | Path) -> dict[Path, tuple[str, bool]]:
    """``{job dir: (error line, user's error)}`` of the sweep's jobs that failed
    (:func:`read_failure`), in job order."""
    return {job: failure for job in _job_dirs(Path(sweep_dir))
            if (failure := read_failure(job)) is not None}


def sweep_summary(sweep_dir: str | Path,
                  failed: Mapping[Path, tuple[str, bool]] | None = None) -> list[str]:
    """One line per job directory of a sweep (``<sweep>/<n>``, in job order): its test R@1
    and MAP@R (validation-selected checkpoint), or why there are none (the error line of a
    job that failed); then the sweep. ``failed``: :func:`failed_jobs` of the sweep, when the
    caller has it already."""
    sweep = Path(sweep_dir)
    if failed is None:
        failed = failed_jobs(sweep)
    lines = []
    for job in _job_dirs(sweep):
        metrics_file = job / "metrics.json"
        failure = failed.get(job)
        if failure is not None:
            lines.append(f"{job.resolve()}  failed: {failure[0]}")
        elif metrics_file.exists():
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
    """Take the run directory's lock (:func:`see_dml.runtime.lock.hold_run_dir`) at the start of a
    training run, before Hydra writes its ``.hydra`` files (``config.yaml``, ``hydra.yaml``,
    ``overrides.yaml``) there; a run whose ``hydra.run.dir`` another live run holds is
    refused with one ``error:`` line, status 2, having written nothing there. Holding the
    lock from here on (``train`` holds on to it) leaves no window in which a second run
    passes this check before the first holds the directory."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from omegaconf import OmegaConf

        from see_dml.runtime.errors import USER_ERROR_STATUS, RunDirectoryLockedError
        from see_dml.runtime.lock import hold_run_dir, is_rank_zero

        # DDP's other ranks start in the directory their rank zero holds
        if OmegaConf.select(config, "task_name") != "train" or not is_rank_zero():
            return
        try:
            run_dir = OmegaConf.select(config, "hydra.run.dir")
            resume = OmegaConf.select(config, "resume", default=None)
        except Exception:  # noqa: BLE001 - an unresolvable dir is Hydra's to report
            return
        if not run_dir:
            return
        path = Path(str(run_dir)).expanduser()
        if resume is not None and not ((path / "config.yaml").is_file()
                                       or (path / "checkpoints").is_dir()):
            return  # not a run directory: train refuses it, and leaves no lock in it
        try:
            hold_run_dir(path)
        except RunDirectoryLockedError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(USER_ERROR_STATUS)
        except OSError:  # cannot be made or written: RunDirectoryCreatable says so
            return


class RunDirectoryCreatable(Callback):
    """Refuse a run (or a sweep) whose directory cannot be created or written
    (``paths.output_dir=/proc/x``, a read-only disk) with one ``error:`` line naming the
    place and the key to change, status 2: Hydra would make it just after this, and its
    ``mkdir`` failed with a traceback. Every tool's config that has a run directory
    (``hydra: default``) gets this."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from see_dml.runtime.lock import is_rank_zero

        if is_rank_zero():  # DDP's other ranks write nothing there (train): not theirs to probe
            self._check(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.sweep.dir")

    @staticmethod
    def _check(config: DictConfig, dir_key: str) -> None:
        import os
        import tempfile

        from omegaconf import OmegaConf

        from see_dml.runtime.errors import USER_ERROR_STATUS

        try:
            where = OmegaConf.select(config, dir_key)
        except Exception:  # noqa: BLE001 - an unresolvable dir is Hydra's to report
            return
        if not where:
            return
        path = Path(str(where)).expanduser()
        existed = path.is_dir()
        try:
            path.mkdir(parents=True, exist_ok=True)  # what Hydra does next
            fd, probe = tempfile.mkstemp(dir=path, prefix=".write_probe")
        except OSError as err:
            if not existed and path.is_dir():  # made here, but not writable: not ours to keep
                path.rmdir()
            key, value = _key_of(config, path, dir_key)
            print(f"error: cannot create or write the {'sweep' if 'sweep' in dir_key else 'run'}"
                  f" directory '{path}' ({err.strerror or err}: '{err.filename or path}'): "
                  f"give {key} a folder that can be created and written (now '{value}')",
                  file=sys.stderr)
            sys.exit(USER_ERROR_STATUS)
        os.close(fd)
        os.unlink(probe)


def _key_of(config: DictConfig, path: Path, dir_key: str) -> tuple[str, str]:
    """The key the user would change to move ``path``, and its value: ``resume`` or
    ``paths.output_dir`` when ``path`` lies under it, else ``dir_key`` itself."""
    from omegaconf import OmegaConf

    target = path.absolute()
    for key in ("resume", "paths.output_dir"):
        value = OmegaConf.select(config, key, default=None)
        if value and target.is_relative_to(Path(str(value)).expanduser().absolute()):
            return key, str(value)
    return dir_key, str(path)


class RunDirectories(Callback):
    """Print every job's run directory and numbers when a multirun ends; end a local sweep
    whose jobs failed with their errors and a non-zero status (see the module docstring)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from see_dml.runtime.errors import USER_ERROR_STATUS

        sweep = Path(config.hydra.sweep.dir)
        failed = failed_jobs(sweep)
        print("\n" + "\n".join(sweep_summary(sweep, failed)), flush=True)
        _FAILED_JOBS.clear()
        if not failed:
            return
        for job, (line, _) in failed.items():
            print(f"error: job {job.name} of the sweep failed: {line}", file=sys.stderr)
        sys.exit(USER_ERROR_STATUS if all(user for _, user in failed.values()) else 1)

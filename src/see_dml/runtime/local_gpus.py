"""A local sweep that runs one job per free GPU set: ``hydra/launcher=local_gpus``.

``python -m see_dml.train -m ... hydra/launcher=local_gpus`` on an 8-GPU workstation runs
eight sweep points at once, one GPU each (``hydra.launcher.gpus_per_job=4``: two at once,
four GPUs each). The GPUs (``hydra.launcher.devices``, by default those of
``CUDA_VISIBLE_DEVICES``, else every GPU torch sees) are cut into disjoint sets of
``gpus_per_job``; a job starts when a set is free, in a process of its own whose
``CUDA_VISIBLE_DEVICES`` is that set, and gives the set back when it ends. At most as many
jobs run as there are sets.

What the ready launchers lack: submitit's local executor (``hydra/launcher=submitit_local``)
starts every job at once and gives each the same first GPUs (``visible_gpus[:gpus_per_node]``),
and Hydra's joblib launcher runs jobs in parallel in reused worker processes without
assigning any GPU (a worker that initialised CUDA keeps its devices for its next job). This
module adds only the pool of GPU sets and the loop that starts a job when a set is free; each
job is still submitit's local job (its own process and log files under
``<sweep>/.submitit/<id>/``, the same job function as ``submitit_local``, its requeue on a
preemption signal on the same GPU set), so the sweep's run directories, its failed jobs'
``failed.json`` and its end (:mod:`see_dml.runtime.hydra_hooks`) are those of any sweep. A job
whose process died without a result (killed, out of memory) is recorded as failed with the
path of its log, instead of ending the sweep with a traceback before the list.

Needs the ``slurm`` extra (submitit); this module imports nothing heavy until it launches.
"""

from __future__ import annotations

import copy
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from see_dml.runtime.errors import USER_ERROR_STATUS, ConfigError

log = logging.getLogger(__name__)

#: how often the launcher looks for a finished job (seconds)
POLL_S = 0.2


def visible_devices() -> list[str]:
    """The GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` when it is set (ids, UUIDs or
    MIG names, as given), else ``0 .. torch.cuda.device_count() - 1``."""
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [d.strip() for d in given.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def gpu_sets(devices: str | int | Sequence[str | int] | None,
             gpus_per_job: int) -> list[tuple[str, ...]]:
    """The disjoint GPU sets of ``gpus_per_job`` devices each, in order, cut from ``devices``
    (``"0,1,2,3"``, ``[0, 1, 2, 3]``; None: :func:`visible_devices`). Devices left over (6
    GPUs, 4 per job) are not used. :class:`ConfigError` naming the key when no set can be
    made or a device is given twice."""
    if not isinstance(gpus_per_job, int) or isinstance(gpus_per_job, bool) or gpus_per_job < 1:
        raise ConfigError(f"hydra.launcher.gpus_per_job={gpus_per_job!r}: give a whole number "
                          "of GPUs per job, 1 or more")
    if devices is None:
        found, where = visible_devices(), "CUDA_VISIBLE_DEVICES / torch.cuda.device_count()"
    else:
        items = devices.split(",") if isinstance(devices, str) else (
            [devices] if isinstance(devices, int) else list(devices))
        found, where = [str(d).strip() for d in items if str(d).strip()], "hydra.launcher.devices"
    if len(set(found)) != len(found):
        raise ConfigError(f"{where} names a GPU twice ({','.join(found)}): give each once")
    if not found:
        raise ConfigError(
            f"hydra/launcher=local_gpus found no GPU ({where}): give "
            "hydra.launcher.devices=[0,1,...], or use the default launcher on a machine "
            "without GPUs")
    if len(found) < gpus_per_job:
        raise ConfigError(
            f"hydra/launcher=local_gpus: {len(found)} GPU(s) ({where}: "
            f"'{','.join(found)}') but hydra.launcher.gpus_per_job={gpus_per_job}: give "
            "hydra.launcher.devices=[0,1,...] or fewer GPUs per job")
    return [tuple(found[i:i + gpus_per_job])
            for i in range(0, len(found) - gpus_per_job + 1, gpus_per_job)]


class LocalGPUsLauncher(Launcher):
    """Hydra launcher: submitit's local jobs, each on a free GPU set of its own (see the
    module docstring). ``hydra_plugins.see_dml_launchers`` registers it with Hydra;
    ``conf/hydra/launcher/local_gpus.yaml`` configures it."""

    def __init__(self, gpus_per_job: int = 1, devices: Any = None,
                 submitit_folder: str = ".submitit/%j", timeout_min: float = 4320,
                 max_num_timeout: int = 3, signal_delay_s: int = 120,
                 stderr_to_stdout: bool = False, setup: Sequence[str] | None = None) -> None:
        self.gpus_per_job = gpus_per_job
        self.devices: Any = (OmegaConf.to_container(devices) if OmegaConf.is_config(devices)
                             else devices)
        self.submitit_folder = submitit_folder
        self.timeout_min = timeout_min
        self.max_num_timeout = max_num_timeout
        self.signal_delay_s = signal_delay_s
        self.stderr_to_stdout = stderr_to_stdout
        self.setup_commands = list(setup or [])
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def launch(self, job_overrides: Sequence[Sequence[str]],
               initial_job_idx: int) -> Sequence[JobReturn]:
        try:
            sets = gpu_sets(self.devices, self.gpus_per_job)
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(USER_ERROR_STATUS)
        from see_dml.runtime.extras import MissingExtraError, check

        try:
            check("slurm", "hydra/launcher=local_gpus")
        except MissingExtraError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(USER_ERROR_STATUS)
        return self._launch(job_overrides, initial_job_idx, sets)

    def _launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int,
                sets: list[tuple[str, ...]]) -> list[JobReturn]:
        from hydra.core.singleton import Singleton
        from hydra.core.utils import filter_overrides
        from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (  # type: ignore[import-untyped]
            LocalLauncher,
        )

        assert self.config is not None and self.hydra_context is not None
        assert self.task_function is not None
        # the job function of hydra/launcher=submitit_local: it composes the job's config
        # and runs it in the job's process, and asks for a requeue on a preemption signal
        job_function = LocalLauncher(submitit_folder=self.submitit_folder)
        job_function.setup(hydra_context=self.hydra_context, task_function=self.task_function,
                           config=self.config)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        executor = _executor(self.submitit_folder, self.max_num_timeout)
        executor.update_parameters(timeout_min=self.timeout_min, tasks_per_node=1,
                                   signal_delay_s=self.signal_delay_s,
                                   stderr_to_stdout=self.stderr_to_stdout,
                                   setup=self.setup_commands)
        log.info("local_gpus sweep output dir: %s; %d GPU set(s) of %d: %s", sweep_dir,
                 len(sets), self.gpus_per_job, " ".join(",".join(s) for s in sets))
        free = list(sets)
        running: dict[int, tuple[Any, tuple[str, ...]]] = {}  # job index: (job, its set)
        jobs: list[Any] = []
        try:
            for i, overrides in enumerate(job_overrides):
                idx = initial_job_idx + i
                while not free:
                    free.extend(_wait_for_one(running))
                gpus = free.pop(0)
                executor.cuda_devices = ",".join(gpus)
                log.info("\t#%d on GPU %s: %s", idx, executor.cuda_devices,
                         " ".join(filter_overrides(overrides)))
                job = executor.submit(job_function, list(overrides), "hydra.sweep.dir", idx,
                                      f"job_id_for_{idx}", Singleton.get_state())
                running[idx] = (job, gpus)
                jobs.append(job)
            while running:
                _wait_for_one(running)
        except KeyboardInterrupt:  # Ctrl-C: the running jobs stop with the sweep
            for job, _ in running.values():
                job.cancel(check=False)
            raise
        return [self._result(job, initial_job_idx + i, job_overrides[i])
                for i, job in enumerate(jobs)]

    def _result(self, job: Any, idx: int, overrides: Sequence[str]) -> JobReturn:
        """The job's :class:`JobReturn`; for a job whose process left none (killed), a
        failure record in its run directory and an empty return, so that the sweep goes on to
        its list (:class:`see_dml.runtime.hydra_hooks.RunDirectories`) and its non-zero end."""
        from submitit.core.utils import UncompletedJobError

        try:
            return job.results()[0]
        except UncompletedJobError as err:
            from see_dml.runtime.hydra_hooks import record_failed_job

            assert self.config is not None
            # the job's run directory as the sweep's list finds it (hydra.sweep.subdir of
            # this job's number); the job's own overrides cannot be resolved here
            placed = copy.deepcopy(self.config)
            with open_dict(placed):
                placed.hydra.job.num = idx
            run_dir = Path(str(self.config.hydra.sweep.dir)) / str(placed.hydra.sweep.subdir)
            run_dir.mkdir(parents=True, exist_ok=True)
            log.debug("job %d: %s", idx, err)
            record_failed_job(run_dir, "the job's process ended without a result (killed, "
                              f"or crashed); its log: {job.paths.stderr}", user_error=False)
            ret = JobReturn(overrides=list(overrides), working_dir=str(run_dir))
            ret.status, ret.return_value = JobStatus.COMPLETED, None
            return ret


def _wait_for_one(running: dict[int, tuple[Any, tuple[str, ...]]]) -> list[tuple[str, ...]]:
    """Wait until a job of ``running`` has ended; remove the ended ones and return their GPU
    sets. A requeued job (preempted) restarts inside its controller: it keeps its set."""
    while True:
        ended = [idx for idx, (job, _) in running.items() if job.done()]
        if ended:
            return [running.pop(idx)[1] for idx in ended]
        time.sleep(POLL_S)


def _executor(folder: str, max_num_timeout: int) -> Any:
    """A submitit ``LocalExecutor`` whose next job gets ``CUDA_VISIBLE_DEVICES`` =
    ``executor.cuda_devices`` (submitit's own gives each job ``visible_gpus[:n]``, and ints
    only: UUIDs and MIG names are kept here as given)."""
    from submitit.local.local import LocalExecutor, LocalJob, start_controller

    class SetExecutor(LocalExecutor):
        cuda_devices = ""

        def _submit_command(self, command: str) -> LocalJob[Any]:
            process = start_controller(
                folder=self.folder, command=command, tasks_per_node=1,
                cuda_devices=self.cuda_devices,
                timeout_min=self.parameters.get("timeout_min", 2.0),
                signal_delay_s=self.parameters.get("signal_delay_s", 30),
                stderr_to_stdout=self.parameters.get("stderr_to_stdout", False),
                setup=self.parameters.get("setup", ()))
            return LocalJob(folder=self.folder, job_id=str(process.pid), process=process,
                            tasks=[0])

    return SetExecutor(folder, max_num_timeout=max_num_timeout)

"""A SIGTERM or SLURM's requeue signal that reaches one DDP task stops every task at the same
step, so that the run can resume exactly.

Lightning's handlers run collectives inside the signal handler: on SIGTERM a
``dist.broadcast`` from rank 0, on SLURM's requeue signal (SIGUSR1) ``save_checkpoint`` with
its barrier. A signal that reaches one task (one node of a multi-node job), or reaches the
tasks at different points of a step, pairs that collective with another one of the other
tasks: with gloo, two nodes on localhost, a SIGTERM to the second node aborted it ("Received
data size doesn't match expected size. Is there a distributed collective mismatch") and the
first ended with a connection error, at status 1 and -6 instead of a resumable stop; and only
rank 0's SIGTERM is ever broadcast.

:class:`SynchronizedSignals` replaces those handlers for a multi-process fit: a handler only
notes the signal, and every task shares what it noted at the end of each training step (one
``all_reduce`` of two numbers, beside the step's gradient all-reduce). Then all tasks act at
the same step:

- a SIGTERM on any task: every task stops (Lightning's ``SIGTERMException``; ``train`` ends
  with status 143 and the resume command). ``last.ckpt`` holds the last finished epoch, and
  a relaunch (``ckpt_path=auto``, the requeued SLURM job in its run directory) redoes the cut
  epoch exactly as an unbroken run would.
- SLURM's requeue signal (``SLURMEnvironment.requeue_signal``, ``--signal=USR1@90``) with
  Lightning's ``auto_requeue``: the global rank zero asks SLURM to requeue the job
  (``scontrol requeue <job id>``, as Lightning does), and when SLURM took it every task stops
  as for SIGTERM. No mid-epoch checkpoint is written: the requeued job resumes from
  ``last.ckpt``, exactly.

A signal during validation or the final tests is acted on at the next training step, or not
at all (the tests finish and the run writes its results). A single-process run keeps
Lightning's own handlers.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
from types import FrameType
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)


class SynchronizedSignals(Callback):
    """Note SIGTERM and SLURM's requeue signal in any DDP task; act on them in all tasks at
    the same training step (see the module docstring)."""

    def __init__(self) -> None:
        self._noted = {"term": False, "requeue": False}
        self._requeue_signal: signal.Signals | None = None
        self._active = False

    def _note(self, what: str) -> Any:
        then = ("every task stops at the end of this step" if what == "term" else
                "the global rank zero requeues the SLURM job at the end of this step")

        def handler(signum: int, frame: FrameType | None) -> None:
            self._noted[what] = True
            log.info("received %s: %s", signal.Signals(signum).name, then)
        return handler

    def _install(self, trainer: L.Trainer) -> None:
        import threading

        if trainer.world_size <= 1 or threading.current_thread() is not threading.main_thread():
            return
        from lightning.fabric.plugins.environments import SLURMEnvironment

        # Lightning registered its own handlers (Trainer._run) just before the stage started;
        # its teardown puts the ones it found back
        signal.signal(signal.SIGTERM, self._note("term"))
        env = trainer._accelerator_connector.cluster_environment
        if isinstance(env, SLURMEnvironment) and env.auto_requeue and env.requeue_signal:
            self._requeue_signal = env.requeue_signal
            signal.signal(env.requeue_signal, self._note("requeue"))
        self._active = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from lightning.pytorch.trainer.states import TrainerFn

        if trainer.state.fn == TrainerFn.VALIDATING:  # trainer.validate: a _run of its own
            self._install(trainer)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install(trainer)  # the final tests: noted, and let finish

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        if not self._active:
            return
        noted = torch.tensor([float(self._noted["term"]), float(self._noted["requeue"])],
                             device=trainer.strategy.root_device)
        torch.distributed.all_reduce(noted, op=torch.distributed.ReduceOp.MAX)
        term, requeue = bool(noted[0].item()), bool(noted[1].item())
        self._noted["requeue"] = False
        if requeue:
            taken = torch.tensor([float(_requeue() if trainer.is_global_zero else 0)],
                                 device=trainer.strategy.root_device)
            torch.distributed.broadcast(taken, src=0)
            term = term or bool(taken.item())
        if term:
            # every task, at this step: Lightning raises SIGTERMException after the batch
            trainer._signal_connector.received_sigterm = True


def _requeue() -> bool:
    """``scontrol requeue`` this SLURM job (an array task as ``<array job>_<task>``), as
    Lightning's requeue handler does; whether SLURM took it."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = (f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job
           else os.environ.get("SLURM_JOB_ID", ""))
    if not re.fullmatch(r"[0-9_]+", job):
        log.warning("requeue signal, but no SLURM job id to requeue (SLURM_JOB_ID=%r)", job)
        return False
    try:
        done = subprocess.run(["scontrol", "requeue", job], check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        log.warning("requeueing SLURM job %s failed: %s; training goes on", job, err)
        return False
    if done.returncode != 0:
        log.warning("requeueing SLURM job %s failed (scontrol status %d); training goes on",
                    job, done.returncode)
        return False
    log.info("requeued SLURM job %s: every task stops now; the job resumes from last.ckpt", job)
    return True

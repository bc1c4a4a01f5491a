"""Callbacks that stop their own training with a signal at a fixed point, as a scheduler does.

Used through the config (``+callbacks.stop._target_=helpers.preemption.SignalOnce``), in-process or
inside a ``python -m see_dml.train`` / submitit job process (``PYTHONPATH`` holds ``tests``).
A fixed step, not a timer, so the test kills the run at the same place on any machine.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class SignalOnce(Callback):
    """Send this process ``signum`` at the start of training step ``step`` (or of epoch
    ``epoch``), once: the marker file remembers it across the resumed or requeued attempt."""

    def __init__(self, marker: str, signum: str = "SIGUSR2", epoch: int | None = None,
                 step: int | None = None, rank: int | None = None) -> None:
        self.marker = Path(marker)
        self.signum = getattr(signal, signum)
        self.epoch = epoch
        self.step = step
        self.rank = rank  # under DDP: only the process of this global rank (None: any)
        self.global_rank = 0

    def setup(self, trainer, pl_module, stage) -> None:
        self.global_rank = trainer.global_rank

    def _fire(self) -> None:
        if self.rank is not None and self.global_rank != self.rank:
            return
        if not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), self.signum)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self.epoch is not None and trainer.current_epoch == self.epoch:
            self._fire()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.step is not None and trainer.global_step == self.step:
            self._fire()


class PreemptOnce(SignalOnce):
    """submitit's preemption signal (SIGUSR2) at the start of ``epoch``, once."""

    def __init__(self, marker: str, epoch: int = 1) -> None:
        super().__init__(marker, "SIGUSR2", epoch=epoch)


class FileSizeLimitAt(Callback):
    """From the start of epoch ``epoch`` on, once, a write past ``max_bytes`` of any file kills
    this process (``RLIMIT_FSIZE`` with SIGXFSZ's default action, which Python ignores): the
    kill lands at a fixed byte count of the next large file written, a checkpoint."""

    def __init__(self, marker: str, max_bytes: int, epoch: int = 1) -> None:
        self.marker = Path(marker)
        self.max_bytes = max_bytes
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch and not self.marker.exists():
            import resource

            self.marker.write_text(str(os.getpid()))
            signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
            hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
            resource.setrlimit(resource.RLIMIT_FSIZE, (self.max_bytes, hard))


class FailAt(Callback):
    """Raise a user error (:class:`see_dml.runtime.errors.ConfigError`) at the start of training
    step ``step``: a run that fails after its data is built and its logs are open."""

    def __init__(self, step: int = 1) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            from see_dml.runtime.errors import ConfigError

            raise ConfigError(f"failing on cue at step {self.step}")

"""A callback that preempts its own training once, as SLURM does before requeueing a job.

Used by ``tests/experiments/test_sweeps.py`` through the config
(``+callbacks.preempt._target_=preemption.PreemptOnce``), inside a submitit job process.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class PreemptOnce(Callback):
    """At the start of ``epoch`` send the process submitit's preemption signal (SIGUSR2), once:
    the marker file remembers it across the requeued attempt."""

    def __init__(self, marker: str, epoch: int = 1) -> None:
        self.marker = Path(marker)
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch and not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGUSR2)

"""Loggers that survive a resumed run.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when its writer opens the log
directory (``_check_log_dir_exists``). A run resumed in its own directory (``ckpt_path=auto``,
a requeued SLURM job) or the test stage of ``ddp_spawn`` (whose fit wrote the file from
worker processes) would lose every earlier row. :class:`ResumableCSVLogger` is the same
logger with a writer that keeps the file and appends to it — the one thing written here.
"""

from __future__ import annotations

import csv

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

__all__ = ["ResumableCSVLogger"]


class _AppendingExperimentWriter(ExperimentWriter):
    """Keeps an existing ``metrics.csv``; new rows go after it, new columns widen its header."""

    def _check_log_dir_exists(self) -> None:
        if not self._fs.isfile(self.metrics_file_path):
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            header = next(csv.reader(file), [])
        # save() appends with these field names and rewrites the file (rows kept) when a new
        # key appears, so the existing header is where it starts.
        self.metrics_keys = list(header)


class ResumableCSVLogger(CSVLogger):
    """``lightning.pytorch.loggers.CSVLogger`` that appends to an existing ``metrics.csv``."""

    # Lightning declares the attribute as its fabric base writer; here only the property
    # below sets it, always to the appending writer
    _experiment: ExperimentWriter | None

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingExperimentWriter(log_dir=self.log_dir)
        return self._experiment

"""What every entry point does around its task: third-party noise silenced, and an error of
the user's making answered with one line (:mod:`see_dml.runtime.errors`).

Each entry point calls :func:`quiet_third_party` once, first thing (:func:`run_cli` does).
Every filter below is narrow (one message) and says why hiding it loses nothing.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar, overload

from see_dml.runtime.errors import USER_ERROR_STATUS, user_error_line

#: ``warnings`` messages (regular expressions matched at the start of the message).
WARNINGS = (
    # Lightning's own pytree helper builds torch's deprecated LeafSpec, three times a run;
    # nothing in this project uses it, and Lightning has to change, not its users.
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # A resumed run (ckpt_path=auto, a requeued job) checkpoints into its own run directory,
    # which holds the checkpoints it resumes from; run directories are unique otherwise.
    r"Checkpoint directory .* exists and is not empty",
)

#: Log lines to drop: ``{logger name: substrings}``.
LOG_LINES = {
    # "Tip: ... try installing litlogger", an advertisement printed by every Trainer.
    "lightning.pytorch.utilities.rank_zero": ("litlogger",),
}

T = TypeVar("T")


class _DropLines(logging.Filter):
    def __init__(self, substrings: tuple[str, ...]) -> None:
        super().__init__()
        self.substrings = substrings

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(s in message for s in self.substrings)


def one_lightning_console() -> None:
    """Print Lightning's log lines once. ``import lightning`` gives its ``lightning`` logger a
    console handler of its own (``INFO: ...``) and lets the lines propagate to the root's,
    which Hydra has set up (the console and the job's log file): every line came twice.
    Where the root has handlers, Lightning's is removed. Call after importing Lightning."""
    if not logging.getLogger().handlers or "lightning" not in sys.modules:
        return
    logger = logging.getLogger("lightning")
    for handler in list(logger.handlers):
        fmt = getattr(handler.formatter, "_fmt", None)
        if type(handler) is logging.StreamHandler and fmt == "%(levelname)s: %(message)s":
            logger.removeHandler(handler)


def quiet_third_party() -> None:
    """Install the filters of :data:`WARNINGS` and :data:`LOG_LINES` (idempotent)."""
    for pattern in WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name, substrings in LOG_LINES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLines) for f in logger.filters):
            logger.addFilter(_DropLines(substrings))


class FailurePolicy:
    """What an entry point does around the one error path of :func:`run_cli` when its task
    fails. The defaults are the tools' (evaluate, retrieve, index, export, tune): nothing is
    recorded, the run directory goes when it is still empty. ``train`` overrides the hooks
    for what sweeps and DDP need (:class:`see_dml.train.TrainFailure`)."""

    def recorded(self, err: Exception, line: str | None) -> bool:
        """Whether the failure was recorded for a sweep that goes on: the task returns None."""
        return False

    def before_report(self, err: Exception, line: str | None) -> None:
        """Runs before a bug's traceback or the ``error:`` line (e.g. writing the run's log)."""

    def reraise(self, err: Exception, line: str) -> bool:
        """Whether the user error is raised on after its line (a sweep that lists its jobs)."""
        return False

    def cleanup(self, cfg: Any, err: Exception, line: str) -> None:
        """Before the exit with :data:`~see_dml.runtime.errors.USER_ERROR_STATUS`: a tool run
        that failed before writing anything leaves no run directory."""
        _remove_empty_run_dir(cfg)


@overload
def run_cli(task: Callable[[Any], T], cfg: Any) -> T: ...

@overload
def run_cli(task: Callable[[Any], T], cfg: Any, policy: FailurePolicy) -> T | None: ...

def run_cli(task: Callable[[Any], T], cfg: Any, policy: FailurePolicy | None = None
            ) -> T | None:
    """Run an entry point's ``task(cfg)``, every tool's one error path: third-party noise
    filtered; an error of the user's making (:func:`see_dml.runtime.errors.user_error_line`)
    printed as one ``error:`` line with exit status
    :data:`~see_dml.runtime.errors.USER_ERROR_STATUS`; a bug raised with its traceback, as
    is everything under ``HYDRA_FULL_ERROR=1``. ``policy`` adds what an entry point needs
    around that (:class:`FailurePolicy`); None (a recorded failure) only when it says so."""
    quiet_third_party()
    policy = policy or FailurePolicy()
    try:
        return task(cfg)
    except Exception as err:
        line = user_error_line(err)
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if policy.recorded(err, line):
            return None
        policy.before_report(err, line)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        if policy.reraise(err, line):
            raise
        policy.cleanup(cfg, err, line)
        sys.exit(USER_ERROR_STATUS)


def exit_with_error(message: str) -> NoReturn:
    """Print ``message`` as the tools' one ``error:`` line and exit with their status."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(USER_ERROR_STATUS)


def _remove_empty_run_dir(cfg: Any) -> None:
    """A tool run that failed before writing anything leaves no run directory (as train)."""
    from contextlib import suppress

    from omegaconf import OmegaConf

    from see_dml.runtime.lock import remove_if_empty

    with suppress(Exception):  # an unresolvable path: nothing of ours to remove
        run_dir = OmegaConf.select(cfg, "paths.run_dir", default=None)
        if run_dir:
            remove_if_empty(run_dir, OmegaConf.select(cfg, "paths.output_dir", default=None))

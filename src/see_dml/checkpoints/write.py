"""Checkpoints that are whole or absent: written beside their target, fsync'ed, then renamed.

Lightning's ``TorchCheckpointIO`` writes through an fsspec transaction whose temporary file
lives in ``$TMPDIR``: with the run directory on another filesystem (or a full disk) the final
move is a copy, and a SIGKILL during it leaves a truncated ``last.ckpt`` (and the previous one
is already gone), plus a temporary of the checkpoint's size in ``/tmp``.
:class:`AtomicCheckpointIO` writes ``.<name>.tmp-<pid>`` in the checkpoint's own directory,
``fsync`` s it, ``os.replace`` s it over the target and ``fsync`` s the directory: the previous
``last.ckpt`` survives until the new one is whole. :func:`remove_partial_checkpoints` removes
what a killed write left (the run directory's lock says no other run is writing there).

:func:`find_resumable` picks what ``ckpt_path=auto`` resumes: ``last.ckpt`` when it is intact,
else (named in a warning) the newest intact checkpoint beside it.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from see_dml.checkpoints.read import load_checkpoint_file
from see_dml.runtime.errors import ConfigError

log = logging.getLogger(__name__)

PARTIAL_MARK = ".tmp-"


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not every platform opens directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)``, all or nothing (see the module docstring)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{PARTIAL_MARK}{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        written = tmp.stat().st_size if tmp.exists() else 0
        tmp.unlink(missing_ok=True)
        full = _full_disk(err, path.parent)
        if full is not None:  # a user's (machine's) error, one line naming where and how much
            free = shutil.disk_usage(path.parent).free
            raise OSError(full, f"{os.strerror(full)} while writing a checkpoint into "
                                f"'{path.parent}' ({_size(written)} written when it failed, "
                                f"{_size(free)} free there)", str(path)) from None
        raise
    _fsync_dir(path.parent)


#: The space below which a failed checkpoint write is taken for a full disk when torch's
#: error does not say why (its ``RuntimeError: ... unexpected pos`` hides the ENOSPC).
_NEARLY_FULL = 64 * 2**20


def _full_disk(err: BaseException, directory: Path) -> int | None:
    """``errno.ENOSPC`` / ``EDQUOT`` when ``err`` (or what it wraps: torch's writer raises
    ``RuntimeError: [enforce fail ...] unexpected pos`` around the write's ``OSError``) is a
    full disk or quota, or a torch write error with (nearly) no space left in ``directory``;
    else None."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return seen.errno
        seen = seen.__cause__ or seen.__context__
    if isinstance(err, RuntimeError) and ("unexpected pos" in str(err)
                                          or "file write failed" in str(err)):
        try:
            if shutil.disk_usage(directory).free < _NEARLY_FULL:
                return errno.ENOSPC
        except OSError:
            return None
    return None


def _size(n: int) -> str:
    """``n`` bytes for people: ``512 B``, ``3.4 MB``."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KB", "MB", "GB", "TB"):
        value /= 1024
        if value < 1024 or unit == "TB":
            break
    return f"{value:.1f} {unit}"


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves are atomic (remote URLs: Lightning's own)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, path)
        return None


def remove_partial_checkpoints(directory: str | Path) -> list[Path]:
    """Remove the temporaries of checkpoint writes that were killed; return them."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    left = [p for p in directory.iterdir()
            if p.name.startswith(".") and PARTIAL_MARK in p.name and p.is_file()]
    for p in left:
        log.warning("removing %s: a checkpoint write that did not finish", p)
        p.unlink(missing_ok=True)
    return left


def read_error(path: str | Path) -> str | None:
    """Why ``path`` is not an intact Lightning checkpoint, or None when it is."""
    try:  # weights only: a damaged or foreign file runs nothing
        state = load_checkpoint_file(path, mmap=True)
    except Exception as err:  # noqa: BLE001 - torch raises pickle, zip and runtime errors alike
        return f"{type(err).__name__}: {err}"
    if not isinstance(state, dict) or "state_dict" not in state:
        return "no 'state_dict'"
    return None


def _progress(path: Path) -> tuple[int, int, float]:
    state = load_checkpoint_file(path, mmap=True)
    return int(state.get("global_step", -1)), int(state.get("epoch", -1)), path.stat().st_mtime


class DamagedCheckpointError(ConfigError):
    """``last.ckpt`` is damaged and no other checkpoint beside it is intact."""


def find_resumable(last: Path) -> Path:
    """``last`` when it is an intact checkpoint; else the newest intact ``*.ckpt`` beside it
    (by training step, then time), after a warning naming the damaged file; else
    :class:`DamagedCheckpointError` naming it."""
    why = read_error(last)
    if why is None:
        return last
    intact = [p for p in last.parent.glob("*.ckpt") if p != last and read_error(p) is None]
    if not intact:
        raise DamagedCheckpointError(
            f"ckpt_path=auto: '{last}' is damaged ({why}) and no other checkpoint in "
            f"'{last.parent}' is intact. Move it away to train this run again from the "
            "start, or give ckpt_path=<an intact checkpoint>")
    newest = max(intact, key=_progress)
    step, epoch, _ = _progress(newest)
    log.warning("'%s' is damaged (%s): resuming from '%s', the newest intact checkpoint "
                "(epoch %d, step %d)", last, why, newest, epoch, step)
    return newest

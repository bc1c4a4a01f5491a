"""One run per run directory: a lock held for the life of a run.

Two trainings given the same ``hydra.run.dir`` (or the same ``resume=`` twice) used to both
succeed, each writing its own ``config.yaml``, checkpoints and metrics over the other's.
:func:`hold_run_dir` (at Hydra's run start, before Hydra writes its ``.hydra`` files) and
:func:`lock_run_dir` (the training) take an OS file lock (``filelock``: ``flock`` on Unix) on
``<run dir>/.see_dml.lock`` and records its holder (pid, host, start time, command) beside it
in ``.see_dml.lock.holder``; a second run there fails at once with
:class:`RunDirectoryLockedError`, naming the holder.

A lock of a process that died (SIGKILL, a node that went down) is released by the kernel
with the process, so it never blocks a later run; the holder file it leaves is overwritten.
On a filesystem without ``flock`` the holder file alone is the lock, and a holder whose pid
is no longer alive on this host is taken for stale.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from see_dml.runtime.errors import RunDirectoryLockedError

LOCK_NAME = ".see_dml.lock"
HOLDER_NAME = ".see_dml.lock.holder"


def _holder(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / HOLDER_NAME).read_text())
    except (OSError, ValueError):
        return None


def _describe(run_dir: Path, holder: dict[str, Any] | None) -> str:
    who = "another run"
    if holder:
        who = (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started "
               f"{holder.get('started', '?')}")
        if holder.get("command"):
            who += f": {holder['command']}"
    return (f"run directory '{run_dir}' is in use by {who}. Wait for that run to end, or "
            "give this one another directory (a new run without resume=, or another "
            "hydra.run.dir)")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _write_holder(run_dir: Path) -> None:
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}
    (run_dir / HOLDER_NAME).write_text(json.dumps(info) + "\n")


#: The environment variables that give a process's rank (Lightning's rank_zero_only reads
#: the first four; NODE_RANK: the node of a multi-node run started by hand).
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK", "NODE_RANK")


def is_rank_zero() -> bool:
    """Whether this process is the global rank zero by its environment: DDP's other ranks
    (Lightning's subprocess launcher, SLURM tasks) run the script, and Hydra, too."""
    for name in RANK_VARIABLES:
        value = os.environ.get(name, "0") or "0"
        if value.isdigit() and int(value) != 0:
            return False
    return True


#: The run directories this process holds, by real path: ``{path: its file lock, or None
#: where the filesystem has no flock}``. Hydra's run start takes the lock
#: (:func:`hold_run_dir`, before Hydra writes its ``.hydra`` files there), and the
#: training's :func:`lock_run_dir` then finds it held by its own process.
_HELD: dict[str, Any] = {}


def _acquire(run_dir: Path) -> Any:
    """Take ``run_dir``'s lock (created if missing) for this process: its ``FileLock``, or
    None on a filesystem without ``flock`` (then the holder file alone is the lock);
    :class:`RunDirectoryLockedError` when another live process holds it."""
    from filelock import FileLock, Timeout

    run_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(run_dir / LOCK_NAME), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise RunDirectoryLockedError(_describe(run_dir, _holder(run_dir))) from None
    except (NotImplementedError, OSError):  # no flock here (some network filesystems)
        holder = _holder(run_dir)
        if (holder and holder.get("host") == socket.gethostname()
                and holder.get("pid") != os.getpid() and _alive(int(holder.get("pid", 0)))):
            raise RunDirectoryLockedError(_describe(run_dir, holder)) from None
        return None
    return lock


def held_by_another(run_dir: str | Path) -> str | None:
    """The error message when another live process holds ``run_dir`` now, else None;
    creates nothing (the tuner asks before it resumes a killed trial's directory)."""
    from filelock import FileLock, Timeout

    run_dir = Path(run_dir)
    if not (run_dir / LOCK_NAME).is_file() or os.path.realpath(run_dir) in _HELD:
        return None
    lock = FileLock(str(run_dir / LOCK_NAME), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return _describe(run_dir, _holder(run_dir))
    except (NotImplementedError, OSError):
        return None  # no flock here: hold_run_dir decides
    lock.release()
    return None


def hold_run_dir(run_dir: str | Path) -> None:
    """Hold ``run_dir`` (created if missing) until :func:`release_run_dir`, the end of the
    ``lock_run_dir`` block of this process's training there, or the process's end;
    :class:`RunDirectoryLockedError` at once when another live process holds it. Hydra's
    run start calls it (:class:`see_dml.runtime.hydra_hooks.RunDirectoryInUse`): from then on
    no other run can write there, Hydra's own files included."""
    run_dir = Path(run_dir)
    key = os.path.realpath(run_dir)
    if key in _HELD:
        return
    _HELD[key] = _acquire(run_dir)
    _write_holder(run_dir)


def release_run_dir(run_dir: str | Path) -> None:
    """Give up what :func:`hold_run_dir` took (nothing if this process does not hold it)."""
    key = os.path.realpath(run_dir)
    if key not in _HELD:
        return
    lock = _HELD.pop(key)
    (Path(run_dir) / HOLDER_NAME).unlink(missing_ok=True)
    if lock is not None:  # the lock file stays: unlinking it would race a new run
        lock.release()


@contextmanager
def lock_run_dir(run_dir: str | Path) -> Iterator[None]:
    """Hold ``run_dir`` (created if missing) for the ``with`` block; raise
    :class:`RunDirectoryLockedError` at once when another live process holds it. A
    directory this process holds already (:func:`hold_run_dir`) is held on, and given up
    at the block's end."""
    run_dir = Path(run_dir)
    hold_run_dir(run_dir)
    try:
        yield
    finally:
        release_run_dir(run_dir)


def remove_if_empty(run_dir: str | Path, up_to: str | Path | None = None) -> bool:
    """Remove ``run_dir`` when a failed run left nothing in it but Hydra's files (``.hydra``,
    its job log, ``config.yaml``, the lock); return whether it did.

    ``up_to`` (the run's ``paths.output_dir``): the folders between it and ``run_dir`` that
    Hydra made for the run (``<output_dir>/evaluate/runs``) go too when that leaves them
    empty; ``up_to`` itself, the user's, stays.
    """
    import shutil

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return False
    left = [p for p in run_dir.iterdir()
            if p.name not in (".hydra", "config.yaml", LOCK_NAME, HOLDER_NAME)
            and p.suffix != ".log"]
    if left:
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    if up_to is not None:
        top = Path(up_to).resolve()
        parent = run_dir.resolve().parent
        while parent != top and parent.is_relative_to(top):
            try:
                parent.rmdir()  # only an empty folder: another run's stays
            except OSError:
                break
            parent = parent.parent
    return True


def check_writable(folder: str | Path, key_hint: str) -> None:
    """An :class:`OSError` (one line through :func:`see_dml.runtime.errors.io_error_line`, saying to
    give ``key_hint``) when files cannot be written into ``folder``: checked before the work
    whose result would go there. Folders made for the check are removed again (the writer
    makes them)."""
    import tempfile

    from see_dml.runtime.errors import with_hint

    folder = Path(folder)
    made = []
    parent = folder
    while not parent.exists() and parent != parent.parent:
        made.append(parent)
        parent = parent.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write_probe", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise with_hint(err, f"give {key_hint}") from None
    finally:
        for path in made:  # deepest first
            try:
                path.rmdir()
            except OSError:
                break

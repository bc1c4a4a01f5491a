"""The errors of the user's making, and the one answer every tool gives them.

An error here means the input is wrong, not the program: its message names the key, the
file or the run, and says what to do. Every tool (``train``, ``evaluate``, ``retrieve``,
``index``, ``export``, ``data.check``, ``data.download``) prints it as one ``error:`` line and
exits with :data:`USER_ERROR_STATUS`; a traceback would only bury it (``HYDRA_FULL_ERROR=1``
shows it anyway, for ``train``). Anything else is a bug and keeps its traceback.

This module imports nothing heavy: a tool catches these errors before torch is loaded.
"""

from __future__ import annotations

import errno
import os
import sys

#: The exit status of a tool stopped by an error of the user's making.
USER_ERROR_STATUS = 2


class ConfigError(ValueError):
    """A config that cannot work; the message names the key."""


class NotARunError(ConfigError):
    """``resume=`` names a directory that no training ran in."""


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or not written by ``see_dml.train``."""


class IndexFileError(ValueError):
    """A saved index that is missing, corrupt, truncated, or made by another model."""


class RunDirectoryLockedError(RuntimeError):
    """Another live run holds this run directory; the message names it."""


class DivergenceError(FloatingPointError):
    """A NaN / inf loss, or NaN / inf / zero embeddings; the message names the step or split."""


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are missing or incomplete; the message says where and what."""


class DatasetCountError(ValueError):
    """A dataset loaded, but its counts differ from the official ones (the message names
    ``dataset.strict_counts=false`` for a subset)."""


class UnreadableImageError(OSError):
    """An image file exists in the index but cannot be decoded."""


class TableError(ValueError):
    """Runs that cannot be tabled as given (``make_table``); the message names the runs and
    what to do."""


class ProvenanceMismatchError(TableError):
    """The seeds of one table cell were made by different code, libraries or devices."""


class AmbiguousBaselineError(TableError):
    """A table row's context has several baseline cells and nothing picks one."""


#: The one set of errors of the user's making (a missing file of any kind is one too).
USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, CheckpointError, IndexFileError, RunDirectoryLockedError, DivergenceError,
    DatasetCountError, TableError, FileNotFoundError)

#: Errors of the machine, not the program: a full disk, a quota, a read-only or forbidden
#: place; ``{errno: what to do}``.
_IO_HINTS = {
    errno.ENOSPC: "free some space, or write elsewhere (paths.output_dir=..., the tool's "
                  "output=...)",
    errno.EDQUOT: "free some of your quota, or write elsewhere (paths.output_dir=...)",
    errno.EROFS: "write elsewhere (paths.output_dir=..., the tool's output=...)",
    errno.EACCES: "write where you may (paths.output_dir=..., the tool's output=...)",
    errno.EPERM: "write where you may (paths.output_dir=..., the tool's output=...)",
}


def user_error_line(err: BaseException) -> str | None:
    """The one line to print for ``err`` when it is of the user's (or the machine's) making,
    else None (a bug: let it trace back).

    Covers :data:`USER_ERRORS`, a component's own option check (a ``ValueError`` that Hydra's
    ``instantiate`` wraps), an image that cannot be decoded (:func:`data_error_line`) and a
    full, read-only or forbidden place (:func:`io_error_line`).
    """
    if isinstance(err, USER_ERRORS):
        return str(err)
    instantiate = sys.modules.get("hydra.errors")  # only a tool that composed a config has it
    if (instantiate is not None and isinstance(err, instantiate.InstantiationException)
            and isinstance(err.__cause__, ValueError)):
        return str(err)
    return data_error_line(err) or io_error_line(err)


def data_error_line(err: BaseException) -> str | None:
    """One line for an image that cannot be read (:class:`UnreadableImageError`, also when a
    DataLoader worker raised it and wrapped its traceback into the message), else None."""
    if not isinstance(err, UnreadableImageError):
        return None
    text = str(err).strip()
    if "Original Traceback" in text:  # torch's worker exception: the original is last
        text = text.splitlines()[-1]
        head, sep, rest = text.partition(": ")
        text = rest if sep and "." in head and " " not in head else text
    return text


#: The attribute by which code that knows which key placed a file tells
#: :func:`io_error_line` what to do instead of the general hint (:func:`with_hint`).
HINT_ATTRIBUTE = "see_dml_hint"


def with_hint(err: OSError, hint: str) -> OSError:
    """``err`` carrying ``hint`` (what to do, naming the key that placed the file), for
    :func:`io_error_line` to print instead of its general one."""
    setattr(err, HINT_ATTRIBUTE, hint)
    return err


def io_error_line(err: BaseException) -> str | None:
    """One line for an :class:`OSError` of a full disk, a quota or a place that may not be
    written (naming the file and what to do: the key that placed it, when the code that
    wrote it said so with :func:`with_hint`), else None: that one is a bug to trace."""
    if not isinstance(err, OSError) or err.errno not in _IO_HINTS:
        return None
    where = f" '{err.filename}'" if err.filename else ""
    hint = getattr(err, HINT_ATTRIBUTE, None) or _IO_HINTS[err.errno]
    return f"{err.strerror or os.strerror(err.errno)}{where}: {hint}"

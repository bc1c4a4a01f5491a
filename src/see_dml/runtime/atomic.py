"""Files written whole or not at all, by any number of processes at once.

:func:`atomic_write` writes to a temporary file of its own beside the target and renames
it into place with :func:`os.replace` (atomic on one file system): a reader sees either
the old file (or none) or the whole new one, and concurrent writers never touch each
other's temporary file. The dataset caches (:mod:`see_dml.data.cache`), the schema's
signature cache (:mod:`see_dml.runtime.schema`) and the tuner's summaries write through it.
Checkpoints have their own writer, which also fsyncs (:mod:`see_dml.checkpoints.write`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a unique temporary file beside ``path``, then move it to ``path``.

    The temporary name is unique per call (``mkstemp``), so concurrent writers never touch
    each other's file; on failure it is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path

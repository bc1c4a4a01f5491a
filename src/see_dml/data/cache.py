"""Dataset caches that parallel jobs can share: atomic writes, broken files rebuilt.

The first runs of a sweep on a new machine all find the cache cold and build it at once.
Each writer therefore writes to a temporary file of its own in the cache's folder and
renames it into place (:func:`see_dml.runtime.atomic.atomic_write`): a reader sees
either no file or a whole one, and the last writer wins with identical content. A file that
is there but cannot be read (0 bytes, truncated by a killed job or a full disk) is named in
a warning and rebuilt.
"""

from __future__ import annotations

import logging
import os
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from see_dml.runtime.atomic import atomic_write
from see_dml.runtime.errors import with_hint

log = logging.getLogger(__name__)


def save_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> Path:
    """``np.savez_compressed`` of ``arrays`` to ``path``, atomically (see :func:`atomic_write`)."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: numpy would append ".npz" to a name
            # numpy's stub declares allow_pickle: bool beside **kwds, and mypy checks every
            # value of a ** dict against it; the keys here are array names (and numpy 1.x,
            # which the dependencies allow, has no allow_pickle to pass instead)
            np.savez_compressed(f, **arrays)  # type: ignore[arg-type]

    return atomic_write(path, write)


def load_npz(path: str | Path, keys: tuple[str, ...] = ()) -> dict[str, np.ndarray] | None:
    """Every array of the cache file ``path``, or None when there is none to use.

    None when ``path`` does not exist, and also, with a warning naming the file, when it is
    empty, truncated or lacks one of ``keys``: the caller rebuilds it then.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        with np.load(path) as data:
            missing = [k for k in keys if k not in data.files]
            if missing:
                raise KeyError(f"no {', '.join(missing)}")
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as err:
        log.warning("cache file '%s' is unreadable (%s bytes: %s); rebuilding it", path,
                    path.stat().st_size if path.exists() else "?", err)
        return None


def cached_arrays(path: str | Path | None, build: Callable[[], dict[str, np.ndarray]],
                  keys: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """The arrays cached at ``path``, or ``build()``'s, written there for the next run.

    ``path=None`` builds without caching. ``keys``: arrays a valid cache must hold.
    """
    if path is not None:
        arrays = load_npz(path, keys)
        if arrays is not None:
            return arrays
    if path is not None:  # a cache that cannot be written fails before the build, not after
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".write_probe", dir=Path(path).parent)
            os.close(fd)
            os.unlink(probe)
        except OSError as err:
            raise with_hint(err, CACHE_HINT.format(folder=Path(path).parent)) from None
    arrays = build()
    if path is not None:
        try:
            save_npz(path, arrays)
        except OSError as err:  # the cache's folder, not the run's output, is the culprit
            raise with_hint(err, CACHE_HINT.format(folder=Path(path).parent)) from None
        log.info("cached %s", path)
    return arrays


#: What to do when a dataset cache cannot be written: its folder is the dataset's root,
#: ``paths.cache_dir`` (``SEE_DML_CACHE_DIR``) unless given.
CACHE_HINT = ("the dataset cache '{folder}' is dataset.root, by default paths.cache_dir (or "
              "the environment's SEE_DML_CACHE_DIR): point it at a folder you may write, e.g. "
              "paths.cache_dir=$HOME/.cache/see_dml or SEE_DML_CACHE_DIR=...")

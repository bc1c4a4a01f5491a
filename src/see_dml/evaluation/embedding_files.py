"""One split's embeddings on disk: the layout every evaluation writes.

Training's test, ``python -m see_dml.evaluate export.enabled=true`` and the end-of-training
export callback all write through :func:`save_embeddings` (by way of
:func:`see_dml.evaluation.report.report`), so all have the same file layout.

File layout of ``embeddings_<split>.npz`` (and ``.parquet``, one row per image):

- ``embeddings``: ``(N, d)`` float32 unit rows;
- ``labels``: ``(N,)`` int64 class ids as the dataset numbers them;
- ``indices``: ``(N,)`` int64 position of each row in the split;
- ``paths``: ``(N,)`` image file paths — only for datasets read from files (in-memory
  datasets such as Double-MNIST have no paths: ``indices`` identify their images).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

ExportFormat = Literal["npz", "parquet"]
#: The formats :func:`save_embeddings` writes (``export.format``).
EXPORT_FORMATS = ("npz", "parquet")


def split_paths(items: Sequence[Path | str] | np.ndarray, indices: np.ndarray
                ) -> list[str] | None:
    """File paths of ``items`` at ``indices``, or None for in-memory image arrays."""
    if isinstance(items, np.ndarray):
        return None
    return [str(items[int(i)]) for i in indices]


def save_embeddings(path: str | Path, embeddings: np.ndarray, labels: np.ndarray,
                    items: Sequence[Path | str] | np.ndarray, fmt: ExportFormat = "npz",
                    indices: np.ndarray | None = None) -> Path:
    """Write one split's embeddings as ``.npz`` or ``.parquet`` (the suffix follows ``fmt``).

    Args:
        path: output file; its suffix is replaced by ``.npz`` / ``.parquet``.
        embeddings: ``(N, d)`` embeddings (stored as float32).
        labels: ``(N,)`` class ids.
        items: what identifies each row: ``(N,)`` image paths (strings or Paths), or
            ``(N,)`` integer indices into the split for in-memory datasets.
        fmt: ``npz`` (numpy) or ``parquet`` (pyarrow; column ``embedding`` is a fixed-size
            list of ``d`` float32).
        indices: ``(N,)`` position of each row in its split when ``items`` are paths
            (default ``0..N-1``: rows in split order, as :func:`embed_split` returns them).

    Returns:
        The path written.
    """
    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    lab = np.asarray(labels, dtype=np.int64)
    n = len(emb)
    if emb.ndim != 2 or lab.shape != (n,) or len(items) != n:
        raise ValueError(f"embeddings {emb.shape}, labels {lab.shape} and {len(items)} items "
                         "must describe the same N rows")
    is_index = isinstance(items, np.ndarray) and np.issubdtype(items.dtype, np.integer)
    columns: dict[str, np.ndarray] = {"labels": lab}
    if is_index:
        columns["indices"] = np.asarray(items, dtype=np.int64)
    else:
        columns["indices"] = (np.arange(n, dtype=np.int64) if indices is None
                              else np.asarray(indices, dtype=np.int64))
        columns["paths"] = np.asarray([str(p) for p in items])
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "npz":
        out = out.with_suffix(".npz")
        # numpy's stub declares allow_pickle: bool beside **kwds, and mypy checks every value
        # of a ** dict against it; the keys here are column names (and numpy 1.x, which
        # the dependencies allow, has no allow_pickle to pass instead)
        np.savez(out, embeddings=emb, **columns)  # type: ignore[arg-type]
        return out
    if fmt == "parquet":
        from see_dml.runtime.extras import require

        pa = require("pyarrow", "parquet", asked_by="format=parquet")
        import pyarrow.parquet as pq

        out = out.with_suffix(".parquet")
        embedding = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), emb.shape[1])
        table = pa.table({**{k: pa.array(v) for k, v in columns.items()},
                          "embedding": embedding})
        pq.write_table(table, out)
        return out
    raise ValueError(f"export.format must be 'npz' or 'parquet', got '{fmt}'")

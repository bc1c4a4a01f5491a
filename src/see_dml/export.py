"""Embed a split with a trained module and write the embeddings to disk.

``python -m see_dml.evaluate`` and ``python -m see_dml.retrieve`` embed with
:func:`embed_split` (eval mode, ``torch.no_grad``, dataset order); training embeds in the
module's test loop. Every evaluation writes its embeddings with :func:`save_embeddings`
(through :func:`see_dml.evaluation.report`), so all have the same file layout.

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
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

ExportFormat = Literal["npz", "parquet"]


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto``/None -> cuda when available, else cpu; anything else as ``torch.device``."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@torch.no_grad()
def embed_split(module: nn.Module, dataset: Dataset, batch_size: int = 256,
                device: str | torch.device | None = "auto", num_workers: int = 0,
                progress: bool = True, desc: str = "embedding"
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Embed every image of ``dataset`` (``(image, label, index)`` items) in dataset order.

    The module is put in eval mode (BatchNorm statistics, no dropout) and left there. The
    embeddings stay on ``device``: a search there needs no copy (``knn_backend=auto``
    searches GPU embeddings with torch), and faiss copies them to the host itself.

    Args:
        module: maps ``(B, C, H, W)`` images to ``(B, d)`` embeddings (a ``DMLModule``).
        dataset: a :class:`~see_dml.data.base.RetrievalDataset` or anything that yields
            ``(image, label, index)``.
        batch_size: images per forward pass.
        device: ``auto`` (cuda when available), ``cpu``, ``cuda:1``...
        num_workers: DataLoader workers.
        progress: show a tqdm bar.

    Returns:
        ``(embeddings (N, d) float32 on device, labels (N,) int64, indices (N,) int64)``
        (labels and indices on the CPU).

    Raises:
        RuntimeError: when the loop did not see each of the ``len(dataset)`` images exactly
            once (the embeddings would silently describe another set of images).
    """
    dev = resolve_device(device)
    module.eval().to(dev)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=dev.type == "cuda")
    embs, labels, indices = [], [], []
    for images, label, index in tqdm(loader, desc=desc, disable=not progress, unit="batch"):
        embs.append(module(images.to(dev, non_blocking=True)).float())
        labels.append(torch.as_tensor(label))
        indices.append(torch.as_tensor(index))
    n = len(dataset)  # type: ignore[arg-type]
    if not embs:
        raise RuntimeError(f"{desc}: the dataset is empty")
    emb = torch.cat(embs)
    lab = torch.cat(labels).long()
    idx = torch.cat(indices).long()
    if len(idx) != n or not torch.equal(torch.sort(idx).values, torch.arange(n)):
        raise RuntimeError(f"{desc}: embedded {len(idx)} rows for a dataset of {n} images, "
                           "or some index twice; a sampler or a custom dataset is the likely "
                           "cause")
    return emb, lab, idx


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
        np.savez(out, embeddings=emb, **columns)
        return out
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        out = out.with_suffix(".parquet")
        embedding = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), emb.shape[1])
        table = pa.table({**{k: pa.array(v) for k, v in columns.items()},
                          "embedding": embedding})
        pq.write_table(table, out)
        return out
    raise ValueError(f"export.format must be 'npz' or 'parquet', got '{fmt}'")

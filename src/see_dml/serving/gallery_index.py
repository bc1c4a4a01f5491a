"""A gallery's saved search index: a faiss index of unit embeddings and its JSON sidecar.

``python -m see_dml.index build|add`` writes them (:func:`save_index`);
``python -m see_dml.retrieve index.path=...`` searches them (:func:`load_index`,
:meth:`SavedIndex.search`, :class:`IndexedGallery`).

- ``<path>`` (``gallery.faiss``): the faiss index of the ``(N, d)`` unit embeddings, searched
  by inner product (= cosine similarity): ``flat`` (``IndexFlatIP``, exact) or ``hnsw``
  (``IndexHNSWFlat``, approximate; :func:`approximate_recall` measures it against exact).
- ``<path>.json``, the sidecar: one entry per row (``item``: image path or ``test[12]``,
  ``label``, where to find the image), the embedding size, the hashes of the checkpoint's
  config and of its weights (:func:`see_dml.serving.inference.model_identity`: another epoch of the
  same run differs in the second), the preprocessing the model expects, and the SHA-256 of
  the index file, so a truncated or corrupt index is refused with a one-line
  :class:`~see_dml.runtime.errors.IndexFileError` before faiss reads a byte of it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from see_dml.runtime.errors import ConfigError, IndexFileError

if TYPE_CHECKING:
    import faiss
    import numpy as np
    from PIL import Image

KINDS = ("flat", "hnsw")
SIDECAR_VERSION = 1
_SIDECAR_KEYS = ("version", "kind", "embed_dim", "count", "config_hash", "index_sha256",
                 "items", "preprocessing")


def index_location(value: str | Path) -> Path:
    """Where ``index.path=value`` is: a relative path is taken from the directory the user
    ran the command in (Hydra's ``runtime.cwd``), not from the process's working directory,
    which ``hydra.job.chdir=true`` (or a wrapper's ``cd``) moves into a run directory or the
    checkout; the index then stayed where the user never looked."""
    from hydra.utils import to_absolute_path  # runtime.cwd under Hydra, else the cwd

    return Path(to_absolute_path(str(Path(str(value)).expanduser())))


def sidecar_path(path: str | Path) -> Path:
    """``gallery.faiss`` -> ``gallery.faiss.json``."""
    return Path(f"{path}.json")


@dataclass
class SavedIndex:
    """A faiss index and its sidecar (see the module docstring for the sidecar's keys)."""

    path: Path
    index: faiss.Index
    meta: dict[str, Any]

    @property
    def items(self) -> list[dict[str, Any]]:
        return self.meta["items"]

    def check_model(self, model: Mapping[str, Any], ckpt_path: str | Path) -> None:
        """:class:`IndexFileError` unless the index was built by the model of ``ckpt_path``
        (``model``: its :func:`~see_dml.serving.inference.model_identity`): the same config hash,
        embedding size and, where the sidecar has it, weights hash."""
        embed_dim, model_hash = model["embed_dim"], model["config_hash"]
        weights = model["weights_hash"]
        built_by = f"built from '{self.meta.get('ckpt_path')}'"
        if int(self.meta["embed_dim"]) != int(embed_dim):
            raise IndexFileError(
                f"index.path='{self.path}' holds {self.meta['embed_dim']}-d embeddings "
                f"({built_by}) but ckpt_path='{ckpt_path}' makes {embed_dim}-d ones: use the "
                "checkpoint the index was built with, or rebuild it (python -m see_dml.index "
                "build)")
        if self.meta["config_hash"] != model_hash:
            raise IndexFileError(
                f"index.path='{self.path}' was built by another model (config hash "
                f"{self.meta['config_hash']}, {built_by}) than ckpt_path='{ckpt_path}' (config "
                f"hash {model_hash}): its embeddings are not comparable; rebuild the index "
                "with this checkpoint")
        # sidecars written before weights_hash existed are checked on the config alone
        built = self.meta.get("weights_hash")
        if built is not None and built != weights:
            raise IndexFileError(
                f"index.path='{self.path}' was built with other weights of the same config "
                f"(weights hash {built}, {built_by}; another epoch's checkpoint?) than "
                f"ckpt_path='{ckpt_path}' (weights hash {weights}): its embeddings are not "
                "comparable; use that checkpoint, or rebuild the index with this one")

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(Q, d)`` unit queries -> ``(scores (Q, k), row ids (Q, k))``, most similar first."""
        import faiss

        if self.meta["kind"] == "hnsw":  # an HNSW search sees at most efSearch candidates
            # faiss's stub types downcast_index as the base Index; it returns the index's
            # own class, here an IndexHNSWFlat
            hnsw_index = cast("faiss.IndexHNSW", faiss.downcast_index(self.index))
            hnsw_index.hnsw.efSearch = max(int(self.meta["hnsw"]["ef_search"]), k)
        return self.index.search(queries, k)


# -- files ----------------------------------------------------------------------------------
def make_index(kind: str, dim: int, hnsw_m: int = 32, ef_construction: int = 200
               ) -> faiss.Index:
    """An empty inner-product index: ``flat`` (exact) or ``hnsw`` (approximate)."""
    import faiss

    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, int(hnsw_m), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = int(ef_construction)
        return index
    raise ConfigError(f"index.kind must be one of {', '.join(KINDS)}, got '{kind}'")


def _write_atomic(path: Path, data: bytes) -> None:
    """Write through a temporary file, so an interrupted write leaves the old file whole."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def save_index(saved: SavedIndex) -> None:
    """Write the index, then its sidecar (with the index's checksum, row count and size)."""
    import faiss

    data = faiss.serialize_index(saved.index).tobytes()
    saved.meta.update(count=int(saved.index.ntotal), embed_dim=int(saved.index.d),
                      index_sha256=hashlib.sha256(data).hexdigest())
    saved.path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(saved.path, data)
    _write_atomic(sidecar_path(saved.path), json.dumps(saved.meta, indent=1).encode())


def load_index(path: str | Path) -> SavedIndex:
    """Read an index and its sidecar; :class:`IndexFileError` (one line, naming the file and
    what to do) when either is missing, unreadable, truncated, or they disagree."""
    import faiss
    import numpy as np

    file = Path(path).expanduser()
    side = sidecar_path(file)
    rebuild = "rebuild it with python -m see_dml.index build"
    for f in (file, side):
        if not f.is_file():
            raise IndexFileError(f"index.path='{path}': {f} does not exist; {rebuild}")
    try:
        meta = json.loads(side.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise IndexFileError(f"index.path='{path}': the sidecar {side} is not readable JSON "
                             f"({err}); {rebuild}") from err
    missing = ([k for k in _SIDECAR_KEYS if k not in meta] if isinstance(meta, dict)
               else list(_SIDECAR_KEYS))
    if missing:
        raise IndexFileError(f"index.path='{path}': the sidecar {side} lacks "
                             f"{', '.join(missing)}; {rebuild}")
    if meta["version"] != SIDECAR_VERSION:
        raise IndexFileError(f"index.path='{path}': sidecar version {meta['version']}, this "
                             f"see_dml reads version {SIDECAR_VERSION}; {rebuild}")
    data = file.read_bytes()
    # Checked before faiss reads it: faiss may abort the process on some malformed input.
    if hashlib.sha256(data).hexdigest() != meta["index_sha256"]:
        raise IndexFileError(f"index.path='{path}' is corrupt or truncated ({len(data)} bytes, "
                             f"its checksum is not the one {side.name} records); {rebuild}")
    try:
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    except RuntimeError as err:
        raise IndexFileError(f"index.path='{path}' is not a faiss index ({err}); "
                             f"{rebuild}") from err
    if index.ntotal != len(meta["items"]) or index.d != meta["embed_dim"]:
        raise IndexFileError(f"index.path='{path}' holds {index.ntotal} rows of {index.d}-d "
                             f"but {side.name} describes {len(meta['items'])} of "
                             f"{meta['embed_dim']}-d; {rebuild}")
    return SavedIndex(file, index, meta)


# -- approximate vs exact -------------------------------------------------------------------
def approximate_recall(vectors: np.ndarray, index: faiss.Index, k: int = 10,
                       n_queries: int = 1000, labels: list[str | None] | None = None,
                       seed: int = 0) -> dict[str, float]:
    """How much of the exact search an approximate ``index`` of ``vectors`` finds.

    Up to ``n_queries`` rows of ``vectors`` ``(N, d)`` (unit rows, in ``index``'s row order)
    are searched, each without itself, in ``index`` and in an exact ``IndexFlatIP``.

    Returns:
        ``recall@1``: fraction of queries whose top-1 is the exact top-1;
        ``recall@{k}``: mean fraction of the exact top-``k`` among the approximate top-``k``;
        with ``labels`` (all known): ``exact/label_recall@1`` and ``approx/label_recall@1``,
        the fraction whose top-1 has the query's class, for each index; ``queries``.
    """
    import faiss
    import numpy as np

    n = len(vectors)
    k = max(1, min(k, n - 1))
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, size=min(n_queries, n), replace=False))
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    results = []
    for idx in (exact, index):
        if isinstance(idx, faiss.IndexHNSW):
            idx.hnsw.efSearch = max(idx.hnsw.efSearch, k + 1)
        _, ids = idx.search(vectors[rows], k + 1)
        keep = ids != rows[:, None]
        keep[keep.all(axis=1), -1] = False  # self not found: drop the last column instead
        results.append(ids[keep].reshape(len(rows), k))
    want, got = results
    out = {"queries": float(len(rows)),
           "recall@1": float(np.mean(want[:, 0] == got[:, 0])),
           f"recall@{k}": float(np.mean([len(np.intersect1d(a, b)) / k
                                         for a, b in zip(want, got)]))}
    if labels is not None and all(lab is not None for lab in labels):
        lab = np.asarray(labels)
        out["exact/label_recall@1"] = float(np.mean(lab[want[:, 0]] == lab[rows]))
        out["approx/label_recall@1"] = float(np.mean(lab[got[:, 0]] == lab[rows]))
    return out


# -- the gallery behind an index (for retrieve's table and grid) ----------------------------
class IndexedGallery:
    """What ``see_dml.retrieve`` shows of a saved gallery: ``ids``, ``labels`` and the images.

    Images of a split are read from the checkpoint's dataset (``dataset_splits``, called
    once, only when an image is shown); image files from their path.
    """

    def __init__(self, saved: SavedIndex, dataset_splits: Any) -> None:
        self.source = str(saved.path)
        self.ids = [it["item"] for it in saved.items]
        self.labels = [it["label"] for it in saved.items]
        self._items = saved.items
        self._dataset_splits = dataset_splits
        self._splits: dict[str, Any] | None = None

    def display_image(self, i: int) -> Image.Image:
        """The raw image of row ``i`` (RGB, untransformed)."""
        import numpy as np

        from see_dml.data.base import load_image
        from see_dml.evaluation.plots import split_image

        item = self._items[i]
        if item.get("path"):
            return load_image(item["path"], "RGB")
        if self._splits is None:
            self._splits = self._dataset_splits()
        images = self._splits[item["split"]].items
        if isinstance(images, np.ndarray):
            return split_image(images, int(item["position"]), "RGB")
        return load_image(images[int(item["position"])], "RGB")

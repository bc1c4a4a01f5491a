"""A saved search index of a gallery: ``python -m see_dml.index build|add ckpt_path=... ...``.

``build`` embeds ``gallery=`` (a split of the checkpoint's dataset or an image file / folder,
as for ``see_dml.retrieve``) once and writes two files:

- ``index.path`` (``gallery.faiss``): the faiss index of the ``(N, d)`` unit embeddings,
  searched by inner product (= cosine similarity). ``index.kind=flat`` (default) is exact
  (``IndexFlatIP``); ``index.kind=hnsw`` (``IndexHNSWFlat``) is approximate and fast on
  galleries of millions. Its recall against the exact index is measured at build time
  (:func:`approximate_recall`) and printed.
- ``<index.path>.json``, the sidecar: one entry per row (``item``: image path or
  ``test[12]``, ``label``, where to find the image), the embedding size, the hashes of the
  checkpoint's config and of its weights (:func:`see_dml.export.config_hash`,
  :func:`~see_dml.export.weights_hash`: another epoch of the same run differs in the
  second), the preprocessing the model
  expects, and the SHA-256 of the index file, so a truncated or corrupt index is refused
  with a one-line :class:`IndexFileError` before faiss reads a byte of it.

``add`` embeds more images into an existing index: row ids never change (faiss numbers rows
in the order they are added, and nothing is removed), images already in it are skipped.
``python -m see_dml.retrieve index.path=...`` searches a saved index instead of embedding a
gallery; an index made by another model or embedding size is refused, naming both.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from see_dml.config import CONFIG_DIR, warn_ignored_keys
from see_dml.errors import ConfigError, IndexFileError

if TYPE_CHECKING:
    import faiss
    import numpy as np
    from PIL import Image

log = logging.getLogger(__name__)

ACTIONS = ("build", "add")
KINDS = ("flat", "hnsw")
SIDECAR_VERSION = 1
_SIDECAR_KEYS = ("version", "kind", "embed_dim", "count", "config_hash", "index_sha256",
                 "items", "preprocessing")


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
        (``model``: its :func:`~see_dml.export.model_identity`): the same config hash,
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
            faiss.downcast_index(self.index).hnsw.efSearch = max(
                int(self.meta["hnsw"]["ef_search"]), k)
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
        from see_dml.plots import split_image

        item = self._items[i]
        if item.get("path"):
            return load_image(item["path"], "RGB")
        if self._splits is None:
            self._splits = self._dataset_splits()
        images = self._splits[item["split"]].items
        if isinstance(images, np.ndarray):
            return split_image(images, int(item["position"]), "RGB")
        return load_image(images[int(item["position"])], "RGB")


# -- build / add ----------------------------------------------------------------------------
def _items(image_set: Any) -> list[dict[str, Any]]:
    """Sidecar rows of a :class:`see_dml.retrieve.ImageSet`, in its order."""
    import numpy as np

    from see_dml.retrieve import SPLIT_NAMES

    is_split = image_set.source in SPLIT_NAMES
    files = image_set.dataset.split.items
    rows = []
    for i, (name, label) in enumerate(zip(image_set.ids, image_set.labels, strict=True)):
        row: dict[str, Any] = {"item": name, "label": label}
        if is_split:
            row.update(split=image_set.source, position=i)
        if not isinstance(files, np.ndarray):
            row["path"] = str(Path(files[i]).resolve())
        rows.append(row)
    return rows


def _embed_gallery(cfg: DictConfig, saved: SavedIndex | None = None
                   ) -> tuple[np.ndarray, list[dict[str, Any]], dict[str, Any]]:
    """Embed ``cfg.gallery`` with ``cfg.ckpt_path``'s model.

    Returns:
        ``(embeddings (N, d) float32 unit rows, sidecar rows, model facts)``; model facts:
        ``config_hash``, ``embed_dim``, ``ckpt_path``, ``preprocessing``. With ``saved``, the
        model is checked against that index before anything is embedded.
    """
    from see_dml.evaluate import check_ckpt_path
    from see_dml.retrieve import SPLIT_NAMES, image_files

    ckpt_file = check_ckpt_path(None if OmegaConf.is_missing(cfg, "ckpt_path") else
                                cfg.ckpt_path)
    if OmegaConf.is_missing(cfg, "gallery") or cfg.get("gallery") in (None, ""):
        raise ConfigError("gallery is required: an image file or folder, or a split name "
                          f"({', '.join(SPLIT_NAMES)})")
    files = image_files(str(cfg.gallery), "gallery")  # a typo fails before the model loads

    from see_dml.evaluate import load_module_from_checkpoint, resolve_dataset_config
    from see_dml.export import embed_split, eval_preprocessing, model_identity, resolve_device
    from see_dml.metrics.knn import l2_normalised
    from see_dml.retrieve import _datamodule, image_set

    device = resolve_device(cfg.get("device", "auto"))
    module, ckpt_cfg = load_module_from_checkpoint(ckpt_file, device)
    model = {**model_identity(module, ckpt_cfg), "ckpt_path": str(ckpt_file.resolve())}
    if saved is not None:
        saved.check_model(model, ckpt_file)
    run_cfg = ckpt_cfg.copy()
    with open_dict(run_cfg):
        run_cfg.dataset = resolve_dataset_config(cfg, ckpt_cfg)
    state: dict[str, Any] = {"module": module, "run_cfg": run_cfg}
    gallery = image_set(cfg.gallery, "gallery", cfg, state, files)
    dm = _datamodule(state, cfg)
    model["preprocessing"] = eval_preprocessing(dm)
    emb = embed_split(module, gallery.dataset, dm.eval_batch_size, device,
                      progress=cfg.progress, desc=f"embedding {gallery.source}")[0]
    return l2_normalised(emb), _items(gallery), model


def _index_path(cfg: DictConfig) -> Path:
    path = OmegaConf.select(cfg, "index.path")
    if path in (None, "", "???"):
        raise ConfigError("index.path is required, e.g. index.path=gallery.faiss")
    return Path(str(path)).expanduser()


def _refuse_overwrite(cfg: DictConfig, path: Path) -> None:
    """``build`` onto an existing index (or its sidecar) only with ``index.overwrite=true``:
    it replaces every row (a 2,006-row index became the 4 images of a test folder)."""
    existing = [f for f in (path, sidecar_path(path)) if f.exists()]
    if not existing or bool(OmegaConf.select(cfg, "index.overwrite", default=False)):
        return
    try:
        rows = f"{load_index(path).index.ntotal:,} rows"
    except IndexFileError:
        rows = "unreadable"
    raise ConfigError(
        f"index.path='{path}' already exists ({rows}, {' and '.join(f.name for f in existing)})"
        ": 'build' would replace it. Add images to it with 'index add', give another "
        "index.path, or replace it with index.overwrite=true")


def build_index(cfg: DictConfig) -> dict[str, Any]:
    """``python -m see_dml.index build``: embed ``cfg.gallery``, write the index and sidecar;
    return the sidecar (without its rows)."""
    path = _index_path(cfg)
    kind = str(cfg.index.kind)
    if kind not in KINDS:
        raise ConfigError(f"index.kind must be one of {', '.join(KINDS)}, got '{kind}'")
    _refuse_overwrite(cfg, path)
    vectors, items, model = _embed_gallery(cfg)
    index = make_index(kind, vectors.shape[1], cfg.index.hnsw_m, cfg.index.ef_construction)
    index.add(vectors)
    meta: dict[str, Any] = {"version": SIDECAR_VERSION, "kind": kind, **model,
                            "metric": "inner product of unit rows (cosine similarity)",
                            "sources": [{"gallery": str(cfg.gallery), "first_id": 0,
                                         "count": len(items)}]}
    if kind == "hnsw":
        meta["hnsw"] = {"m": int(cfg.index.hnsw_m),
                        "ef_construction": int(cfg.index.ef_construction),
                        "ef_search": int(cfg.index.ef_search)}
        if len(vectors) > 1:
            index.hnsw.efSearch = int(cfg.index.ef_search)
            meta["recall_vs_exact"] = approximate_recall(
                vectors, index, int(cfg.index.recall_k), int(cfg.index.recall_queries),
                [it["label"] for it in items])
    meta["items"] = items
    save_index(SavedIndex(path, index, meta))
    print(f"Wrote {path} ({kind}, {len(items)} x {vectors.shape[1]}) and "
          f"{sidecar_path(path).name}")
    if "recall_vs_exact" in meta:
        print("HNSW vs exact: " + ", ".join(f"{k} {v:.4f}" for k, v in
                                             meta["recall_vs_exact"].items()
                                             if k != "queries"))
    return {k: v for k, v in meta.items() if k != "items"}


def add_to_index(cfg: DictConfig) -> dict[str, Any]:
    """``python -m see_dml.index add``: embed ``cfg.gallery`` into an existing index.

    Rows already there keep their ids; new rows take the next ones; images already in the
    index (same path, or same split row) are skipped.

    Returns:
        ``{"added": n, "skipped": m, "first_id": id of the first new row, "count": rows}``.
    """
    import numpy as np

    path = _index_path(cfg)
    saved = load_index(path)  # a bad index fails before the model loads
    vectors, items, model = _embed_gallery(cfg, saved)
    known = {(it.get("path"), it.get("split"), it.get("position"), it["item"])
             for it in saved.items}
    new = [i for i, it in enumerate(items) if (it.get("path"), it.get("split"),
                                               it.get("position"), it["item"]) not in known]
    first = int(saved.index.ntotal)
    if new:
        saved.index.add(np.ascontiguousarray(vectors[new]))
        saved.items.extend(items[i] for i in new)
        saved.meta.setdefault("sources", []).append(
            {"gallery": str(cfg.gallery), "first_id": first, "count": len(new)})
        save_index(saved)
    skipped = len(items) - len(new)
    print(f"Added {len(new)} images to {path} (ids {first}..{first + len(new) - 1})"
          if new else f"Nothing added to {path}", end="")
    print(f"; {skipped} already in it" if skipped else "")
    return {"added": len(new), "skipped": skipped, "first_id": first,
            "count": int(saved.index.ntotal)}


def run(cfg: DictConfig) -> dict[str, Any]:
    """Dispatch on ``cfg.action`` (``build`` or ``add``)."""
    warn_ignored_keys(cfg, "index")
    action = None if OmegaConf.is_missing(cfg, "action") else cfg.action
    if action not in ACTIONS:
        raise ConfigError(f"action must be one of {', '.join(ACTIONS)} "
                          f"(python -m see_dml.index build ...), got {action!r}")
    return build_index(cfg) if action == "build" else add_to_index(cfg)


@hydra.main(config_path=str(CONFIG_DIR), config_name="index", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from see_dml.cli import run_cli

    run_cli(run, cfg)


def cli() -> None:
    """``python -m see_dml.index build ...``: the action as a word, the rest Hydra overrides."""
    if len(sys.argv) > 1 and sys.argv[1] in ACTIONS:
        sys.argv[1] = f"action={sys.argv[1]}"
    main()


if __name__ == "__main__":
    cli()

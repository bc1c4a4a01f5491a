"""A saved search index of a gallery: ``python -m see_dml.index build|add ckpt_path=... ...``.

``build`` embeds ``gallery=`` (a split of the checkpoint's dataset or an image file / folder,
as for ``see_dml.retrieve``) once and writes two files:

- ``index.path`` (``gallery.faiss``): the faiss index of the ``(N, d)`` unit embeddings,
  searched by inner product (= cosine similarity). ``index.kind=flat`` (default) is exact
  (``IndexFlatIP``); ``index.kind=hnsw`` (``IndexHNSWFlat``) is approximate and fast on
  galleries of millions. Its recall against the exact index is measured at build time
  (:func:`see_dml.serving.gallery_index.approximate_recall`) and printed.
- ``<index.path>.json``, the sidecar: one entry per row (``item``: image path or
  ``test[12]``, ``label``, where to find the image), the embedding size, the hashes of the
  checkpoint's config and of its weights (:func:`see_dml.serving.inference.model_identity`: another
  epoch of the same run differs in the second), the preprocessing the model expects, and the
  SHA-256 of the index file, so a truncated or corrupt index is refused with a one-line
  :class:`~see_dml.runtime.errors.IndexFileError` before faiss reads a byte of it.

The files are :mod:`see_dml.serving.gallery_index`'s; this module is the command.

``add`` embeds more images into an existing index: row ids never change (faiss numbers rows
in the order they are added, and nothing is removed), images already in it are skipped.
``python -m see_dml.retrieve index.path=...`` searches a saved index instead of embedding a
gallery; an index made by another model or embedding size is refused, naming both.

An image file of ``gallery=`` that cannot be decoded stops ``build`` / ``add`` before the
model loads, naming it (``on_error=fail``, default); ``on_error=skip`` leaves such files out
(a later ``add`` tries them again), printing how many and listing them in the sidecar's
``sources`` entry (``unreadable``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from omegaconf import DictConfig, OmegaConf

from see_dml.checkpoints.read import check_ckpt_path
from see_dml.runtime.config import hydra_main, warn_ignored_keys
from see_dml.runtime.errors import ConfigError, IndexFileError
from see_dml.serving.gallery_index import (
    KINDS,
    SIDECAR_VERSION,
    SavedIndex,
    approximate_recall,
    index_location,
    load_index,
    make_index,
    save_index,
    sidecar_path,
)
from see_dml.serving.image_sets import (
    DATASET_SPLITS,
    check_location,
    image_files,
    image_set,
    skipped_line,
)

if TYPE_CHECKING:
    import faiss
    import numpy as np

ACTIONS = ("build", "add")


# -- build / add ----------------------------------------------------------------------------
def _embed_gallery(cfg: DictConfig, saved: SavedIndex | None = None
                   ) -> tuple[np.ndarray, list[dict[str, Any]], dict[str, Any],
                              list[dict[str, str]]]:
    """Embed ``cfg.gallery`` with ``cfg.ckpt_path``'s model.

    Returns:
        ``(embeddings (N, d) float32 unit rows, sidecar rows, model facts, unreadable)``;
        model facts: ``config_hash``, ``weights_hash``, ``embed_dim``, ``ckpt_path``,
        ``preprocessing``; unreadable: the files ``on_error=skip`` left out.
        With ``saved``, the model is checked against that index before anything is embedded.
    """
    check_ckpt_path(None if OmegaConf.is_missing(cfg, "ckpt_path") else cfg.ckpt_path)
    if OmegaConf.is_missing(cfg, "gallery") or cfg.get("gallery") in (None, ""):
        raise ConfigError("gallery is required: an image file or folder, or a split name "
                          f"({', '.join(DATASET_SPLITS)})")
    on_error = str(OmegaConf.select(cfg, "on_error", default="fail"))
    from see_dml.metrics.knn import l2_normalised
    from see_dml.serving.inference import embed_split, eval_preprocessing, open_checkpoint

    if saved is None:  # a typo, or an unreadable file, fails before the model loads
        files = image_files(str(cfg.gallery), "gallery", on_error)
        run = open_checkpoint(cfg)
        model = {**run.identity, "ckpt_path": str(run.path.resolve())}
    else:  # add: the model is checked before the gallery's images are decoded or embedded
        check_location(str(cfg.gallery), "gallery")
        run = open_checkpoint(cfg)
        model = {**run.identity, "ckpt_path": str(run.path.resolve())}
        saved.check_model(model, run.path)
        files = image_files(str(cfg.gallery), "gallery", on_error)
    gallery = image_set(cfg.gallery, "gallery", run, files)
    dm = run.datamodule()
    model["preprocessing"] = eval_preprocessing(dm)
    emb, _, rows = embed_split(run.module, gallery.dataset, dm.eval_batch_size, run.device,
                               progress=cfg.progress, desc=f"embedding {gallery.source}")
    gallery = gallery.keep(rows.tolist())  # without a split's images on_error=skip left out
    return l2_normalised(emb), gallery.index_rows(), model, files.unreadable if files else []


def _index_path(cfg: DictConfig) -> Path:
    path = OmegaConf.select(cfg, "index.path")
    if path in (None, "", "???"):
        raise ConfigError("index.path is required, e.g. index.path=gallery.faiss")
    return index_location(path).resolve()  # printed as written: absolute


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
    vectors, items, model, unreadable = _embed_gallery(cfg)
    index = make_index(kind, vectors.shape[1], cfg.index.hnsw_m, cfg.index.ef_construction)
    index.add(vectors)
    meta: dict[str, Any] = {"version": SIDECAR_VERSION, "kind": kind, **model,
                            "metric": "inner product of unit rows (cosine similarity)",
                            "sources": [{"gallery": str(cfg.gallery), "first_id": 0,
                                         "count": len(items), "unreadable": unreadable}]}
    if kind == "hnsw":
        meta["hnsw"] = {"m": int(cfg.index.hnsw_m),
                        "ef_construction": int(cfg.index.ef_construction),
                        "ef_search": int(cfg.index.ef_search)}
        if len(vectors) > 1:
            # make_index made an IndexHNSWFlat; faiss's stub types it as the base Index
            cast("faiss.IndexHNSW", index).hnsw.efSearch = int(cfg.index.ef_search)
            meta["recall_vs_exact"] = approximate_recall(
                vectors, index, int(cfg.index.recall_k), int(cfg.index.recall_queries),
                [it["label"] for it in items])
    meta["items"] = items
    save_index(SavedIndex(path, index, meta))
    print(f"Wrote {path} ({kind}, {len(items)} x {vectors.shape[1]}) and "
          f"{sidecar_path(path).name}")
    _print_skipped(unreadable, path)
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
    vectors, items, model, unreadable = _embed_gallery(cfg, saved)
    known = {(it.get("path"), it.get("split"), it.get("position"), it["item"])
             for it in saved.items}
    new = [i for i, it in enumerate(items) if (it.get("path"), it.get("split"),
                                               it.get("position"), it["item"]) not in known]
    first = int(saved.index.ntotal)
    if new:
        saved.index.add(np.ascontiguousarray(vectors[new]))
        saved.items.extend(items[i] for i in new)
        saved.meta.setdefault("sources", []).append(
            {"gallery": str(cfg.gallery), "first_id": first, "count": len(new),
             "unreadable": unreadable})
        save_index(saved)
    skipped = len(items) - len(new)
    print(f"Added {len(new)} images to {path} (ids {first}..{first + len(new) - 1})"
          if new else f"Nothing added to {path}", end="")
    print(f"; {skipped} already in it" if skipped else "")
    _print_skipped(unreadable, path if new else None)
    return {"added": len(new), "skipped": skipped, "first_id": first,
            "count": int(saved.index.ntotal)}


def _print_skipped(unreadable: list[dict[str, str]], path: Path | None) -> None:
    """Say what ``on_error=skip`` left out; ``path``: the index whose sidecar lists it (None
    when nothing was written)."""
    where = (f"the sources of {sidecar_path(path).resolve()}" if path is not None
             else "the warnings above (nothing was written)")
    line = skipped_line({"gallery": unreadable}, where)
    if line:
        print(line)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Dispatch on ``cfg.action`` (``build`` or ``add``)."""
    warn_ignored_keys(cfg, "index")
    action = None if OmegaConf.is_missing(cfg, "action") else cfg.action
    if action not in ACTIONS:
        raise ConfigError(f"action must be one of {', '.join(ACTIONS)} "
                          f"(python -m see_dml.index build ...), got {action!r}")
    return build_index(cfg) if action == "build" else add_to_index(cfg)


@hydra_main("index")
def main(cfg: DictConfig) -> None:
    from see_dml.runtime.cli import run_cli

    run_cli(run, cfg)


def cli() -> None:
    """``python -m see_dml.index build ...``: the action as a word, the rest Hydra overrides."""
    if len(sys.argv) > 1 and sys.argv[1] in ACTIONS:
        sys.argv[1] = f"action={sys.argv[1]}"
    main()


if __name__ == "__main__":
    cli()

"""Nearest neighbours of images: ``python -m see_dml.retrieve ckpt_path=... query=... gallery=...``.

``query`` and ``gallery`` each name either a split of the checkpoint's dataset (``test``,
``val``, ``query``, ``gallery``, ``train``) or an image file / folder (write ``./test`` for a
folder that is called like a split). Folders are searched recursively; an image inside a
class subfolder (``gallery/cat/001.jpg``) is labelled by its parent folder's name, an image
directly in the folder is unlabelled. Folder images get the checkpoint's eval transform
(its dataset's ``image_kind`` / ``image_mode``, the backbone's normalisation).

The top-``k`` gallery items of each query, by cosine similarity, are written chunk by chunk
to ``neighbours/`` (``indices.npy`` and ``scores.npy``, ``(Q, k)``, and the query and gallery
names and labels once: :func:`write_neighbours`), so memory stays ``O(chunk x k)`` whatever ``k``
(the files hold ``12 x Q x k`` bytes). The first ``print_queries`` are printed as a Markdown table;
``retrieval.json`` holds what a person reads: the sources, counts, and the first
``json_k`` neighbours of the first ``json_queries`` queries. ``retrieval_grid.png`` shows
each of ``grid_queries`` queries followed by its neighbours, with green / red borders for
the same / another class and grey where a label is unknown. Nothing is excluded: a query
that is also in the gallery finds itself first, with a score of 1. The last line printed
names the output directory (``${paths.output_dir}/retrieve/runs/<time>_<id>``).

``index.path=gallery.faiss`` searches a gallery saved by ``python -m see_dml.index build``
instead of embedding ``gallery=`` (which is then ignored): only the queries are embedded.
An index built by another model (config hash) or embedding size is refused, naming both.

An image file of ``query=`` / ``gallery=`` that cannot be decoded stops the retrieval before
the model loads, naming it (``on_error=fail``, default); ``on_error=skip`` leaves such files
out, printing how many and listing them in ``retrieval.json`` (``unreadable``). A split's
images follow ``dataset.on_error``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from see_dml.checkpoints.read import check_ckpt_path
from see_dml.runtime.config import hydra_main, warn_ignored_keys
from see_dml.runtime.errors import ConfigError
from see_dml.serving.image_sets import (
    DATASET_SPLITS,
    ImageSet,
    image_files,
    image_set,
    skipped_line,
)
from see_dml.training.config_checks import check_knn_backend

# As in evaluate.py, torch & co. load where they are used, after the cheap checks.
if TYPE_CHECKING:
    import numpy as np

    from see_dml.serving.gallery_index import IndexedGallery, SavedIndex

log = logging.getLogger(__name__)


def _markdown(results: list[dict[str, Any]], limit: int, n_queries: int) -> str:
    lines = ["| query | rank | neighbour | class | score |", "|---|---|---|---|---|"]
    for res in results[:limit]:
        for nb in res["neighbours"]:
            mark = {True: " ✓", False: " ✗", None: ""}[nb["correct"]]
            query = res["query"] if nb["rank"] == 1 else ""
            lines.append(f"| {query} | {nb['rank']} | {nb['item']} | {nb['label'] or '?'}{mark} "
                         f"| {nb['score']:.4f} |")
    shown = min(limit, len(results))
    if n_queries > shown:
        lines.append(f"\n({n_queries - shown} more queries: every neighbour of every query is "
                     f"in {NEIGHBOURS_DIR}/)")
    return "\n".join(lines)


def retrieve_images(cfg: DictConfig) -> dict[str, Any]:
    """Run the retrieval ``cfg`` describes; return what ``retrieval.json`` holds."""
    warn_ignored_keys(cfg, "retrieve")
    ckpt_path = None if OmegaConf.is_missing(cfg, "ckpt_path") else cfg.ckpt_path
    check_ckpt_path(ckpt_path)
    index_path = OmegaConf.select(cfg, "index.path")
    files = {}
    on_error = str(OmegaConf.select(cfg, "on_error", default="fail"))
    for key in ("query",) if index_path else ("query", "gallery"):
        if OmegaConf.is_missing(cfg, key) or cfg.get(key) in (None, ""):
            raise ConfigError(f"{key} is required: an image file or folder, or a split name "
                              f"({', '.join(DATASET_SPLITS)})")
        # a typo, or an unreadable file, fails before the model loads
        files[key] = image_files(str(cfg[key]), key, on_error)
    k = cfg.k
    if not isinstance(k, int) or k < 1:
        raise ConfigError(f"k must be a positive integer, got {k!r}")
    _grid_k(cfg)
    _positive(cfg, "json_queries", 100)
    _positive(cfg, "json_k", 10)
    check_knn_backend(cfg)
    from see_dml.serving.gallery_index import IndexedGallery, index_location, load_index

    # a bad index fails before torch; a relative one is where the user ran the command
    saved = load_index(index_location(index_path)) if index_path else None
    from see_dml.metrics import knn_chunks
    from see_dml.metrics.knn import l2_normalised
    from see_dml.serving.inference import embed_split, open_checkpoint

    run = open_checkpoint(cfg)
    if saved is not None:
        saved.check_model(run.identity, run.path)
    query = image_set(cfg.query, "query", run, files["query"])
    gallery: ImageSet | IndexedGallery = (
        IndexedGallery(saved, lambda: run.datamodule().source.splits()) if saved
        else image_set(cfg.gallery, "gallery", run, files["gallery"]))
    batch_size = run.datamodule().eval_batch_size

    sets: list[tuple[str, ImageSet]] = [("query", query)]
    if not isinstance(gallery, IndexedGallery):  # a saved index's gallery is embedded already
        sets.append(("gallery", gallery))
    embedded = []
    for name, s in sets:
        emb, _, rows = embed_split(run.module, s.dataset, batch_size, run.device,
                                   progress=cfg.progress, desc=f"embedding {name}")
        embedded.append(emb)
        # a split's images that dataset.on_error=skip left out have no row
        if name == "query":
            query = s.keep(rows.tolist())
        else:
            gallery = s.keep(rows.tolist())
    k_used = min(k, len(gallery.ids))
    if k_used < k:
        log.warning("k=%d but the gallery holds %d images: showing %d", k, k_used, k_used)
    out_dir = Path(cfg.paths.run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if saved is not None:
        chunks = _saved_chunks(saved, l2_normalised(embedded[0]), k_used)
    else:
        # Searched where the model ran: knn_backend=auto picks the torch search on a GPU.
        chunks = knn_chunks(embedded[0], embedded[1], k_used, exclude_self=False,
                            backend=cfg.get("knn_backend", "auto"))
    scores, indices = write_neighbours(out_dir / NEIGHBOURS_DIR, chunks, len(query.ids),
                                       k_used, query, gallery)

    # retrieval.json: what a person reads; every neighbour of every query is in neighbours/
    json_queries, json_k = _positive(cfg, "json_queries", 100), _positive(cfg, "json_k", 10)
    results = []
    for qi in range(min(len(query.ids), json_queries)):
        q_label = query.labels[qi]
        neighbours = []
        for rank, (gi, score) in enumerate(zip(indices[qi, :json_k], scores[qi, :json_k]),
                                           start=1):
            g_label = gallery.labels[gi]
            correct = None if q_label is None or g_label is None else q_label == g_label
            neighbours.append({"rank": rank, "item": gallery.ids[gi], "index": int(gi),
                               "label": g_label, "score": float(score), "correct": correct})
        results.append({"query": query.ids[qi], "label": q_label, "neighbours": neighbours})

    # the files on_error=skip left out, by key (none for a split or a saved index)
    unreadable = {key: found.unreadable if found else [] for key, found in files.items()}
    report = {"ckpt_path": str(run.path.resolve()), "query": query.source,
              "gallery": gallery.source, "k": k_used, "num_queries": len(query.ids),
              "num_gallery": len(gallery.ids), "neighbours": NEIGHBOURS_DIR,
              "unreadable": unreadable, "results": results}
    (out_dir / "retrieval.json").write_text(json.dumps(report, indent=2))
    _draw_grid(cfg, query, gallery, indices, scores, out_dir / "retrieval_grid.png")
    print(f"\nTop {k_used} of {len(gallery.ids)} gallery images ({gallery.source}) for "
          f"{len(query.ids)} queries ({query.source}):")
    print(_markdown(results, cfg.print_queries, len(query.ids)))
    skipped = skipped_line(unreadable, str((out_dir / "retrieval.json").resolve()))
    if skipped:
        print(skipped)
    print(f"Output directory: {out_dir.resolve()}")
    return report


#: The folder of a retrieval's neighbour lists, beside retrieval.json (see write_neighbours).
NEIGHBOURS_DIR = "neighbours"


def _saved_chunks(saved: SavedIndex, queries: np.ndarray, k: int,
                  chunk: int | None = None) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """A saved index searched one chunk of queries at a time (as ``knn_chunks``)."""
    from see_dml.metrics.knn import default_chunk

    step = chunk or default_chunk(saved.index.ntotal, k, "faiss")
    for start in range(0, len(queries), step):
        scores, ids = saved.search(queries[start:start + step], k)
        yield start, scores, ids


def write_neighbours(folder: Path, chunks: Iterable[tuple[int, np.ndarray, np.ndarray]],
                     n_queries: int, k: int, query: Any, gallery: Any
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Every query's ``k`` neighbours, as columns of ``.npy`` files written chunk by chunk
    (``numpy.lib.format.open_memmap``), so memory stays ``O(chunk x k)`` whatever ``k`` and
    the number of queries:

    - ``indices.npy``: ``(Q, k)`` int64 gallery rows, most similar first;
    - ``scores.npy``: ``(Q, k)`` float32 cosine similarities;
    - ``query_ids.npy`` / ``gallery_ids.npy``: each image's name (path, or ``test[12]``),
      once;
    - ``query_labels.npy`` / ``gallery_labels.npy``: class names, ``""`` where unknown.

    ``np.load(path, mmap_mode="r")`` reads any of them without loading it. Returns the two
    matrices, memory-mapped read-only.
    """
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    fmt = np.lib.format
    indices = fmt.open_memmap(folder / "indices.npy", mode="w+", dtype=np.int64,
                              shape=(n_queries, k))
    scores = fmt.open_memmap(folder / "scores.npy", mode="w+", dtype=np.float32,
                             shape=(n_queries, k))
    for start, sims, idx in chunks:
        indices[start:start + len(idx)] = idx
        scores[start:start + len(idx)] = sims
    indices.flush()
    scores.flush()
    del indices, scores
    for name, items in (("query", query), ("gallery", gallery)):
        np.save(folder / f"{name}_ids.npy", np.asarray(items.ids, dtype=str))
        np.save(folder / f"{name}_labels.npy",
                np.asarray(["" if lab is None else str(lab) for lab in items.labels],
                           dtype=str))
    return (np.load(folder / "scores.npy", mmap_mode="r"),
            np.load(folder / "indices.npy", mmap_mode="r"))


def _positive(cfg: DictConfig, key: str, default: int) -> int:
    value = OmegaConf.select(cfg, key, default=default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    return value


def _grid_k(cfg: DictConfig) -> int:
    cols = OmegaConf.select(cfg, "grid_k", default=10)
    if not isinstance(cols, int) or isinstance(cols, bool) or cols < 1:
        raise ConfigError(f"grid_k must be a positive integer, got {cols!r}")
    return cols


def _draw_grid(cfg: DictConfig, query: ImageSet, gallery: Any, indices: Any, scores: Any,
               path: Path) -> None:
    """``retrieval_grid.png``: ``grid_queries`` rows of the query and its first ``grid_k``
    neighbours (whatever ``k`` is: the images drawn, and the memory, stay bounded). A grid
    that cannot be drawn is a warning: ``retrieval.json`` is written already."""
    from see_dml.evaluation.plots import retrieval_grid

    cols = _grid_k(cfg)
    rows = list(range(min(len(query.ids), cfg.grid_queries)))
    if not rows:
        return
    cols = min(cols, indices.shape[1])
    try:
        retrieval_grid(
            [query.display_image(i) for i in rows],
            [[gallery.display_image(int(j)) for j in indices[i, :cols]] for i in rows],
            path,
            query_labels=[query.labels[i] for i in rows],
            neighbour_labels=[[gallery.labels[int(j)] for j in indices[i, :cols]]
                              for i in rows],
            scores=scores[rows, :cols],
            query_titles=[Path(query.ids[i]).name + (f"\nclass {query.labels[i]}"
                                                     if query.labels[i] is not None else "")
                          for i in rows])
    except Exception as err:  # noqa: BLE001 - the grid is never worth the results
        log.warning("could not draw %s (%s: %s); retrieval.json is written", path.name,
                    type(err).__name__, err)


@hydra_main("retrieve")
def main(cfg: DictConfig) -> None:
    from see_dml.runtime.cli import run_cli

    run_cli(retrieve_images, cfg)


if __name__ == "__main__":
    main()

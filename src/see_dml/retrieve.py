"""Nearest neighbours of images: ``python -m see_dml.retrieve ckpt_path=... query=... gallery=...``.

``query`` and ``gallery`` each name either a split of the checkpoint's dataset (``test``,
``val``, ``query``, ``gallery``, ``train``) or an image file / folder (write ``./test`` for a
folder that is called like a split). Folders are searched recursively; an image inside a
class subfolder (``gallery/cat/001.jpg``) is labelled by its parent folder's name, an image
directly in the folder is unlabelled. Folder images get the checkpoint's eval transform
(its dataset's ``image_kind`` / ``image_mode``, the backbone's normalisation).

The top-``k`` gallery items of each query, by cosine similarity, are printed as a Markdown
table and written to ``retrieval.json``; ``retrieval_grid.png`` shows each query followed
by its neighbours, with green / red borders for the same / another class and grey where a
label is unknown. Nothing is excluded: a query that is also in the gallery finds itself
first, with a score of 1. The last line printed names the output directory
(``${paths.output_dir}/retrieve/runs/<time>_<id>``).

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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from see_dml.checkpoints import check_ckpt_path
from see_dml.config import check_knn_backend, hydra_main, warn_ignored_keys
from see_dml.errors import ConfigError
from see_dml.image_sets import DATASET_SPLITS, ImageSet, image_files, image_set, skipped_line

# As in evaluate.py, torch & co. load where they are used, after the cheap checks.
if TYPE_CHECKING:
    from see_dml.gallery_index import IndexedGallery

log = logging.getLogger(__name__)


def _markdown(results: list[dict[str, Any]], limit: int) -> str:
    lines = ["| query | rank | neighbour | class | score |", "|---|---|---|---|---|"]
    for res in results[:limit]:
        for nb in res["neighbours"]:
            mark = {True: " ✓", False: " ✗", None: ""}[nb["correct"]]
            query = res["query"] if nb["rank"] == 1 else ""
            lines.append(f"| {query} | {nb['rank']} | {nb['item']} | {nb['label'] or '?'}{mark} "
                         f"| {nb['score']:.4f} |")
    if len(results) > limit:
        lines.append(f"\n({len(results) - limit} more queries in retrieval.json)")
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
    check_knn_backend(cfg)
    from see_dml.gallery_index import IndexedGallery, index_location, load_index

    # a bad index fails before torch; a relative one is where the user ran the command
    saved = load_index(index_location(index_path)) if index_path else None
    from see_dml.inference import embed_split, open_checkpoint
    from see_dml.metrics import knn_search
    from see_dml.metrics.knn import l2_normalised

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
    if saved is not None:
        scores, indices = saved.search(l2_normalised(embedded[0]), k_used)
    else:
        # Searched where the model ran: knn_backend=auto picks the torch search on a GPU.
        scores, indices = knn_search(embedded[0], embedded[1], k_used, exclude_self=False,
                                     backend=cfg.get("knn_backend", "auto"))

    results = []
    for qi in range(len(query.ids)):
        q_label = query.labels[qi]
        neighbours = []
        for rank, (gi, score) in enumerate(zip(indices[qi], scores[qi]), start=1):
            g_label = gallery.labels[gi]
            correct = None if q_label is None or g_label is None else q_label == g_label
            neighbours.append({"rank": rank, "item": gallery.ids[gi], "index": int(gi),
                               "label": g_label, "score": float(score), "correct": correct})
        results.append({"query": query.ids[qi], "label": q_label, "neighbours": neighbours})

    out_dir = Path(cfg.paths.run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # the files on_error=skip left out, by key (none for a split or a saved index)
    unreadable = {key: found.unreadable if found else [] for key, found in files.items()}
    report = {"ckpt_path": str(run.path.resolve()), "query": query.source,
              "gallery": gallery.source, "k": k_used, "unreadable": unreadable,
              "results": results}
    (out_dir / "retrieval.json").write_text(json.dumps(report, indent=2))
    _draw_grid(cfg, query, gallery, indices, scores, out_dir / "retrieval_grid.png")
    print(f"\nTop {k_used} of {len(gallery.ids)} gallery images ({gallery.source}) for "
          f"{len(query.ids)} queries ({query.source}):")
    print(_markdown(results, cfg.print_queries))
    skipped = skipped_line(unreadable, str((out_dir / "retrieval.json").resolve()))
    if skipped:
        print(skipped)
    print(f"Output directory: {out_dir.resolve()}")
    return report


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
    from see_dml.plots import retrieval_grid

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
    from see_dml.cli import run_cli

    run_cli(retrieve_images, cfg)


if __name__ == "__main__":
    main()

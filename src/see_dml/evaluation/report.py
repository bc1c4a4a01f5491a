"""Scoring a run: what an evaluation is, and the one report made of it.

Training (the module's val/test epochs), ``python -m see_dml.evaluate`` and the end-of-training
export callback all go through here:

    embeddings per split ─► evaluate_embeddings ─► EvaluationResult
        (one kNN search: metrics, and the neighbours the retrieval grid shows)
    EvaluationResult ─► report ─► metrics, Markdown table, embeddings_<split>.npz, plots
    metrics ─► write_metrics ─► metrics.json

The kNN backend is not decided here: the embeddings are searched where they are, and
:func:`see_dml.metrics.knn.resolve_backend` picks the search for ``knn_backend=auto``.

Heavy libraries (torch, faiss, matplotlib) load inside the functions that need them, so
importing this module (``train`` does, for :func:`format_results`) costs nothing.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from see_dml.evaluation.embedding_files import EXPORT_FORMATS, ExportFormat

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure

    from see_dml.data.datamodule import RetrievalDataModule
    from see_dml.metrics import MetricSet, RetrievalResult
    from see_dml.metrics.knn import Backend

log = logging.getLogger(__name__)

#: 2-D projection of the query embeddings, where neither the config nor the caller says.
DEFAULT_PROJECTION = "tsne"


@dataclass(frozen=True)
class SplitEmbeddings:
    """One evaluated split.

    Attributes:
        name: the split (``test``, ``val``, ``query``, ``gallery``); names the export files.
        embeddings: ``(N, d)`` float32 rows, sorted by ``indices``.
        labels: ``(N,)`` int64 class ids as the dataset numbers them.
        indices: ``(N,)`` int64 position of each row in the split (all of ``0..len-1``
            unless ``limit_test_batches`` cut the evaluation short).
    """

    name: str
    embeddings: np.ndarray
    labels: np.ndarray
    indices: np.ndarray


@dataclass(frozen=True)
class EvaluationResult:
    """Everything one evaluation produced: what the metrics, the table, the exports and the
    plots are made of.

    Attributes:
        prefix: what the metrics are logged under (``val``, ``test``, ``test_final``).
        splits: ``(test,)``, ``(val,)`` or ``(query, gallery)``: the queries come first.
        knn: the neighbours the one kNN search of the queries (all-vs-all, or against the
            gallery) kept for a few evenly spaced queries (the retrieval grid's).
        metrics: the metric set's metrics (``recall@K``, ``precision@1``,
            ``r_precision``, ``map@r`` by default; the config group ``metrics``), query
            counts and ``skipped_images`` when there were any (unprefixed floats).
    """

    prefix: str
    splits: tuple[SplitEmbeddings, ...]
    knn: RetrievalResult
    metrics: dict[str, float]

    @property
    def query(self) -> SplitEmbeddings:
        return self.splits[0]

    @property
    def gallery(self) -> SplitEmbeddings | None:
        """The gallery of a query/gallery protocol (In-Shop); None for all-vs-all."""
        return self.splits[1] if len(self.splits) == 2 else None

    def prefixed_metrics(self) -> dict[str, float]:
        """``{"<prefix>/<metric>": value}``, as logged and written to ``metrics.json``."""
        return {f"{self.prefix}/{k}": v for k, v in self.metrics.items()}


def evaluate_embeddings(prefix: str,
                        splits: Mapping[str, tuple[torch.Tensor, Any, Any]],
                        recall_ks: tuple[int, ...] | list[int], *,
                        metric_set: MetricSet | None = None, knn_backend: Backend = "auto",
                        keep_queries: int | None = None,
                        skipped: Mapping[str, int] | None = None) -> EvaluationResult:
    """Search once and compute every metric of one evaluation.

    Args:
        prefix: the result's :attr:`EvaluationResult.prefix`.
        splits: ``{name: (embeddings (N, d), labels (N,), indices (N,))}``, queries first,
            and at most a gallery after them. Embeddings are searched where they are (a
            tensor on a GPU: the torch search there with ``knn_backend=auto``).
        recall_ks: the dataset's Ks of Recall@K, used where the metric set leaves them to
            the data (``metrics.recall_at: null``).
        metric_set: what to compute (the config group ``metrics``; default
            :class:`see_dml.metrics.MetricSet`). Its ``nmi`` clusters all rows of all
            splits together (query and gallery for In-Shop), as many clusters as classes.
        knn_backend: ``auto``, ``faiss`` or ``torch`` (see :func:`see_dml.metrics.knn_search`).
        skipped: ``{split: images left out}`` (unreadable, ``dataset.on_error=skip``): their
            sum is the metric ``skipped_images`` when it is not 0 (the metrics describe
            the other images only).
        keep_queries: evenly spaced queries whose neighbour lists the result keeps (the
            retrieval grid's rows); default :data:`see_dml.metrics.KEPT_QUERIES`. The
            metrics are streamed over query chunks (:func:`see_dml.metrics.
            evaluate_retrieval`), so memory does not grow with queries x neighbours.
    """
    from see_dml.metrics import KEPT_QUERIES, evaluate_retrieval

    if not 1 <= len(splits) <= 2:
        raise ValueError(f"evaluate one split, or a query and a gallery split; got {list(splits)}")
    parts = [SplitEmbeddings(name, _numpy(emb, np.float32), _numpy(lab, np.int64),
                             _numpy(idx, np.int64))
             for name, (emb, lab, idx) in splits.items()]
    for part in parts:  # never metrics of a diverged model (chance-level numbers that look valid)
        norms = np.linalg.norm(np.nan_to_num(part.embeddings), axis=1)
        bad = ~np.isfinite(part.embeddings).all(axis=1) | (norms < 0.5)
        if bad.any():
            from see_dml.runtime.errors import DivergenceError

            raise DivergenceError(
                f"{int(bad.sum())} of {len(bad)} '{part.name}' embeddings are NaN, inf or zero: "
                "the model diverged, so no metrics are computed from it")
    (q_emb, _, _), *gallery = splits.values()
    reference, reference_labels = (gallery[0][0], parts[1].labels) if gallery else (None, None)
    metrics, knn = evaluate_retrieval(
        q_emb, parts[0].labels, reference, reference_labels, tuple(recall_ks),
        metric_set=metric_set, keep=KEPT_QUERIES if keep_queries is None else keep_queries,
        backend=knn_backend)
    left_out = sum(int(v) for v in (skipped or {}).values())
    if left_out:
        metrics["skipped_images"] = float(left_out)
    return EvaluationResult(prefix, tuple(parts), knn, metrics)


def _numpy(x: Any, dtype: type) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, on any device
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


# -- report -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReportOptions:
    """What :func:`report` writes besides the numbers.

    Attributes:
        export: ``embeddings_<split>.npz`` for every split (layout:
            :mod:`see_dml.evaluation.embedding_files`).
        format: ``npz``, or ``parquet`` (written besides the npz).
        plots: ``projection_<query split>.png``, ``recall_at_k.png`` and
            ``retrieval_grid_<query split>.png``.
        projection: ``tsne``, ``umap`` (umap-learn), ``pca`` or ``none``.
        grid_queries, grid_k: rows and neighbours of the retrieval grid.
    """

    export: bool = True
    format: str = "npz"
    plots: bool = True
    projection: str = DEFAULT_PROJECTION
    grid_queries: int = 8
    grid_k: int = 5

    def __post_init__(self) -> None:
        if self.format not in EXPORT_FORMATS:
            raise ValueError(f"export format must be npz or parquet, got '{self.format}'")


@dataclass
class Report:
    """What :func:`report` made of one :class:`EvaluationResult`.

    Attributes:
        metrics: ``{"<prefix>/<metric>": value}``, ready for ``metrics.json``.
        table: the Markdown results table (:func:`format_results`).
        files: every file written.
        figures: ``{name: (figure, png path)}`` of the plots, for image-capable loggers.
    """

    metrics: dict[str, float]
    table: str
    files: list[Path] = field(default_factory=list)
    figures: dict[str, tuple[Figure, Path]] = field(default_factory=dict)


def report(result: EvaluationResult, dm: RetrievalDataModule, out_dir: str | Path,
           options: ReportOptions | None = None, *, row_name: str | None = None) -> Report:
    """The metrics, table, embedding exports and plots of ``result``, written to ``out_dir``.

    Args:
        result: the evaluation.
        dm: the DataModule it evaluated: its splits hold the image paths (export) and the
            raw images (retrieval grid).
        out_dir: where files go.
        options: what to write besides the numbers (default :class:`ReportOptions`).
        row_name: the table row's name (default the prefix).
    """
    options = options or ReportOptions()
    metrics = result.prefixed_metrics()
    out = Path(out_dir)
    done = Report(metrics, format_results(metrics, {result.prefix: row_name or result.prefix}))
    if options.export or options.plots:
        out.mkdir(parents=True, exist_ok=True)
    if options.export:
        done.files += _export(result, dm, out, options.format)
    if options.plots:
        done.figures = _plots(result, dm, out, options)
        done.files += [path for _, path in done.figures.values()]
    for path in done.files:
        log.info("wrote %s", path)
    return done


def _export(result: EvaluationResult, dm: RetrievalDataModule, out: Path, fmt: str
            ) -> list[Path]:
    from see_dml.evaluation.embedding_files import save_embeddings, split_paths

    written = []
    formats: list[ExportFormat] = ["npz", "parquet"] if fmt == "parquet" else ["npz"]
    for split in result.splits:
        items = dm.eval_dataset(split.name).split.items
        if len(split.indices) != len(items):  # limit_test_batches / fast_dev_run
            log.info("embedding export: %s holds %d of %d images", split.name,
                     len(split.indices), len(items))
        paths = split_paths(items, split.indices)
        for f in formats:
            written.append(save_embeddings(
                out / f"embeddings_{split.name}", split.embeddings, split.labels,
                split.indices if paths is None else paths, f, indices=split.indices))
    return written


def _items_at(items: Any, indices: np.ndarray) -> Any:
    """The split items (paths or an image array) of the evaluated rows, in row order."""
    return items[indices] if isinstance(items, np.ndarray) else [items[int(i)] for i in indices]


def _plots(result: EvaluationResult, dm: RetrievalDataModule, out: Path,
           options: ReportOptions) -> dict[str, tuple[Figure, Path]]:
    """Files are named after the query split (``test``, ``val``, In-Shop's ``query``), as
    the embedding exports are."""
    from see_dml.evaluation.plots import plot_projection, plot_recall_curve, plot_retrieval_examples

    name, query, gallery = dm.source.name, result.query, result.gallery
    figures = {}
    draw: dict[str, tuple[Path, Callable[[Path], Figure]]] = {}
    if options.projection not in (None, "none"):
        draw["projection"] = (out / f"projection_{query.name}.png", lambda path: plot_projection(
            query.embeddings, query.labels, path, options.projection,  # type: ignore[arg-type]
            title=f"{name} {query.name}: {options.projection}"))
    if any(k.startswith("recall@") for k in result.metrics):  # a metric set without: none
        draw["recall_at_k"] = (out / "recall_at_k.png", lambda path: plot_recall_curve(
            result.prefixed_metrics(), path, title=f"{name} {result.prefix}: Recall@K"))

    def grid(path: Path) -> Figure:
        # The metrics' own neighbours; rows map to split items through the indices, so a
        # shortened evaluation (limit_test_batches) shows the right images too. Unreadable
        # images follow the dataset's on_error policy, as in training and testing.
        return plot_retrieval_examples(
            result.knn, _items_at(dm.eval_dataset(query.name).split.items, query.indices),
            _items_at(dm.eval_dataset(gallery.name).split.items, gallery.indices)
            if gallery else None, gallery.labels if gallery else None, path,
            n_queries=options.grid_queries, k=options.grid_k,
            image_mode=dm.source.image_mode, on_error=getattr(dm.source, "on_error", "fail"))

    draw["retrieval_grid"] = (out / f"retrieval_grid_{query.name}.png", grid)
    for key, (path, plot) in draw.items():
        try:
            figures[key] = (plot(path), path)
        except Exception as err:  # noqa: BLE001 - a plot is never worth the metrics
            log.warning("could not draw %s (%s: %s); the metrics and the other files are "
                        "written", path.name, type(err).__name__, err)
    return figures


#: The prefix of the papers' best-on-test numbers in ``metrics.json`` (``test_every_epoch``).
BEST_ON_TEST = "best_on_test"

#: The rows of ``train``'s results table, ``{metrics prefix: row name}``; rows whose prefix
#: has no metrics are left out.
RESULT_ROWS = {"test": "selected (val)", "test_final": "final epoch",
               BEST_ON_TEST: "best on test (papers' protocol, for comparison only)"}


def best_on_test(history: Mapping[int, Mapping[str, float]], key: str = "recall@1"
                 ) -> dict[str, Any]:
    """The papers' "best on test" protocol: every test metric of the epoch whose test
    ``key`` is highest (ties: the earliest epoch), as ``best_on_test/<metric>``, and that
    epoch as ``best_on_test/epoch`` (0-based, as Lightning counts: ``epoch002.ckpt`` is 2).

    Only for comparison with published numbers: picking an epoch on the test classes is a
    choice made with the test labels, which this framework never makes for ``test/...``.

    Args:
        history: ``{epoch: {metric: value}}``, the module's ``test_history``.
        key: the metric that picks the epoch.
    """
    if not history:
        return {}

    def score(epoch: int) -> float:
        value = float(history[epoch].get(key, math.nan))
        return -math.inf if math.isnan(value) else value

    epoch = max(sorted(history), key=score)  # max keeps the first of equal maxima
    return {**{f"{BEST_ON_TEST}/{k}": float(v) for k, v in history[epoch].items()},
            f"{BEST_ON_TEST}/epoch": int(epoch)}


def format_results(metrics: Mapping[str, Any], rows: Mapping[str, str] | None = None) -> str:
    """A Markdown table in %: one row per ``{prefix: row name}`` (default
    :data:`RESULT_ROWS`: the selected and the final weights, and the papers' best on test
    when there), a column per metric the rows hold (the metric set's: Recall@K, MAP@R,
    R-Precision by default), ordered and named by :func:`see_dml.metrics.shown_metrics` and
    :func:`see_dml.metrics.display_name`. A row with a ``<prefix>/epoch`` names that epoch."""
    from see_dml.metrics.metric_set import display_name, shown_metrics

    rows = rows or RESULT_ROWS
    rows = {p: name for p, name in rows.items() if any(k.startswith(p + "/") for k in metrics)}
    if not rows:
        return "(no test metrics)"
    cols = shown_metrics(k.split("/", 1)[1] for k in metrics
                         if "/" in k and k.split("/", 1)[0] in rows)
    header = "| weights | " + " | ".join(display_name(c) for c in cols) + " |"
    lines = [header, "|" + "---|" * (len(cols) + 1)]
    for prefix, name in rows.items():
        if f"{prefix}/epoch" in metrics:
            name = f"{name}, epoch {int(metrics[f'{prefix}/epoch'])}"
        vals = [metrics.get(f"{prefix}/{c}", math.nan) * 100 for c in cols]
        lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in vals) + " |")
    for prefix, name in rows.items():
        left_out = int(metrics.get(f"{prefix}/skipped_images", 0) or 0)
        if left_out:
            lines.append(f"({name}: {left_out} unreadable image{'s' * (left_out != 1)} left "
                         "out and not scored, dataset.on_error=skip)")
    return "\n".join(lines)


def write_metrics(out_dir: str | Path, metrics: Mapping[str, Any],
                  devices: tuple[str, int] | Any = None) -> Path:
    """``<out_dir>/metrics.json``: the flat metrics of a run, keys sorted, with what produced
    it (:func:`see_dml.runtime.provenance.provenance`: code version, library versions, ``devices``
    as ``(kind, count)``, a ``torch.device`` or the trainer). Train and evaluate both write
    it here."""
    from see_dml.runtime.provenance import provenance

    path = Path(out_dir) / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**provenance(devices), **dict(metrics)}, indent=2,
                               sort_keys=True))
    return path

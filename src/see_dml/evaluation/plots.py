"""Figures of a trained embedding: 2-D projection, Recall@K curve, retrieval grid.

Figures are built with :class:`matplotlib.figure.Figure` directly (no pyplot): nothing here
touches matplotlib's global backend or figure registry, so plotting is safe in a headless
training job and figures are freed with their last reference. ``savefig`` renders with Agg.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from PIL import Image

from see_dml.data.base import load_image
from see_dml.runtime.errors import UnreadableImageError

if TYPE_CHECKING:
    from see_dml.metrics import RetrievalResult

log = logging.getLogger(__name__)

ProjectionMethod = Literal["pca", "tsne", "umap"]
ImageLike = Image.Image | np.ndarray

RIGHT, WRONG, UNKNOWN, QUERY = "#2ca02c", "#d62728", "#9a9a9a", "#1f77b4"
# Below this many points t-SNE / UMAP run single-threaded (see project_2d).
_SMALL_PROJECTION = 2000
_RECALL_KEY = re.compile(r"^(?:(?P<prefix>.+)/)?recall@(?P<k>\d+)$")


def _save(fig: Figure, path: str | Path | None, dpi: int = 100) -> None:
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi, bbox_inches="tight")


# -- projection -----------------------------------------------------------------------------
def project_2d(embeddings: np.ndarray, method: ProjectionMethod = "pca", seed: int = 0
               ) -> np.ndarray:
    """``(N, d)`` embeddings -> ``(N, 2)`` coordinates by PCA, t-SNE or UMAP.

    UMAP needs the ``umap`` extra (umap-learn); without it t-SNE is used, with a warning.
    """
    from threadpoolctl import threadpool_limits

    x = np.asarray(embeddings, dtype=np.float32)
    if method not in ("pca", "tsne", "umap"):
        raise ValueError(f"plots.projection must be pca, tsne, umap or none; got '{method}'")
    if method == "umap" and importlib.util.find_spec("umap") is None:
        warnings.warn("plots.projection=umap needs the 'umap' extra (umap-learn is not "
                      "installed: pip install 'see-dml[umap]'); using t-SNE instead",
                      stacklevel=2)
        method = "tsne"
    # Small problems run on one thread: beside torch's OpenMP pool, BLAS / OpenMP threads
    # spin against each other and turn milliseconds into seconds (measured: PCA of 2,000
    # points 2 ms vs 2 s, t-SNE of 25 points 0.3 s vs 9 s on a loaded 2-core machine).
    limit = 1 if method == "pca" or len(x) < _SMALL_PROJECTION else None
    with threadpool_limits(limits=limit):
        if method == "umap":
            import umap

            return umap.UMAP(n_components=2, random_state=seed).fit_transform(x)
        if method == "tsne":
            from sklearn.manifold import TSNE

            perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
            return TSNE(n_components=2, init="pca", perplexity=perplexity,
                        random_state=seed).fit_transform(x)
        # PCA: the two leading axes of the (d, d) covariance, in float64.
        centred = (x - x.mean(axis=0, keepdims=True)).astype(np.float64)
        _, vectors = np.linalg.eigh(centred.T @ centred)
        return (centred @ vectors[:, ::-1][:, :2]).astype(np.float32)


def plot_projection(embeddings: np.ndarray, labels: np.ndarray, path: str | Path | None = None,
                    method: ProjectionMethod = "pca", *, max_points: int = 5000,
                    seed: int = 0, title: str | None = None) -> Figure:
    """Scatter of a 2-D projection of ``(N, d)`` embeddings, coloured by ``(N,)`` labels.

    At most ``max_points`` random points are drawn (t-SNE on 60k SOP images would take
    hours). With up to 20 classes each gets a legend entry; beyond, colours cycle.
    """
    emb = np.asarray(embeddings)
    lab = np.asarray(labels)
    if len(emb) != len(lab):
        raise ValueError(f"{len(emb)} embeddings but {len(lab)} labels")
    if len(emb) > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(len(emb), max_points, replace=False))
        emb, lab = emb[keep], lab[keep]
    xy = project_2d(emb, method, seed)
    classes, colour_idx = np.unique(lab, return_inverse=True)
    fig = Figure(figsize=(6.5, 6))
    ax = fig.add_subplot()
    cmap = "tab20" if len(classes) <= 20 else "hsv"
    scatter = ax.scatter(xy[:, 0], xy[:, 1], c=colour_idx, cmap=cmap, s=10, alpha=0.8,
                         vmin=0, vmax=max(len(classes) - 1, 1), linewidths=0)
    if len(classes) <= 20:
        handles, _ = scatter.legend_elements(num=list(range(len(classes))))
        ax.legend(handles, [str(c) for c in classes], title="class", fontsize=7,
                  loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"{method.upper()} of {len(emb)} embeddings, {len(classes)} classes")
    _save(fig, path)
    return fig


# -- Recall@K -------------------------------------------------------------------------------
def recall_curves(metrics: Mapping[str, float]) -> dict[str, tuple[list[int], list[float]]]:
    """``{prefix: (Ks, recalls)}`` from keys ``[prefix/]recall@K`` (prefix ``""`` if none)."""
    curves: dict[str, dict[int, float]] = {}
    for key, value in metrics.items():
        match = _RECALL_KEY.match(key)
        if match and isinstance(value, int | float):
            curves.setdefault(match["prefix"] or "", {})[int(match["k"])] = float(value)
    return {p: (sorted(c), [c[k] for k in sorted(c)]) for p, c in curves.items()}


def plot_recall_curve(metrics: Mapping[str, float], path: str | Path | None = None,
                      title: str = "Recall@K") -> Figure:
    """Recall@K (in %) against K on a log axis, one curve per key prefix.

    ``metrics`` is a flat dict as ``retrieval_metrics`` or ``train`` return it: keys
    ``recall@K`` or ``<prefix>/recall@K`` (``test/...`` and ``test_final/...`` give two
    curves); other keys are ignored.
    """
    curves = recall_curves(metrics)
    if not curves:
        raise ValueError(f"no 'recall@K' key in metrics (keys: {sorted(metrics)[:8]}...)")
    fig = Figure(figsize=(5.5, 4))
    ax = fig.add_subplot()
    all_ks: set[int] = set()
    for prefix, (ks, recalls) in sorted(curves.items()):
        pct = [100 * r for r in recalls]
        ax.plot(ks, pct, marker="o", label=prefix or None)
        for k, r in zip(ks, pct):
            ax.annotate(f"{r:.1f}", (k, r), textcoords="offset points", xytext=(0, 6),
                        ha="center", fontsize=7)
        all_ks.update(ks)
    ax.set_xscale("log")
    ax.set_xticks(sorted(all_ks))
    ax.set_xticklabels([str(k) for k in sorted(all_ks)])
    ax.minorticks_off()
    ax.set_xlabel("K")
    ax.set_ylabel("Recall@K (%)")
    ax.set_ylim(0, 105)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    if any(prefix for prefix in curves):
        ax.legend(fontsize=8)
    _save(fig, path)
    return fig


# -- retrieval grid -------------------------------------------------------------------------
#: Side of the blank cell drawn for an unreadable image under ``on_error=skip``.
_BLANK_PX = 64


def split_image(items: Sequence[Path | str] | np.ndarray, index: int, mode: str = "RGB",
                on_error: str = "fail") -> Image.Image:
    """The raw (untransformed) image ``index`` of a split's ``items`` (paths or an array).

    An unreadable file raises :class:`UnreadableImageError` naming it; with
    ``on_error="skip"`` (the dataset's policy, ``dataset.on_error``) it is logged and drawn
    as a blank grey cell instead (the grid shows the neighbours the metrics counted)."""
    if isinstance(items, np.ndarray):
        return Image.fromarray(items[int(index)]).convert(mode)
    try:
        return load_image(items[int(index)], mode)
    except UnreadableImageError as err:
        if on_error != "skip":
            raise
        log.warning("%s; dataset.on_error=skip: drawn as a blank cell", err)
        return Image.new("RGB", (_BLANK_PX, _BLANK_PX), (200, 200, 200)).convert(mode)


def border_colour(query_label: object, neighbour_label: object) -> str:
    """Green when both labels are known and equal, red when they differ, grey if unknown."""
    if query_label is None or neighbour_label is None:
        return UNKNOWN
    return RIGHT if str(query_label) == str(neighbour_label) else WRONG


def _rgb_cell(image: ImageLike, height: int, width: int) -> np.ndarray:
    """``image`` fitted into a ``(height, width, 3)`` uint8 cell, aspect kept, white padding."""
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    img = img.convert("RGB")
    scale = min(height / img.height, width / img.width)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    img = img.resize(size, Image.Resampling.BILINEAR)
    cell = np.full((height, width, 3), 255, dtype=np.uint8)
    top, left = (height - size[1]) // 2, (width - size[0]) // 2
    cell[top:top + size[1], left:left + size[0]] = np.asarray(img)
    return cell


def retrieval_grid(queries: Sequence[ImageLike], neighbours: Sequence[Sequence[ImageLike]],
                   path: str | Path | None = None, *,
                   query_labels: Sequence[object | None] | None = None,
                   neighbour_labels: Sequence[Sequence[object | None]] | None = None,
                   scores: np.ndarray | Sequence[Sequence[float]] | None = None,
                   query_titles: Sequence[str] | None = None, cell_px: int = 96,
                   border_px: int = 4) -> Figure:
    """One row per query: the query (blue border), then its k neighbours, most similar first.

    Neighbour borders are green (same class as the query), red (another class) or grey
    (a label is unknown, e.g. an unlabelled image folder). The grid is one mosaic image in
    one axes (dozens of subplots take seconds to lay out); the PNG is exactly
    ``(k + 1) * (cell_w + gap)`` by ``Q * (cell_px + title + gap)`` pixels.

    Args:
        queries: Q images (PIL or ``(H, W[, C])`` uint8 arrays).
        neighbours: Q rows of up to k images.
        path: PNG to write (None: only return the figure).
        query_labels: Q labels (None entries: unknown).
        neighbour_labels: (Q, k) labels.
        scores: (Q, k) cosine similarities, shown above each neighbour.
        query_titles: Q titles for the query cells (default ``query`` + its label).
        cell_px: image height in pixels; the width follows the first query's aspect.
        border_px: border thickness in pixels.
    """
    n_q = len(queries)
    if n_q == 0 or len(neighbours) != n_q:
        raise ValueError(f"{n_q} queries but {len(neighbours)} neighbour rows")
    k = max(len(row) for row in neighbours)
    first = queries[0]
    h0, w0 = (first.height, first.width) if isinstance(first, Image.Image) else first.shape[:2]
    cell_w = int(min(max(cell_px * w0 / h0, cell_px / 2), cell_px * 3))
    title_px, gap = 26, 8
    box_h, box_w = cell_px + 2 * border_px, cell_w + 2 * border_px
    step_y, step_x = box_h + title_px + gap, box_w + gap
    mosaic = np.full((n_q * step_y + gap, (k + 1) * step_x + gap, 3), 255, dtype=np.uint8)
    texts: list[tuple[float, float, str, str]] = []

    def place(row: int, col: int, image: ImageLike, colour: str, title: str) -> None:
        y, x = row * step_y + gap + title_px, col * step_x + gap
        mosaic[y:y + box_h, x:x + box_w] = np.round(np.asarray(to_rgb(colour)) * 255)
        mosaic[y + border_px:y + border_px + cell_px, x + border_px:x + border_px + cell_w] = (
            _rgb_cell(image, cell_px, cell_w))
        texts.append((x + box_w / 2, y - 2, title, colour if colour != UNKNOWN else "black"))

    for i in range(n_q):
        q_label = query_labels[i] if query_labels is not None else None
        place(i, 0, queries[i], QUERY,
              query_titles[i] if query_titles is not None
              else "query" + (f"\nclass {q_label}" if q_label is not None else ""))
        for j, image in enumerate(neighbours[i]):
            n_label = neighbour_labels[i][j] if neighbour_labels is not None else None
            title = f"{j + 1}: {float(scores[i][j]):.3f}" if scores is not None else f"{j + 1}"
            if n_label is not None:
                title += f"\nclass {n_label}"
            place(i, j + 1, image, border_colour(q_label, n_label), title)

    dpi = 100
    fig = Figure(figsize=(mosaic.shape[1] / dpi, mosaic.shape[0] / dpi), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_axis_off()
    for x, y, text, colour in texts:
        ax.text(x, y, text, ha="center", va="bottom", fontsize=7, color=colour,
                linespacing=1.1)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi)  # no bbox_inches: the PNG is the mosaic, pixel for pixel
    return fig


def plot_retrieval_examples(result: RetrievalResult, query_items: Sequence | np.ndarray,
                            reference_items: Sequence | np.ndarray | None,
                            reference_labels: np.ndarray | None = None,
                            path: str | Path | None = None, *, n_queries: int = 8, k: int = 5,
                            image_mode: str = "RGB", on_error: str = "fail") -> Figure:
    """A :func:`retrieval_grid` of ``n_queries`` evenly spaced queries among those whose
    neighbours a kNN result kept.

    Args:
        result: the kNN result of the metrics (:func:`see_dml.metrics.evaluate_retrieval`
            keeps a few evenly spaced queries, :func:`see_dml.metrics.retrieve` all).
        query_items: the query split's items (paths or image array).
        reference_items: the reference split's items; None in all-vs-all mode (= queries).
        reference_labels: (R,) reference labels; default the query labels (all-vs-all).
        n_queries, k: grid rows and neighbours per row.
        image_mode: PIL mode of the dataset's images (``L`` for digits).
        on_error: the dataset's policy for unreadable images (see :func:`split_image`).
    """
    from see_dml.metrics import spread_rows

    ref_items = query_items if reference_items is None else reference_items
    ref_labels = result.query_labels if reference_labels is None else reference_labels
    picked = spread_rows(len(result.rows), n_queries)  # positions among the kept rows
    rows = result.rows[picked]
    k = min(k, result.k)
    idx = result.indices[picked, :k]
    return retrieval_grid(
        [split_image(query_items, r, image_mode, on_error) for r in rows],
        [[split_image(ref_items, j, image_mode, on_error) for j in row] for row in idx],
        path,
        query_labels=[result.query_labels[r] for r in rows],
        neighbour_labels=[[ref_labels[j] for j in row] for row in idx],
        scores=result.similarities[picked, :k],
    )

"""Plots from hand-made embeddings and metrics: files written, curves and borders right."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from helpers.embedding_fixtures import unit_clusters
from see_dml.evaluation.plots import (
    QUERY,
    RIGHT,
    UNKNOWN,
    WRONG,
    border_colour,
    plot_projection,
    plot_recall_curve,
    plot_retrieval_examples,
    project_2d,
    recall_curves,
    retrieval_grid,
)
from see_dml.metrics import retrieve


def _pixels(path, colour: str) -> int:
    with Image.open(path) as img:
        rgb = np.asarray(img.convert("RGB")).reshape(-1, 3).astype(int)
    target = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(rgb - target).sum(axis=1) <= 6).sum())


def test_projection_pca_separates_clusters(tmp_path):
    emb, labels = unit_clusters()
    path = tmp_path / "proj.png"
    fig = plot_projection(emb, labels, path)
    assert isinstance(fig, Figure) and path.stat().st_size > 1000
    xy = project_2d(emb, "pca")
    assert xy.shape == (len(emb), 2)
    # Class centres lie far apart relative to the spread inside a class.
    centres = np.stack([xy[labels == c].mean(0) for c in range(4)])
    spread = max(np.linalg.norm(xy[labels == c] - centres[c], axis=1).mean() for c in range(4))
    gaps = np.linalg.norm(centres[:, None] - centres[None], axis=2)[np.triu_indices(4, 1)]
    assert np.median(gaps) > 2 * spread


def test_projection_subsamples(tmp_path):
    emb, labels = unit_clusters(per_class=10)
    fig = plot_projection(emb, labels, tmp_path / "sub.png", max_points=30)
    assert len(fig.axes[0].collections[0].get_offsets()) == 30


def test_tsne_and_the_umap_fallback(tmp_path, monkeypatch):
    emb, labels = unit_clusters(per_class=5)
    monkeypatch.setitem(sys.modules, "umap", None)  # the 'umap' extra absent
    with pytest.warns(UserWarning, match=r"pip install 'see-dml\[umap\]'"):
        plot_projection(emb, labels, tmp_path / "umap.png", "umap")
    assert (tmp_path / "umap.png").stat().st_size > 1000


@pytest.mark.slow  # umap-learn compiles its kernels with numba on first use
def test_umap_projection_with_the_extra(tmp_path):
    pytest.importorskip("umap")
    emb, labels = unit_clusters(per_class=8)
    xy = project_2d(emb, "umap")
    assert xy.shape == (len(emb), 2) and np.isfinite(xy).all()


def test_projection_rejects_unknown_method():
    with pytest.raises(ValueError, match="plots.projection"):
        project_2d(np.zeros((3, 2)), "mds")


def test_recall_curve_from_a_hand_made_metrics_dict(tmp_path):
    metrics = {"test/recall@1": 0.5, "test/recall@2": 0.6, "test/recall@4": 0.75,
               "test/recall@8": 0.9, "test_final/recall@1": 0.45, "test_final/recall@8": 0.8,
               "test/map@r": 0.3, "best_checkpoint": "x.ckpt", "epochs": 3}
    assert recall_curves(metrics) == {"test": ([1, 2, 4, 8], [0.5, 0.6, 0.75, 0.9]),
                                      "test_final": ([1, 8], [0.45, 0.8])}
    path = tmp_path / "recall.png"
    fig = plot_recall_curve(metrics, path)
    assert path.stat().st_size > 1000
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    curves = {line.get_label(): line.get_ydata().tolist() for line in ax.get_lines()}
    assert curves["test"] == pytest.approx([50, 60, 75, 90])
    assert recall_curves({"recall@1": 0.2, "recall@10": 0.5}) == {"": ([1, 10], [0.2, 0.5])}
    with pytest.raises(ValueError, match="recall@K"):
        plot_recall_curve({"map@r": 0.1}, tmp_path / "none.png")


def test_border_colours():
    assert border_colour(3, 3) == RIGHT and border_colour("3", 3) == RIGHT
    assert border_colour(3, 4) == WRONG
    assert border_colour(None, 3) == UNKNOWN and border_colour(3, None) == UNKNOWN


def test_retrieval_grid_borders_and_size(tmp_path):
    rng = np.random.default_rng(0)
    # Dark images: no pixel can be mistaken for a border colour.
    images = [rng.integers(0, 60, (28, 56), dtype=np.uint8) for _ in range(6)]
    path = tmp_path / "grid.png"
    retrieval_grid(images[:2], [images[2:5], images[3:6]], path,
                   query_labels=[1, None], neighbour_labels=[[1, 2, 1], [1, 1, 1]],
                   scores=[[0.9, 0.8, 0.7], [0.6, 0.5, 0.4]])
    with Image.open(path) as img:
        width, height = img.size
    assert width > height > 2 * 96  # 2 rows of 4 cells, cells twice as wide as tall
    # Row 1: two right, one wrong; row 2 (unlabelled query): three unknown; both queries blue.
    borders = {c: _pixels(path, c) for c in (RIGHT, WRONG, UNKNOWN, QUERY)}
    assert all(n > 0 for n in borders.values()), borders
    assert borders[RIGHT] == pytest.approx(2 * borders[WRONG], rel=0.05)
    assert borders[UNKNOWN] == pytest.approx(3 * borders[WRONG], rel=0.05)


def test_retrieval_examples_from_a_knn_result(tmp_path):
    emb, labels = unit_clusters(per_class=6)
    items = np.random.default_rng(1).integers(0, 60, (len(emb), 20, 20), dtype=np.uint8)
    result = retrieve(emb, labels, k=3)
    fig = plot_retrieval_examples(result, items, None, path=tmp_path / "ex.png",
                                  n_queries=4, k=3, image_mode="L")
    assert isinstance(fig, Figure)
    # Well-separated clusters: every neighbour is of the query's class (green only).
    assert _pixels(tmp_path / "ex.png", RIGHT) > 0
    assert _pixels(tmp_path / "ex.png", WRONG) == 0


def test_retrieval_examples_follow_the_datasets_on_error_policy(tmp_path):
    """An unreadable image file: named with on_error=fail, a blank cell with skip."""
    from see_dml.runtime.errors import UnreadableImageError

    emb, labels = unit_clusters(per_class=3)
    paths = []
    for i in range(len(emb)):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (20, 20), (i, 0, 0)).save(paths[-1])
    paths[1].write_text("not an image")
    result = retrieve(emb, labels, k=2)
    with pytest.raises(UnreadableImageError, match="1.png"):
        plot_retrieval_examples(result, paths, None, n_queries=len(emb), k=2)
    fig = plot_retrieval_examples(result, paths, None, path=tmp_path / "grid.png",
                                  n_queries=len(emb), k=2, on_error="skip")
    assert isinstance(fig, Figure) and (tmp_path / "grid.png").exists()

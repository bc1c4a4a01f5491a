"""One evaluation: embeddings -> one kNN search -> result -> report (files, table, metrics)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.embedding_fixtures import unit_clusters
from see_dml.evaluation.report import (
    ReportOptions,
    evaluate_embeddings,
    format_results,
    report,
    write_metrics,
)
from see_dml.metrics import MetricSet, nmi_score, retrieval_metrics


def _fake_dm(items: dict[str, np.ndarray]) -> SimpleNamespace:
    """What :func:`report` reads of a RetrievalDataModule: the splits' raw items."""
    return SimpleNamespace(
        source=SimpleNamespace(name="toy", image_mode="L"),
        eval_dataset=lambda name: SimpleNamespace(split=SimpleNamespace(items=items[name])))


def test_result_of_query_and_gallery_tensors():
    emb, labels = unit_clusters(per_class=6)
    q, g = slice(0, None, 2), slice(1, None, 2)
    result = evaluate_embeddings(
        "test", {"query": (torch.from_numpy(emb[q]), torch.from_numpy(labels[q]),
                           torch.arange(12)),
                 "gallery": (torch.from_numpy(emb[g]), labels[g], np.arange(12))},
        (1, 2, 4), metric_set=MetricSet(nmi=True))
    assert [s.name for s in result.splits] == ["query", "gallery"]
    assert result.query.embeddings.dtype == np.float32 and result.gallery is not None
    np.testing.assert_array_equal(result.gallery.labels, labels[g])
    expected = retrieval_metrics(emb[q], labels[q], emb[g], labels[g], ks=(1, 2, 4))
    assert {k: v for k, v in result.metrics.items() if k != "nmi"} == expected
    # the clustering covers both splits (In-Shop's query + gallery), as training reports it
    assert result.metrics["nmi"] == pytest.approx(nmi_score(
        np.concatenate([emb[q], emb[g]]), np.concatenate([labels[q], labels[g]])))
    assert result.prefixed_metrics()["test/recall@1"] == expected["recall@1"]
    # the neighbour lists of the evenly spaced queries the grid shows, not of all 12
    assert result.knn.indices.shape[0] == len(result.knn.rows) == 8
    assert not result.knn.exclude_self


def test_report_of_a_shortened_evaluation_maps_rows_to_their_images(tmp_path):
    """Rows 0..N-1 of a result are split items ``indices`` (``limit_test_batches``): the
    export names those items and the grid shows their images, not items 0..N-1."""
    emb, labels = unit_clusters(n_classes=3, per_class=4)
    kept = np.arange(1, 24, 2)  # every other item of a 24-item split was evaluated
    items = np.zeros((24, 8, 8), dtype=np.uint8)  # black: never evaluated...
    items[kept] = 128  # ...grey: evaluated
    result = evaluate_embeddings("test", {"test": (emb[:12], labels[:12], kept)}, (1, 2))
    done = report(result, _fake_dm({"test": items}), tmp_path,
                  ReportOptions(projection="pca", grid_queries=4, grid_k=3))
    assert sorted(p.name for p in done.files) == [
        "embeddings_test.npz", "projection_test.png", "recall_at_k.png",
        "retrieval_grid_test.png"]
    np.testing.assert_array_equal(np.load(tmp_path / "embeddings_test.npz")["indices"], kept)
    with Image.open(tmp_path / "retrieval_grid_test.png") as img:
        rgb = np.asarray(img.convert("RGB"))
    assert (rgb == 128).all(axis=2).sum() > 0
    assert (rgb == 0).all(axis=2).sum() == 0  # no image of an item that was not evaluated
    assert done.metrics == result.prefixed_metrics()
    assert done.table.splitlines()[2].startswith("| test | ")


def test_report_without_exports_or_plots_writes_nothing(tmp_path):
    emb, labels = unit_clusters(per_class=6)
    result = evaluate_embeddings("val", {"val": (emb, labels, np.arange(len(emb)))}, (1,))
    done = report(result, _fake_dm({}), tmp_path / "out",
                  ReportOptions(export=False, plots=False), row_name="last.ckpt")
    assert done.files == [] and not (tmp_path / "out").exists()
    assert "| last.ckpt | " in done.table
    with pytest.raises(ValueError, match="npz or parquet"):
        ReportOptions(format="csv")


def test_write_metrics_and_table(tmp_path):
    metrics = {"test/recall@1": 0.5, "test/recall@2": 0.75, "test/map@r": 0.25,
               "test/r_precision": 0.3, "epochs": 2}
    path = write_metrics(tmp_path / "run", metrics)
    assert path == tmp_path / "run" / "metrics.json"
    saved = json.loads(path.read_text())
    # the metrics, and what produced them (code, libraries, devices: tests/test_provenance.py)
    assert {k: v for k, v in saved.items() if not k.startswith("provenance/")} == metrics
    assert {k for k in saved if k.startswith("provenance/")} >= {"provenance/commit",
                                                                "provenance/device"}
    assert list(saved) == sorted(saved)
    assert format_results(metrics).splitlines() == [
        "| weights | R@1 | R@2 | MAP@R | RP |", "|---|---|---|---|---|",
        "| selected (val) | 50.00 | 75.00 | 25.00 | 30.00 |"]

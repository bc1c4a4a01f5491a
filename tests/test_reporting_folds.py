"""The k-fold report (``python -m see_dml.reporting folds``): each fold model's metrics, their
mean ± std, and the metrics of their concatenated embedding, on embeddings of known geometry."""

from __future__ import annotations

import json

import numpy as np
import pytest

from see_dml.evaluation.embedding_files import save_embeddings
from see_dml.reporting.__main__ import main as report
from see_dml.reporting.folds import concatenate, fold_metrics


def _two_views(per_class: int = 10, noise: float = 0.01, seed: int = 0):
    """4 classes seen by two models that each tell only two groups apart: model A the classes
    {0, 1} from {2, 3}, model B {0, 2} from {1, 3}. Each alone confuses a class with one
    other; side by side they tell all four apart."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(4), per_class)
    e = np.eye(2)
    a = e[labels // 2] + noise * rng.normal(size=(len(labels), 2))
    b = e[labels % 2] + noise * rng.normal(size=(len(labels), 2))
    return a.astype(np.float32), b.astype(np.float32), labels


def test_concatenation_is_unit_rows_of_unit_parts():
    a, b, _ = _two_views()
    joined = concatenate([a * 3.0, b])  # each part is normalised first: scale does not count
    assert joined.shape == (len(a), 4)
    np.testing.assert_allclose(np.linalg.norm(joined, axis=1), 1.0, rtol=1e-6)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose(joined, np.hstack([unit(a), unit(b)]) / np.sqrt(2), rtol=1e-5)


def test_concatenated_models_separate_what_each_confuses():
    a, b, labels = _two_views()
    result = fold_metrics([{"test": (a, labels)}, {"test": (b, labels)}], ks=(1, 2))
    # alone: the 19 others of the two merged classes look alike; R@1 is about 9 of 19
    for metrics in result["separate"]:
        assert metrics["map@r"] < 0.6
        assert metrics["recall@1"] < 0.8
    assert result["concatenated"]["recall@1"] == pytest.approx(1.0)
    assert result["concatenated"]["map@r"] == pytest.approx(1.0)
    sep = [m["map@r"] for m in result["separate"]]
    assert result["mean"]["map@r"] == pytest.approx(np.mean(sep))
    assert result["std"]["map@r"] == pytest.approx(np.std(sep, ddof=1))


def test_models_of_other_test_sets_are_refused():
    a, b, labels = _two_views()
    with pytest.raises(ValueError, match="labels differ"):
        fold_metrics([{"test": (a, labels)}, {"test": (b, labels[::-1].copy())}])


def test_folds_command_reads_the_runs_exports(tmp_path, capsys):
    a, b, labels = _two_views()
    runs = []
    for i, emb in enumerate((a, b)):
        run = tmp_path / f"fold{i}"
        run.mkdir()
        order = np.random.default_rng(i).permutation(len(labels))  # rows in any order
        save_embeddings(run / "embeddings_test.npz", emb[order], labels[order],
                        order.astype(np.int64), indices=order.astype(np.int64))
        (run / "metrics.json").write_text(json.dumps({"test/recall@1": 0.0,
                                                      "test/recall@2": 0.0}))
        # the metric set the folds were trained with: the table's columns
        (run / "config.yaml").write_text(json.dumps({
            "dataset": {"folds": 2, "fold": i},
            "metrics": {"_target_": "see_dml.metrics.MetricSet", "precision_at": [1, 5]}}))
        runs.append(str(run))
    assert report(["folds", *runs, "--out", str(tmp_path / "folds.md")]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "| | R@1 | R@2 | P@5 | MAP@R | RP |"
    assert "| fold 1 of 2 (fold1) | " in out
    assert "| **concatenated (2 × d)** | 100.00 | 100.00 | 100.00 |" in out
    saved = json.loads((tmp_path / "folds.json").read_text())
    assert saved["concatenated"]["map@r"] == pytest.approx(1.0)


def test_folds_command_without_exports_is_one_line(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    with pytest.raises(SystemExit) as stop:
        report(["folds", str(tmp_path / "run")])
    assert stop.value.code == 2
    assert "no embeddings_test.npz" in capsys.readouterr().err

"""``python -m see_dml.evaluate``, the export helpers and the end-of-training export callback."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import FAST, compose_config
from helpers.dataset_fixtures import make_fixture
from see_dml.checkpoints.read import read_checkpoint
from see_dml.evaluate import evaluate
from see_dml.evaluation.embedding_files import save_embeddings
from see_dml.metrics import retrieval_metrics
from see_dml.module import DMLModule, load_module_from_checkpoint
from see_dml.runtime.errors import CheckpointError, ConfigError
from see_dml.serving.inference import resolve_dataset_config
from see_dml.train import train

TEST_IMAGES = 20 * 20  # Double-MNIST: 20 test classes x images_per_class=20


@pytest.fixture(scope="module")
def trained(tiny_run) -> dict:
    """The session's tiny Double-MNIST run (the default config, FAST overrides)."""
    return tiny_run


@pytest.fixture(scope="module")
def cli(trained) -> dict:
    """``python -m see_dml.evaluate`` as a user types it, on the checkpoint train tested."""
    out = trained["root"] / "eval_outputs"
    proc = subprocess.run(
        [sys.executable, "-m", "see_dml.evaluate", f"ckpt_path={trained['best']}",
         f"paths.output_dir={out}", "export.enabled=true", "export.format=parquet",
         "plots.enabled=true", "progress=false"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("Output directory: ")
    out_dir = Path(last.removeprefix("Output directory: "))
    assert out_dir.is_relative_to((out / "evaluate" / "runs").resolve())
    return {"stdout": proc.stdout, "out_dir": out_dir}


def _evaluate_cfg(*overrides: str):
    return compose_config([*overrides, "progress=false"], config_name="evaluate")


@pytest.mark.slow  # python -m see_dml.evaluate as a subprocess
def test_cli_reproduces_the_test_metrics_of_training(trained, cli):
    out_dir = cli["out_dir"]
    saved = json.loads((out_dir / "metrics.json").read_text())
    reported = {k: v for k, v in trained["metrics"].items()
                if k.startswith("test/") and isinstance(v, float)}
    assert {"test/recall@1", "test/recall@8", "test/map@r", "test/r_precision"} <= set(reported)
    for key, value in reported.items():
        assert saved[key] == pytest.approx(value, abs=1e-6), key
    assert saved["num_images"] == {"test": TEST_IMAGES}
    assert "| R@1 | R@2 | R@4 | R@8 | MAP@R |" in (out_dir / "metrics.md").read_text()
    assert "R@1" in cli["stdout"]


@pytest.mark.slow  # python -m see_dml.evaluate as a subprocess
def test_export_and_plots(cli):
    pq = pytest.importorskip("pyarrow.parquet")  # the 'parquet' extra
    out_dir = cli["out_dir"]
    data = np.load(out_dir / "embeddings_test.npz")
    emb = data["embeddings"]
    assert emb.dtype == np.float32 and emb.shape == (TEST_IMAGES, 16)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(data["indices"], np.arange(TEST_IMAGES))
    assert "paths" not in data  # in-memory dataset: indices identify the images
    assert len(np.unique(data["labels"])) == 20
    table = pq.read_table(out_dir / "embeddings_test.parquet")
    assert table.num_rows == TEST_IMAGES
    np.testing.assert_allclose(np.stack(table["embedding"].to_numpy(zero_copy_only=False)),
                               emb)
    for name in ("projection_test.png", "recall_at_k.png", "retrieval_grid_test.png"):
        with Image.open(out_dir / name) as img:
            assert img.width > 100 and img.height > 100, name


@pytest.mark.slow  # python -m see_dml.evaluate as a subprocess
def test_end_of_training_callback_exported_the_tested_weights(trained, cli):
    """The default EmbeddingExport callback wrote the selected checkpoint's test embeddings."""
    run_dir = trained["run_dir"]
    exported = np.load(run_dir / "embeddings_test.npz")
    for name in ("projection_test.png", "recall_at_k.png", "retrieval_grid_test.png"):
        assert (run_dir / name).stat().st_size > 0, name
    again = np.load(cli["out_dir"] / "embeddings_test.npz")
    np.testing.assert_allclose(exported["embeddings"], again["embeddings"], atol=1e-5)
    np.testing.assert_array_equal(exported["labels"], again["labels"])
    np.testing.assert_array_equal(exported["indices"], again["indices"])


def test_validation_split_matches_checkpoint_selection(trained, tmp_path):
    report = evaluate(_evaluate_cfg(f"ckpt_path={trained['best']}", f"paths.run_dir={tmp_path}",
                                    "split=val"))
    assert report["num_images"] == {"val": 16 * 20}
    assert report["val/map@r"] == pytest.approx(trained["metrics"]["best/val/map@r"], abs=1e-6)


def test_torch_knn_backend_gives_the_faiss_numbers(trained, tmp_path):
    report = evaluate(_evaluate_cfg(f"ckpt_path={trained['best']}", f"paths.run_dir={tmp_path}",
                                    "knn_backend=torch"))
    # Same metrics; a matmul and faiss round cosines differently in the last bits, which can
    # swap two neighbours whose scores tie to ~1e-7 (this tiny model makes such ties), so
    # the rank-weighted MAP@R may move in the 6th digit (measured 5e-6).
    for key in ("test/recall@1", "test/recall@8", "test/map@r", "test/r_precision"):
        assert report[key] == pytest.approx(trained["metrics"][key], abs=1e-4), key
    with pytest.raises(ConfigError, match="knn_backend"):
        evaluate(_evaluate_cfg(f"ckpt_path={trained['best']}", "knn_backend=annoy"))


def test_the_metric_set_is_evaluate_s_config_too(trained, tmp_path):
    """``metrics.precision_at=[10] metrics.map_at=[10]``: evaluate adds precision@10 and
    map@10 (and drops precision@1: the list replaces the default) to metrics.json and its
    table, from the same search as the metrics it always computes."""
    report = evaluate(_evaluate_cfg(f"ckpt_path={trained['best']}", f"paths.run_dir={tmp_path}",
                                    "metrics.precision_at=[10]", "metrics.map_at=[10]"))
    assert {"test/precision@10", "test/map@10"} <= set(report)
    assert "test/precision@1" not in report
    assert report["test/map@r"] == pytest.approx(trained["metrics"]["test/map@r"], abs=1e-6)
    table = (tmp_path / "metrics.md").read_text()
    assert "| weights | R@1 | R@2 | R@4 | R@8 | P@10 | mAP@10 | MAP@R | RP |" in table
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["test/precision@10"] == report["test/precision@10"]


def test_nmi_option(trained, tmp_path):
    report = evaluate(_evaluate_cfg(f"ckpt_path={trained['best']}", f"paths.run_dir={tmp_path}",
                                    "metrics.nmi=true"))
    assert 0.0 <= report["test/nmi"] <= 1.0
    assert "NMI" in (tmp_path / "metrics.md").read_text()
    assert report["test/map@r"] == pytest.approx(trained["metrics"]["test/map@r"], abs=1e-6)


def test_bad_ckpt_path_exits_naming_the_key(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "see_dml.evaluate", f"ckpt_path={tmp_path / 'nope.ckpt'}",
         f"paths.output_dir={tmp_path}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "ckpt_path" in proc.stderr


def test_unreadable_or_foreign_checkpoint_names_the_key(tmp_path):
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="ckpt_path=.*not a readable checkpoint"):
        read_checkpoint(garbage)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="ckpt_path=.*see_dml_config"):
        load_module_from_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="ckpt_path is required"):
        read_checkpoint(None)


def test_dataset_overrides_change_the_checkpoints_dataset(trained):
    _, ckpt_cfg = load_module_from_checkpoint(trained["last"])
    # Only a key given: the checkpoint's dataset with that key changed.
    cfg = _evaluate_cfg("ckpt_path=x", "dataset.root=/elsewhere")
    ds = resolve_dataset_config(cfg, ckpt_cfg)
    assert ds.root == "/elsewhere"
    assert ds._target_ == ckpt_cfg.dataset._target_
    assert ds.images_per_class == 20 and ds.seed == ckpt_cfg.seed
    # Nothing given: exactly the checkpoint's dataset.
    assert resolve_dataset_config(_evaluate_cfg("ckpt_path=x"), ckpt_cfg) == ckpt_cfg.dataset
    # A dataset chosen: that dataset's config, ${seed} taken from the checkpoint.
    other = resolve_dataset_config(_evaluate_cfg("ckpt_path=x", "dataset=mnist",
                                                 "dataset.strict_counts=false"), ckpt_cfg)
    assert other._target_.endswith(".MNIST") and other.strict_counts is False
    assert other.seed == ckpt_cfg.seed


def test_save_embeddings_with_paths(tmp_path):
    emb = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    paths = [tmp_path / f"{i}.png" for i in range(3)]
    out = save_embeddings(tmp_path / "e", emb, np.array([5, 5, 7]), paths, "npz",
                          indices=np.array([2, 0, 1]))
    data = np.load(out)
    assert out.name == "e.npz"
    assert list(data["paths"]) == [str(p) for p in paths]
    np.testing.assert_array_equal(data["indices"], [2, 0, 1])
    with pytest.raises(ValueError, match="export.format"):
        save_embeddings(tmp_path / "e", emb, np.zeros(3), paths, "csv")


def test_query_gallery_dataset_with_image_paths(tmp_path):
    """In-Shop layout (fixture files): query vs gallery metrics, and paths in the export.

    An untrained checkpoint written by hand is enough: what is checked is the plumbing.
    """
    fx = make_fixture("inshop", tmp_path / "data", n_train=4, n_test=3, per_item=4)
    train_cfg = compose_config([*FAST, "dataset=inshop", f"paths.data_dir={tmp_path / 'data'}",
                                "dataset.strict_counts=false", "model.backbone.in_chans=3",
                                "data.transforms.image_size=32", "data.transforms.resize=32",
                                f"paths.run_dir={tmp_path / 'run'}"])
    model = DMLModule.from_config(train_cfg, num_classes=3)
    ckpt = tmp_path / "untrained.ckpt"
    torch.save({"state_dict": model.state_dict(), "see_dml_config": model.config,
                "see_dml_num_classes": 3}, ckpt)

    report = evaluate(_evaluate_cfg(f"ckpt_path={ckpt}", f"paths.run_dir={tmp_path / 'eval'}",
                                    "export.enabled=true", "plots.enabled=true",
                                    "plots.grid_k=3"))
    assert report["num_images"] == {"query": 6, "gallery": 6}
    q, g = (np.load(tmp_path / "eval" / f"embeddings_{s}.npz") for s in ("query", "gallery"))
    assert list(q["paths"]) == [str(p) for p in fx.images["query"]]
    assert list(g["paths"]) == [str(p) for p in fx.images["gallery"]]
    expected = retrieval_metrics(q["embeddings"], q["labels"], g["embeddings"], g["labels"],
                                 ks=(1, 10, 20, 30, 40, 50))
    for key in ("recall@1", "recall@10", "map@r", "r_precision"):
        assert report[f"test/{key}"] == pytest.approx(expected[key], abs=1e-6), key
    # plots are named after the query split, as the exports are: no "test" split here
    assert sorted(p.name for p in (tmp_path / "eval").glob("*.png")) == [
        "projection_query.png", "recall_at_k.png", "retrieval_grid_query.png"]


@pytest.mark.parametrize("loss", ["proxy_anchor", "norm_softmax", "arcface"])
def test_checkpoint_without_class_count_reads_it_from_the_loss_weights(tmp_path, loss):
    """Checkpoints from before ``see_dml_num_classes``: the count comes from the class
    weights, ``(C, d)`` proxies or the softmax family's ``(d, C)`` W."""
    cfg = compose_config([*FAST, f"loss={loss}", f"paths.run_dir={tmp_path}"])
    model = DMLModule.from_config(cfg, num_classes=7)  # 7 classes, 16-d: the two axes differ
    ckpt = tmp_path / "old.ckpt"
    torch.save({"state_dict": model.state_dict(), "see_dml_config": model.config}, ckpt)
    module, _ = load_module_from_checkpoint(ckpt)
    assert module.criterion.num_classes == 7
    for key, value in model.state_dict().items():
        assert torch.equal(module.state_dict()[key], value), key


def test_export_has_one_projection_default():
    """The callback built without arguments, training's config and evaluate's agree."""
    from see_dml.callbacks.embedding_export import EmbeddingExport

    default = inspect.signature(EmbeddingExport).parameters["projection"].default
    train_cfg = compose_config([])
    eval_cfg = compose_config(["ckpt_path=x"], config_name="evaluate")
    assert default == train_cfg.callbacks.embedding_export.projection == eval_cfg.plots.projection


class CountSearches:
    """Wraps the (chunked) kNN search behind every metric and plot, counting its calls."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import see_dml.metrics.retrieval as retrieval

        self.calls = 0
        search = retrieval.knn_chunks

        def counted(*args, **kwargs):
            self.calls += 1
            return search(*args, **kwargs)

        monkeypatch.setattr(retrieval, "knn_chunks", counted)


def test_export_callback_on_query_gallery_dataset(make_cfg, tmp_path, monkeypatch):
    pq = pytest.importorskip("pyarrow.parquet")  # the 'parquet' extra
    """``callbacks=export`` on In-Shop: checkpoints still selected and saved, query and
    gallery exported (paths, Parquet too), plots named after the query split, and one kNN
    search per evaluation: the grid reuses the metrics' neighbours."""
    fx = make_fixture("inshop", tmp_path / "data", n_train=6, n_test=4, per_item=4)
    cfg = make_cfg("dataset=inshop", f"paths.data_dir={tmp_path / 'data'}",
                   "dataset.val_fraction=0.2", "dataset.strict_counts=false",
                   "data.transforms.image_size=32", "data.transforms.resize=36",
                   "data.batch_size=8", "data.m_per_class=2", "data.eval_batch_size=16",
                   "callbacks=export", "callbacks.embedding_export.projection=pca",
                   "test_final=false")
    searches = CountSearches(monkeypatch)
    metrics = train(cfg)
    assert searches.calls == 2  # the validation epoch's and the test's
    run_dir = Path(cfg.paths.run_dir)
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    assert Path(metrics["best_checkpoint"]).parent == run_dir / "checkpoints"
    assert "best/val/map@r" in metrics
    assert sorted(p.name for p in run_dir.glob("*.png")) == [
        "projection_query.png", "recall_at_k.png", "retrieval_grid_query.png"]
    exported = {}
    for split in ("query", "gallery"):
        data = np.load(run_dir / f"embeddings_{split}.npz")
        assert list(data["paths"]) == [str(p) for p in fx.images[split]]
        table = pq.read_table(run_dir / f"embeddings_{split}.parquet")
        np.testing.assert_array_equal(
            np.stack(table["embedding"].to_numpy(zero_copy_only=False)), data["embeddings"])
        exported[split] = data
    # the exported embeddings are those the test metrics were computed on
    q, g = exported["query"], exported["gallery"]
    expected = retrieval_metrics(q["embeddings"], q["labels"], g["embeddings"], g["labels"],
                                 ks=(1, 10, 20, 30, 40, 50))
    for key in ("recall@1", "recall@10", "map@r", "r_precision"):
        assert metrics[f"test/{key}"] == pytest.approx(expected[key], abs=1e-6), key


def test_a_diverged_checkpoint_gets_no_metrics_and_ignored_keys_are_named(trained, tmp_path,
                                                                          caplog):
    """NaN weights embed to NaN: evaluate refuses to compute metrics (they would look like a
    chance-level result), and a +model.* key evaluate does not use is named in a warning."""
    ckpt = torch.load(trained["last"], map_location="cpu", weights_only=False)
    ckpt["state_dict"]["head.proj.weight"].fill_(float("nan"))
    broken = tmp_path / "diverged.ckpt"
    torch.save(ckpt, broken)
    cfg = _evaluate_cfg(f"ckpt_path={broken}", f"paths.run_dir={tmp_path / 'out'}",
                        "+model.embed_dim=3")
    with caplog.at_level("WARNING"), pytest.raises(FloatingPointError,
                                                   match="embeddings are NaN, inf or zero"):
        evaluate(cfg)
    assert "model.embed_dim" in caplog.text
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_evaluate_runs_with_the_threads_the_checkpoint_was_trained_with(trained, tmp_path):
    """Whatever this process's torch threads, evaluate embeds with the checkpoint's
    (``threads``), as train's test did; the threads are set back after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        report = evaluate(_evaluate_cfg(f"ckpt_path={trained['best']}",
                                        f"paths.run_dir={tmp_path}"))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["provenance/threads"] == trained["cfg"].threads == 1
    for key in ("test/recall@1", "test/map@r", "test/r_precision"):  # (train's: float32)
        assert report[key] == pytest.approx(trained["metrics"][key], abs=1e-7), key

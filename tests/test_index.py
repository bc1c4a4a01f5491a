"""``python -m see_dml.index build|add`` and ``see_dml.retrieve index.path=...``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from conftest import FAST, compose_config
from see_dml.index import run
from see_dml.module import DMLModule
from see_dml.retrieve import retrieve_images
from see_dml.runtime.errors import IndexFileError
from see_dml.serving.gallery_index import load_index, sidecar_path

CLASSES, PER_CLASS = 3, 3


def _checkpoint(root: Path, name: str, *overrides: str, run: str | None = None,
                weights_seed: int = 0) -> Path:
    """A checkpoint as training writes it (the module's own ``on_save_checkpoint``) in run
    ``run`` (default: ``name``); the weights need no training for an index to find an image
    it holds, and another ``weights_seed`` stands for another epoch of the same run."""
    cfg = compose_config([*FAST, f"paths.run_dir={root / (run or name)}",
                          "dataset.images_per_class=20",
                          f"paths.cache_dir={root.parent / 'see_dml_cache'}", *overrides])
    torch.manual_seed(weights_seed)
    module = DMLModule.from_config(cfg, num_classes=4, source=instantiate(cfg.dataset))
    ckpt = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(ckpt)
    torch.save(ckpt, root / f"{name}.ckpt")
    return root / f"{name}.ckpt"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Checkpoints (``model``; ``epoch``: the same run, other weights; ``other``: another
    config; ``narrow``: 8-d), and two folders
    ``<class>/<test index>.png`` of test images: ``first`` (3 classes) and ``more`` (2 more)."""
    root = tmp_path_factory.mktemp("index")
    out = {"model": _checkpoint(root, "model"), "other": _checkpoint(root, "other", "seed=1"),
           "epoch": _checkpoint(root, "epoch", run="model", weights_seed=1),
           "narrow": _checkpoint(root, "narrow", "model.embed_dim=8")}
    cfg = compose_config([*FAST, "dataset.images_per_class=20",
                          f"paths.cache_dir={root.parent / 'see_dml_cache'}"])
    split = instantiate(cfg.dataset).splits()["test"]
    for folder, classes in (("first", split.classes[:CLASSES]),
                            ("more", split.classes[CLASSES:CLASSES + 2])):
        for c in classes:
            for i in np.flatnonzero(split.labels == c)[:PER_CLASS]:
                (root / folder / str(c)).mkdir(parents=True, exist_ok=True)
                Image.fromarray(split.items[i]).save(root / folder / str(c) / f"{i}.png")
        out[folder] = root / folder
    return out


def _index(action: str, *overrides: str) -> dict:
    return run(compose_config([f"action={action}", "progress=false", *overrides],
                              config_name="index"))


def _retrieve(*overrides: str) -> dict:
    return retrieve_images(compose_config([*overrides, "progress=false"],
                                          config_name="retrieve"))


def test_retrieve_against_a_saved_index_finds_what_embedding_the_gallery_finds(setup, tmp_path):
    path = tmp_path / "gallery.faiss"
    meta = _index("build", f"ckpt_path={setup['model']}", f"gallery={setup['first']}",
                  f"index.path={path}")
    side = json.loads(sidecar_path(path).read_text())
    assert meta["kind"] == "flat" and side["count"] == CLASSES * PER_CLASS == len(side["items"])
    assert side["embed_dim"] == 16 and side["preprocessing"]["input_size"] == [28, 56]
    first = side["items"][0]
    assert Path(first["path"]).is_file() and first["label"] == Path(first["path"]).parent.name
    common = [f"ckpt_path={setup['model']}", f"query={setup['first']}", "k=4"]
    # gallery= names no image at all: with index.path only the queries are embedded
    saved = _retrieve(*common, f"index.path={path}", f"gallery={tmp_path / 'nowhere'}",
                      f"paths.run_dir={tmp_path / 'saved'}")
    fresh = _retrieve(*common, f"gallery={setup['first']}", f"paths.run_dir={tmp_path / 'new'}")
    for a, b in zip(saved["results"], fresh["results"], strict=True):
        assert a["neighbours"][0]["item"] == str(Path(a["query"]).resolve())
        assert [Path(n["item"]).name for n in a["neighbours"]] == [
            Path(n["item"]).name for n in b["neighbours"]]
        assert [n["score"] for n in a["neighbours"]] == pytest.approx(
            [n["score"] for n in b["neighbours"]], abs=1e-5)
    assert (tmp_path / "saved" / "retrieval_grid.png").is_file()


def test_hnsw_on_a_split_reports_recall_against_exact(setup, tmp_path):
    path = tmp_path / "test.faiss"
    meta = _index("build", f"ckpt_path={setup['model']}", "gallery=test", f"index.path={path}",
                  "index.kind=hnsw", "index.hnsw_m=8", "index.recall_k=5")
    recall = meta["recall_vs_exact"]
    assert set(recall) == {"queries", "recall@1", "recall@5", "exact/label_recall@1",
                           "approx/label_recall@1"}
    assert recall["recall@1"] >= 0.9 and recall["recall@5"] >= 0.9  # a few hundred rows
    assert 0 < recall["exact/label_recall@1"] <= 1
    assert type(load_index(path).index).__name__ == "IndexHNSWFlat"
    query = sorted(setup["first"].rglob("*.png"))[0]
    report = _retrieve(f"ckpt_path={setup['model']}", f"query={query}", f"index.path={path}",
                       f"paths.run_dir={tmp_path / 'r'}", "k=3")
    best = report["results"][0]["neighbours"][0]
    assert best["item"] == f"test[{query.stem}]" and best["score"] == pytest.approx(1, abs=1e-5)


def test_add_keeps_ids_and_skips_what_is_there(setup, tmp_path):
    path = tmp_path / "gallery.faiss"
    common = [f"ckpt_path={setup['model']}", f"index.path={path}"]
    _index("build", *common, f"gallery={setup['first']}")
    before = load_index(path)
    old_vectors = before.index.reconstruct_n(0, before.index.ntotal)
    added = _index("add", *common, f"gallery={setup['more']}")
    n_old, n_new = CLASSES * PER_CLASS, 2 * PER_CLASS
    assert added == {"added": n_new, "skipped": 0, "first_id": n_old, "count": n_old + n_new}
    after = load_index(path)
    assert after.items[:n_old] == before.items
    np.testing.assert_array_equal(after.index.reconstruct_n(0, n_old), old_vectors)
    assert [it["path"] for it in after.items[n_old:]] == [
        str(p.resolve()) for p in sorted(setup["more"].rglob("*.png"))]
    again = _index("add", *common, f"gallery={setup['first']}")
    assert again == {"added": 0, "skipped": n_old, "first_id": n_old + n_new,
                     "count": n_old + n_new}
    query = sorted(setup["more"].rglob("*.png"))[-1]
    report = _retrieve(f"ckpt_path={setup['model']}", f"query={query}", f"index.path={path}",
                       f"paths.run_dir={tmp_path / 'r'}", "k=2")
    assert report["results"][0]["neighbours"][0]["index"] == n_old + n_new - 1


def test_an_index_of_another_model_is_refused_naming_which(setup, tmp_path):
    path = tmp_path / "gallery.faiss"
    _index("build", f"ckpt_path={setup['model']}", f"gallery={setup['first']}",
           f"index.path={path}")
    common = [f"query={setup['first']}", f"index.path={path}", f"paths.run_dir={tmp_path}"]
    with pytest.raises(IndexFileError, match="another model .*config hash"):
        _retrieve(f"ckpt_path={setup['other']}", *common)
    with pytest.raises(IndexFileError, match="holds 16-d embeddings .* makes 8-d"):
        _retrieve(f"ckpt_path={setup['narrow']}", *common)
    import see_dml.index

    def decode(*args, **kwargs):
        raise AssertionError("the gallery was decoded before the model was checked")

    with pytest.MonkeyPatch.context() as patch, pytest.raises(IndexFileError,
                                                              match="another model"):
        patch.setattr(see_dml.index, "image_files", decode)  # nothing is decoded or embedded
        _index("add", f"ckpt_path={setup['other']}", f"index.path={path}",
               f"gallery={setup['more']}")
    # another epoch of the same run: the config hash agrees, the weights do not
    with pytest.raises(IndexFileError, match="other weights of the same config .*another "
                                             "epoch"):
        _retrieve(f"ckpt_path={setup['epoch']}", *common)
    with pytest.raises(IndexFileError, match="other weights"):
        _index("add", f"ckpt_path={setup['epoch']}", f"index.path={path}",
               f"gallery={setup['more']}")
    # a sidecar from before weights_hash existed is checked on the config alone
    side = path.with_name(path.name + ".json")
    meta = json.loads(side.read_text())
    del meta["weights_hash"]
    side.write_text(json.dumps(meta))
    _retrieve(f"ckpt_path={setup['epoch']}", *common)


def test_corrupt_truncated_or_missing_files_are_one_clear_error(setup, tmp_path):
    path = tmp_path / "gallery.faiss"
    _index("build", f"ckpt_path={setup['model']}", f"gallery={setup['first']}",
           f"index.path={path}")
    data, side = path.read_bytes(), sidecar_path(path).read_text()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexFileError, match="corrupt or truncated"):
        load_index(path)
    path.write_bytes(data)
    sidecar_path(path).write_text(side[:100])
    with pytest.raises(IndexFileError, match="not readable JSON"):
        load_index(path)
    sidecar_path(path).write_text(json.dumps({"version": 1}))
    with pytest.raises(IndexFileError, match="lacks kind"):
        load_index(path)
    sidecar_path(path).unlink()
    with pytest.raises(IndexFileError, match=r"gallery\.faiss\.json does not exist"):
        load_index(path)
    sidecar_path(path).write_text(side)
    assert load_index(path).index.ntotal == CLASSES * PER_CLASS  # whole again: reads


def test_cli_truncated_index_is_one_line(setup, tmp_path):
    """The CLI as typed (``index add``, the action as a word): exit 2, one ``error:`` line."""
    path = tmp_path / "gallery.faiss"
    path.write_bytes(b"\0" * 10)
    sidecar_path(path).write_text(json.dumps({
        "version": 1, "kind": "flat", "embed_dim": 16, "count": 1, "config_hash": "x",
        "index_sha256": "0" * 64, "items": [{"item": "a", "label": None}],
        "preprocessing": {}}))
    proc = subprocess.run(
        [sys.executable, "-m", "see_dml.index", "add", f"ckpt_path={setup['model']}",
         f"index.path={path}", f"gallery={setup['more']}", f"paths.output_dir={tmp_path}"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: index.path=") and "corrupt or truncated" in lines[-1]
    assert "Traceback" not in proc.stderr


def test_build_onto_an_existing_index_needs_overwrite(setup, tmp_path):
    from see_dml.runtime.errors import ConfigError

    path = tmp_path / "gallery.faiss"
    common = [f"ckpt_path={setup['model']}", f"index.path={path}"]
    _index("build", *common, f"gallery={setup['first']}")
    before = path.read_bytes(), sidecar_path(path).read_text()
    with pytest.raises(ConfigError, match=rf"index\.path='{path}' already exists "
                                          rf"\({CLASSES * PER_CLASS} rows.*index\.overwrite=true"):
        _index("build", *common, f"gallery={setup['more']}")
    assert (path.read_bytes(), sidecar_path(path).read_text()) == before  # untouched
    _index("build", *common, f"gallery={setup['more']}", "index.overwrite=true")
    assert load_index(path).index.ntotal == 2 * PER_CLASS  # replaced, as asked

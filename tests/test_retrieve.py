"""``python -m see_dml.retrieve``: folders and splits as query / gallery, JSON and grid."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from PIL import Image

from conftest import compose_config
from see_dml.evaluation.plots import RIGHT, UNKNOWN
from see_dml.retrieve import retrieve_images
from see_dml.runtime.errors import ConfigError
from see_dml.serving.image_sets import list_images

CLASSES, PER_CLASS = 3, 3


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_run) -> dict:
    """The session's tiny Double-MNIST run, and a folder ``<class>/<test index>.png``
    of test images."""
    root = tmp_path_factory.mktemp("retrieve")
    split = instantiate(tiny_run["cfg"].dataset).splits()["test"]
    folder = root / "images"
    for c in split.classes[:CLASSES]:
        for i in np.flatnonzero(split.labels == c)[:PER_CLASS]:
            (folder / str(c)).mkdir(parents=True, exist_ok=True)
            Image.fromarray(split.items[i]).save(folder / str(c) / f"{i}.png")
    return {"ckpt": tiny_run["last"], "folder": folder}


def _retrieve(*overrides: str) -> dict:
    cfg = compose_config([*overrides, "progress=false"], config_name="retrieve")
    return retrieve_images(cfg)


def _pixels(img: Image.Image, colour: str) -> int:
    rgb = np.asarray(img.convert("RGB")).reshape(-1, 3).astype(int)
    target = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(rgb - target).sum(axis=1) <= 6).sum())


def test_folder_against_itself_finds_each_query_first(trained, tmp_path):
    k = 4
    report = _retrieve(f"ckpt_path={trained['ckpt']}", f"query={trained['folder']}",
                       f"gallery={trained['folder']}", f"k={k}", f"paths.run_dir={tmp_path}")
    saved = json.loads((tmp_path / "retrieval.json").read_text())
    assert saved == json.loads(json.dumps(report))
    results = saved["results"]
    assert len(results) == CLASSES * PER_CLASS
    for res in results:
        scores = [nb["score"] for nb in res["neighbours"]]
        assert len(scores) == k
        assert scores == sorted(scores, reverse=True)
        first = res["neighbours"][0]
        assert first["item"] == res["query"] and first["score"] == pytest.approx(1.0, abs=1e-5)
        assert first["correct"] is True and res["label"] == Path(res["query"]).parent.name
    with Image.open(tmp_path / "retrieval_grid.png") as img:
        img.load()
        assert img.format == "PNG"
        rows = CLASSES * PER_CLASS
        assert img.width >= (k + 1) * 96 and img.height >= rows * 96
        assert _pixels(img, RIGHT) > rows * 100  # every row has its green self-match border


def test_torch_backend_finds_the_same_neighbours(trained, tmp_path):
    common = [f"ckpt_path={trained['ckpt']}", f"query={trained['folder']}",
              f"gallery={trained['folder']}", "k=3"]
    faiss_run = _retrieve(*common, f"paths.run_dir={tmp_path / 'faiss'}", "knn_backend=faiss")
    torch_run = _retrieve(*common, f"paths.run_dir={tmp_path / 'torch'}", "knn_backend=torch")
    for a, b in zip(faiss_run["results"], torch_run["results"], strict=True):
        assert a["neighbours"][0]["item"] == b["neighbours"][0]["item"] == a["query"]
        assert [n["score"] for n in a["neighbours"]] == pytest.approx(
            [n["score"] for n in b["neighbours"]], abs=1e-5)
    with pytest.raises(ConfigError, match="knn_backend"):
        _retrieve(*common, "knn_backend=annoy")


def test_image_file_against_a_split(trained, tmp_path, capsys):
    """A PNG written from test image i finds test[i] first; an unlabelled query: grey."""
    query = sorted(trained["folder"].rglob("*.png"))[0]
    _retrieve(f"ckpt_path={trained['ckpt']}", f"query={query}", "gallery=test", "k=5",
              f"paths.run_dir={tmp_path}")
    printed = capsys.readouterr().out
    assert printed.strip().splitlines()[-1] == f"Output directory: {tmp_path.resolve()}"
    assert "| 1 | test[" in printed
    (res,) = json.loads((tmp_path / "retrieval.json").read_text())["results"]
    assert res["label"] is None
    neighbours = res["neighbours"]
    assert len(neighbours) == 5
    assert neighbours[0]["item"] == f"test[{query.stem}]"
    assert neighbours[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert [n["score"] for n in neighbours] == sorted((n["score"] for n in neighbours),
                                                       reverse=True)
    assert all(n["correct"] is None and n["label"] is not None for n in neighbours)
    with Image.open(tmp_path / "retrieval_grid.png") as img:
        assert _pixels(img, UNKNOWN) > 0 and _pixels(img, RIGHT) == 0


def test_cli_bad_query_exits_naming_the_key(tmp_path):
    """The CLI as typed; a typo fails in about a second, before torch is imported."""
    proc = subprocess.run(
        [sys.executable, "-m", "see_dml.retrieve", f"ckpt_path={tmp_path / 'x.ckpt'}",
         "query=test", f"paths.output_dir={tmp_path}"], capture_output=True, text=True,
        timeout=120)
    assert proc.returncode != 0 and "ckpt_path" in proc.stderr


def test_cli_non_image_in_a_folder_is_one_line_naming_the_file(tmp_path):
    """A stray non-image among a folder's images: one ``error:`` line naming the file,
    before the checkpoint is even read (here an empty file: it is never loaded)."""
    folder = tmp_path / "images"
    (folder / "cat").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(folder / "cat" / "1.png")
    (folder / "cat" / "notes.png").write_text("not an image")
    ckpt = tmp_path / "x.ckpt"
    ckpt.touch()
    proc = subprocess.run(
        [sys.executable, "-m", "see_dml.retrieve", f"ckpt_path={ckpt}", f"query={folder}",
         "gallery=test", f"paths.output_dir={tmp_path / 'out'}"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: query: ") and str(folder / "cat" / "notes.png") in line


def test_bad_locations_name_the_key(trained, tmp_path):
    with pytest.raises(ConfigError, match="gallery='.*nowhere'"):
        _retrieve(f"ckpt_path={trained['ckpt']}", f"query={trained['folder']}",
                  f"gallery={tmp_path / 'nowhere'}", f"paths.run_dir={tmp_path}")
    with pytest.raises(ConfigError, match="gallery=query: double_mnist has no 'query' split"):
        _retrieve(f"ckpt_path={trained['ckpt']}", f"query={trained['folder']}",
                  "gallery=query", f"paths.run_dir={tmp_path}")


def test_list_images_labels_by_class_subfolder(tmp_path):
    for rel in ("a/1.png", "b/2.jpg", "top.png", "notes.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    files, labels = list_images(tmp_path)
    assert [f.relative_to(tmp_path).as_posix() for f in files] == ["a/1.png", "b/2.jpg",
                                                                  "top.png"]
    assert labels == ["a", "b", None]
    assert list_images(tmp_path / "top.png") == ([tmp_path / "top.png"], [None])


def test_huge_k_writes_columns_and_memory_follows_the_chunk(trained, tmp_path, monkeypatch):
    """``k`` beyond the gallery: every neighbour of every query goes to neighbours/*.npy
    (written chunk by chunk), retrieval.json keeps ``json_queries`` x ``json_k``, and the
    peak Python allocation with k = every image is about that with k = 10 (the old JSON of
    all k neighbours grew with Q x k: 765 MB on 2,000 images)."""
    import tracemalloc

    import see_dml.metrics.knn as knn

    monkeypatch.setattr(knn, "CHUNK_RESULT_ELEMENTS", 4096)  # chunks of ~10 queries
    common = [f"ckpt_path={trained['ckpt']}", "query=test", "gallery=test", "json_queries=3",
              "json_k=2", "grid_queries=2"]
    peaks = {}
    for k in (10, 100_000):
        tracemalloc.start()
        report = _retrieve(*common, f"k={k}", f"paths.run_dir={tmp_path / str(k)}")
        peaks[k] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    out = tmp_path / "100000"
    n = report["num_queries"]
    assert report["k"] == report["num_gallery"] == n > 100
    assert len(report["results"]) == 3 and all(len(r["neighbours"]) == 2
                                               for r in report["results"])
    assert report["neighbours"] == "neighbours"
    indices = np.load(out / "neighbours" / "indices.npy", mmap_mode="r")
    scores = np.load(out / "neighbours" / "scores.npy", mmap_mode="r")
    assert indices.shape == scores.shape == (n, n) and indices.dtype == np.int64
    # each row ranks the whole gallery once, the query itself first
    np.testing.assert_array_equal(np.sort(indices, axis=1), np.tile(np.arange(n), (n, 1)))
    np.testing.assert_array_equal(indices[:, 0], np.arange(n))
    assert (np.diff(scores, axis=1) <= 1e-6).all()
    ids = np.load(out / "neighbours" / "gallery_ids.npy")
    assert list(ids[:2]) == ["test[0]", "test[1]"]
    assert len(np.load(out / "neighbours" / "query_labels.npy")) == n
    first = report["results"][0]["neighbours"][0]
    assert first["item"] == str(ids[indices[0, 0]]) and first["score"] == pytest.approx(
        float(scores[0, 0]))
    assert (out / "retrieval.json").stat().st_size < 10_000
    assert peaks[100_000] < peaks[10] + n * n * 12 / 2, peaks

"""One's own data with no code: ``dataset=folder`` (a folder per class) and ``dataset=csv``
(path, label, split), through the real composed config, the official loaders' checks and a
training run."""

from __future__ import annotations

import csv
from pathlib import Path

import hydra
import numpy as np
import pytest

from helpers.dataset_fixtures import write_jpeg
from see_dml.data.validation import check_source
from see_dml.runtime.errors import DatasetNotFoundError
from see_dml.train import train


def _folders(root: Path, classes: list[str], per_class: int = 3, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    out = []
    for name in classes:
        for i in range(per_class):
            path = root / name / f"{i}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_jpeg(path, rng)
            out.append(path)
    return out


def _source(make_cfg, *overrides: str):
    cfg = make_cfg(*overrides)
    return hydra.utils.instantiate(cfg.dataset), cfg


def test_folder_per_class_splits_classes_by_name_order(make_cfg, tmp_path):
    root = tmp_path / "imgs"
    _folders(root, [f"c{i:02d}" for i in range(10)])
    source, _ = _source(make_cfg, "dataset=folder", f"dataset.root={root}",
                        "dataset.val_fraction=0.2")
    splits = source.splits()
    names = splits["train"].meta["class_names"]
    test_names = {names[i] for i in splits["test"].classes}
    assert test_names == {f"c{i:02d}" for i in range(5, 10)}  # the last half, as CUB's
    assert len(splits["val"].classes) == 1 and len(splits["train"].classes) == 4
    for a, b in [("train", "test"), ("train", "val"), ("val", "test")]:
        assert not np.intersect1d(splits[a].classes, splits[b].classes).size
    assert sum(len(s) for s in splits.values()) == 30
    report = check_source(source, verify_images=True, workers=0, progress=False)
    assert report.ok, report


def test_folder_with_train_and_test_given_and_a_random_split(make_cfg, tmp_path):
    given = tmp_path / "given"
    _folders(given / "train", ["a", "b", "c"])
    _folders(given / "test", ["d", "e"])
    source, _ = _source(make_cfg, "dataset=folder", f"dataset.root={given}",
                        "dataset.val_fraction=0")
    splits = source.splits()
    assert splits["train"].num_classes == 3 and splits["test"].num_classes == 2
    assert all(p.parent.parent.name == "test" for p in splits["test"].items)
    assert not np.intersect1d(splits["train"].classes, splits["test"].classes).size

    flat = tmp_path / "flat"
    _folders(flat, [f"k{i}" for i in range(8)])
    draws = [_source(make_cfg, "dataset=folder", f"dataset.root={flat}",
                     "dataset.val_fraction=0", f"dataset.split_seed={s}")[0].splits()
             for s in (1, 1, 2)]
    assert np.array_equal(draws[0]["test"].classes, draws[1]["test"].classes)
    assert len(draws[2]["test"].classes) == 4


def test_folder_errors_name_the_problem(make_cfg, tmp_path):
    overlap = tmp_path / "overlap"
    _folders(overlap / "train", ["a", "b"])
    _folders(overlap / "test", ["b", "c"])
    source, _ = _source(make_cfg, "dataset=folder", f"dataset.root={overlap}")
    with pytest.raises(ValueError, match=r"classes \['b'\] are in both train/ and test/"):
        source.splits()
    source, _ = _source(make_cfg, "dataset=folder", f"dataset.root={tmp_path / 'nowhere'}")
    with pytest.raises(DatasetNotFoundError, match="one folder per class"):
        source.splits()
    one = tmp_path / "one"
    _folders(one, ["only"])
    source, _ = _source(make_cfg, "dataset=folder", f"dataset.root={one}")
    with pytest.raises(ValueError, match="1 classes cannot be split"):
        source.splits()


def _write_csv(path: Path, rows: list[tuple[str, str, str]],
               header: tuple[str, ...] = ("path", "label", "split", "note")) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row in rows:
            writer.writerow([*row, "x"][:len(header)])


def test_csv_all_vs_all_and_query_gallery(make_cfg, tmp_path):
    root = tmp_path / "csvdata"
    paths = _folders(root, ["1", "2", "10", "cat"], per_class=4)
    split_of = {"1": "train", "2": "train", "10": "test", "cat": "test"}
    _write_csv(root / "images.csv", [(str(p.relative_to(root)), p.parent.name,
                                      split_of[p.parent.name]) for p in paths])
    source, _ = _source(make_cfg, "dataset=csv", f"dataset.root={root}", "dataset.val_fraction=0")
    splits = source.splits()
    assert source.eval_protocol == "all_vs_all"
    assert splits["train"].meta["class_names"] == ["1", "2", "10", "cat"]  # numbers in order
    assert splits["train"].classes.tolist() == [0, 1] and splits["test"].classes.tolist() == [2, 3]
    assert splits["test"].items[0] == root / "10" / "0.jpg"

    qg = [(str(p), p.parent.name, "train" if p.parent.name in ("1", "2") else
           ("query" if p.stem in ("0", "1") else "gallery")) for p in paths]
    _write_csv(root / "qg.csv", qg)
    source, _ = _source(make_cfg, "dataset=csv", f"dataset.root={root}",
                        "dataset.csv_path=qg.csv", "dataset.val_fraction=0")
    splits = source.splits()
    assert source.eval_protocol == "query_gallery"
    assert len(splits["query"]) == 4 and len(splits["gallery"]) == 4


@pytest.mark.parametrize(("rows", "header", "match"), [
    ([("a.jpg", "1", "train")], ("path", "label"), r"no column split \(has: path, label"),
    ([("a.jpg", "1", "train"), ("b.jpg", "1", "test")], None,
     r"1 classes are in both 'train' and 'test'"),
    ([("a.jpg", "1", "train"), ("b.jpg", "2", "valid")], None,
     r"the split column holds \['train', 'valid'\]"),
    ([("a.jpg", "", "train")], None, r"images.csv:2: empty path, label or split"),
])
def test_csv_errors_name_the_column_row_or_classes(make_cfg, tmp_path, rows, header, match):
    root = tmp_path / "bad"
    root.mkdir()
    _write_csv(root / "images.csv", rows, header or ("path", "label", "split"))
    source, _ = _source(make_cfg, "dataset=csv", f"dataset.root={root}")
    with pytest.raises(ValueError, match=match):
        source.splits()


def test_csv_missing_image_names_it(make_cfg, tmp_path):
    root = tmp_path / "missing"
    paths = _folders(root, ["a", "b"], per_class=2)
    rows = [(str(p.relative_to(root)), p.parent.name, "train" if p.parent.name == "a" else "test")
            for p in paths]
    _write_csv(root / "images.csv", [*rows, ("b/gone.jpg", "b", "test")])
    source, _ = _source(make_cfg, "dataset=csv", f"dataset.root={root}")
    with pytest.raises(DatasetNotFoundError, match="gone.jpg"):
        source.splits()


def test_training_on_a_folder_per_class(make_cfg, tmp_path):
    root = tmp_path / "train_imgs"
    _folders(root, [f"c{i}" for i in range(12)], per_class=4)
    cfg = make_cfg("dataset=folder", f"dataset.root={root}", "dataset.val_fraction=0.2",
                   "data.batch_size=16", "data.m_per_class=4", "test_final=true")
    metrics = train(cfg)
    assert 0.0 <= metrics["test/recall@1"] <= 1.0 and "best/val/map@r" in metrics

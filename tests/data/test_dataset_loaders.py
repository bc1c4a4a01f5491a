"""The four retrieval datasets, read from tiny copies in their official on-disk formats.

Full-size counts are checked too when the real data is there: set ``SEE_DML_DATA_DIR`` to a
folder holding ``CUB_200_2011/``, ``cars196/``, ``Stanford_Online_Products/`` and/or
``In-shop Clothes Retrieval Benchmark/``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from helpers.dataset_fixtures import (
    FIXTURES,
    FixtureData,
    corrupt_image,
    make_cars,
    make_cub,
    make_fixture,
    make_inshop,
    make_sop,
)
from see_dml.data.base import DatasetSource
from see_dml.data.cars import Cars196
from see_dml.data.cub import CUB200
from see_dml.data.inshop import InShop, item_label
from see_dml.data.sop import StanfordOnlineProducts
from see_dml.runtime.errors import DatasetCountError, DatasetNotFoundError, UnreadableImageError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"

SOURCES: dict[str, type[DatasetSource]] = {
    "cub": CUB200,
    "cars": Cars196,
    "sop": StanfordOnlineProducts,
    "inshop": InShop,
}
#: each dataset's index files, and a folder of its images.
INDEX_FILES = {
    "cub": ["images.txt", "image_class_labels.txt"],
    "cars": ["cars_annos.mat"],
    "sop": ["Ebay_train.txt", "Ebay_test.txt"],
    "inshop": ["Eval/list_eval_partition.txt"],
}
IMAGE_FOLDERS = {"cub": "images", "cars": "car_ims", "sop": "bicycle_final", "inshop": "img"}


def load(name: str, root: Path, **kwargs) -> dict:
    kwargs.setdefault("strict_counts", False)
    return SOURCES[name](root, **kwargs).splits()


@pytest.fixture(params=sorted(SOURCES))
def written(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, FixtureData]:
    return request.param, make_fixture(request.param, tmp_path)


def test_splits_match_what_was_written(written: tuple[str, FixtureData]) -> None:
    name, fx = written
    splits = load(name, fx.root)
    assert set(splits) == set(fx.images)
    for split_name, split in splits.items():
        assert list(split.items) == fx.images[split_name]
        assert split.labels.tolist() == fx.labels[split_name]
        assert all(p.is_absolute() and p.is_file() for p in split.items)
        assert split.summary() == fx.counts[split_name]


def test_relative_root_gives_absolute_paths(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    make_cub(tmp_path / "CUB_200_2011")
    monkeypatch.chdir(tmp_path)
    splits = load("cub", Path("CUB_200_2011"))
    assert all(p.is_absolute() and p.is_file() for p in splits["train"].items)


@pytest.mark.parametrize(("name", "last_train_class"), [("cub", 100), ("cars", 98)])
def test_zero_shot_split_by_class_id(tmp_path: Path, name: str, last_train_class: int) -> None:
    fx = make_fixture(name, tmp_path)
    splits = load(name, fx.root)
    assert splits["train"].labels.max() <= last_train_class
    assert splits["test"].labels.min() > last_train_class
    # The fixture writes both halves of the official class range.
    assert splits["train"].num_classes == splits["test"].num_classes > 1


def test_cars_test_flag_is_ignored(tmp_path: Path) -> None:
    fx = make_cars(tmp_path / "cars196", n_classes=3, per_class=4)
    ann = scipy.io.loadmat(fx.root / "cars_annos.mat", squeeze_me=True)["annotations"]
    flag = {fx.root / str(p): int(t) for p, t in zip(ann["relative_im_path"], ann["test"])}
    splits = load("cars", fx.root)
    for split_name in ("train", "test"):
        # Both halves hold images flagged as classification-train and classification-test.
        assert {flag[p] for p in splits[split_name].items} == {0, 1}
    assert len(splits["train"]) == len(splits["test"]) == 12


def test_cars_torchvision_layout_pools_then_splits(tmp_path: Path) -> None:
    official = make_cars(tmp_path / "official", seed=3)
    tv = make_cars(tmp_path / "stanford_cars", seed=3, layout="torchvision")
    # The parent of torchvision's stanford_cars/ folder works too.
    for root in (tv.root, tmp_path):
        splits = load("cars", root)
        for split_name, split in splits.items():
            assert split.summary() == official.counts[split_name]
            assert sorted(split.labels.tolist()) == sorted(official.labels[split_name])
            assert list(split.items) == tv.images[split_name]


def test_inshop_query_and_gallery_share_label_numbering(tmp_path: Path) -> None:
    fx = make_inshop(tmp_path / "inshop", n_train=4, n_test=3)
    splits = load("inshop", fx.root)
    query, gallery = splits["query"], splits["gallery"]
    assert np.array_equal(query.classes, gallery.classes)
    for split in (query, gallery):
        for path, label in zip(split.items, split.labels):
            assert path.parent.name == f"id_{label:08d}"
    assert not set(splits["train"].classes) & set(query.classes)
    assert InShop.eval_protocol == "query_gallery"


def test_inshop_images_under_img_folder(tmp_path: Path) -> None:
    fx = make_inshop(tmp_path / "inshop", under_img_folder=True)
    splits = load("inshop", fx.root)
    assert list(splits["query"].items) == fx.images["query"]
    assert all("/Img/img/" in p.as_posix() for p in splits["train"].items)


def test_inshop_item_label() -> None:
    assert item_label("id_00000001") == 1
    assert item_label("id_00012345") == 12345
    with pytest.raises(ValueError, match="id_<digits>"):
        item_label("00000001")


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_val_fraction_holds_out_training_classes(tmp_path: Path, name: str) -> None:
    fx = make_fixture(name, tmp_path)
    splits = load(name, fx.root, val_fraction=0.3, seed=1)
    train, val = splits["train"], splits["val"]
    assert val.num_classes >= 1 and train.num_classes >= 1
    assert len(train) + len(val) == fx.counts["train"]["images"]
    assert set(train.classes) | set(val.classes) == set(fx.labels["train"])
    eval_names = [s for s in splits if s not in ("train", "val")]
    groups = [set(train.classes), set(val.classes),
              set().union(*(set(splits[s].classes) for s in eval_names))]
    for i in range(3):
        for j in range(i + 1, 3):
            assert not groups[i] & groups[j]
    # Deterministic under the seed.
    again = load(name, fx.root, val_fraction=0.3, seed=1)["val"]
    assert np.array_equal(again.classes, val.classes)


def test_default_recall_ks_and_override(tmp_path: Path) -> None:
    assert CUB200.default_recall_ks == Cars196.default_recall_ks == (1, 2, 4, 8, 16, 32)
    assert StanfordOnlineProducts.default_recall_ks == (1, 10, 100, 1000)
    assert InShop.default_recall_ks == (1, 10, 20, 30, 40, 50)
    assert CUB200(tmp_path, recall_ks=[1, 2, 4]).recall_ks == (1, 2, 4)


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_strict_counts(tmp_path: Path, name: str) -> None:
    fx = make_fixture(name, tmp_path)
    source_cls = SOURCES[name]
    expected = next(iter(source_cls.expected_counts.values()))["images"]
    with pytest.raises(DatasetCountError, match=rf"expected {expected}") as err:
        source_cls(fx.root).splits()
    assert "strict_counts=false" in str(err.value)
    assert source_cls(fx.root, strict_counts=False).splits()


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_missing_root(tmp_path: Path, name: str) -> None:
    root = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError) as err:
        load(name, root)
    msg = str(err.value)
    assert str(root) in msg
    assert "Expected layout" in msg and SOURCES[name].layout.splitlines()[1].strip() in msg
    assert SOURCES[name].download_url.split()[0] in msg


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_missing_index_file(tmp_path: Path, name: str) -> None:
    fx = make_fixture(name, tmp_path)
    index = fx.root / INDEX_FILES[name][-1]
    index.unlink()
    with pytest.raises(DatasetNotFoundError, match="Expected layout") as err:
        load(name, fx.root)
    assert str(index) in str(err.value)


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_missing_image_folder(tmp_path: Path, name: str) -> None:
    fx = make_fixture(name, tmp_path)
    shutil.rmtree(fx.root / IMAGE_FOLDERS[name])
    with pytest.raises(DatasetNotFoundError) as err:
        load(name, fx.root)
    assert IMAGE_FOLDERS[name] in str(err.value)


def test_missing_images_are_named(tmp_path: Path) -> None:
    fx = make_cub(tmp_path / "CUB_200_2011")
    gone = fx.images["test"][-1]
    gone.unlink()
    with pytest.raises(DatasetNotFoundError, match="see_dml.data.check") as err:
        load("cub", fx.root)
    assert str(gone) in str(err.value)


def test_root_one_folder_too_high_is_named(tmp_path: Path) -> None:
    # The CUB archive unpacks into CUB_200_2011/: pointing at its parent is a common slip.
    make_cub(tmp_path / "CUB_200_2011")
    with pytest.raises(DatasetNotFoundError, match="CUB_200_2011") as err:
        load("cub", tmp_path)
    assert f"dataset.root={tmp_path / 'CUB_200_2011'}" in str(err.value)


def test_malformed_index_names_file_and_line(tmp_path: Path) -> None:
    fx = make_sop(tmp_path / "sop")
    index = fx.root / "Ebay_test.txt"
    index.write_text(index.read_text() + "17 oops\n")
    with pytest.raises(ValueError, match=r"Ebay_test\.txt:\d+"):
        load("sop", fx.root)


def test_unreadable_image_fail_names_the_file(tmp_path: Path) -> None:
    fx = make_cub(tmp_path / "CUB_200_2011")
    bad = corrupt_image(fx.images["train"][1])
    source = CUB200(fx.root, strict_counts=False, on_error="fail")
    dataset = source.make_dataset(source.splits()["train"])
    dataset[0]  # a readable one
    with pytest.raises(UnreadableImageError, match=str(bad)):
        dataset[1]


def test_unreadable_image_skip_substitutes_in_training_and_counts(tmp_path: Path) -> None:
    fx = make_cub(tmp_path / "CUB_200_2011", per_class=3)
    corrupt_image(fx.images["train"][1])
    source = CUB200(fx.root, strict_counts=False, on_error="skip")
    split = source.splits()["train"]
    dataset = source.make_dataset(split, train=True)
    image, label, index = dataset[1]
    assert (label, index) == (int(split.labels[1]), 1)
    assert image.size == (32, 32)
    assert dataset.skipped == {1}
    # an evaluation split marks the row as left out (-1 - index), for the caller to drop
    evaluated = source.make_dataset(split)
    assert evaluated[1][1:] == (int(split.labels[1]), -2) and evaluated.skipped == {1}


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_config_builds_the_source(tmp_path: Path, name: str) -> None:
    fx = make_fixture(name, tmp_path)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("check", overrides=[f"dataset={name}", f"paths.data_dir={tmp_path}",
                                          "dataset.strict_counts=false", "seed=3",
                                          "+dataset.recall_ks=[1,2,4]"])
    source = instantiate(cfg.dataset)
    assert type(source) is SOURCES[name]
    assert source.root == fx.root and source.seed == 3 and source.recall_ks == (1, 2, 4)
    assert 0 < source.val_fraction < 1 and source.on_error == "fail"
    splits = source.splits()
    assert len(splits["train"]) + len(splits["val"]) == fx.counts["train"]["images"]


# ---- the real data, when there ------------------------------------------------------------

DATA_DIR = os.environ.get("SEE_DML_DATA_DIR")


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_real_dataset_official_counts(name: str) -> None:
    folder = Path(DATA_DIR or "/nonexistent") / FIXTURES[name][1]
    if not folder.is_dir():
        pytest.skip(f"real {name} data not at $SEE_DML_DATA_DIR/{FIXTURES[name][1]}")
    source = SOURCES[name](folder, strict_counts=True)
    splits = source.splits()
    assert {s: splits[s].summary() for s in source.expected_counts} == source.expected_counts

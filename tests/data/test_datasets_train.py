"""A fast training + evaluation run on a tiny official-format copy of each dataset."""

from __future__ import annotations

import re

import pytest

from helpers.dataset_fixtures import make_fixture
from see_dml.train import train

SMALL_PHOTOS = ["data.transforms.image_size=32", "data.transforms.resize=36",
                "data.batch_size=8", "data.m_per_class=2", "data.eval_batch_size=16",
                "dataset.strict_counts=false"]


@pytest.mark.parametrize("name, kwargs", [
    ("cub", {"n_classes": 6, "per_class": 4}),
    ("cars", {"n_classes": 6, "per_class": 4}),
    ("sop", {"n_classes": 6, "per_class": 4}),
    ("inshop", {"n_train": 6, "n_test": 4, "per_item": 4}),
])
def test_train_and_evaluate_on_fixture(make_cfg, tmp_path, capsys, name, kwargs):
    data_dir = tmp_path / "data"
    make_fixture(name, data_dir, **kwargs)
    cfg = make_cfg(f"dataset={name}", f"paths.data_dir={data_dir}", "dataset.val_fraction=0.2",
                   "see.enabled=true", "see.p_min=0.4", "see.n_points=4", "metrics.nmi=true",
                   *SMALL_PHOTOS)
    metrics = train(cfg)
    ks = (1, 10, 20, 30, 40, 50) if name == "inshop" else (
        (1, 10, 100, 1000) if name == "sop" else (1, 2, 4, 8, 16, 32))
    for k in ks:  # the dataset's own Recall@K list
        assert 0.0 <= metrics[f"test/recall@{k}"] <= 1.0
    assert 0.0 <= metrics["test/map@r"] <= 1.0
    assert 0.0 <= metrics["test/nmi"] <= 1.0  # In-Shop: query and gallery clustered together
    assert "best/val/map@r" in metrics
    # the splits as a line for people, each split's images and classes
    splits = ("query", "gallery") if name == "inshop" else ("test",)
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("Results on"))
    for split in ("train", "val", *splits):
        assert re.search(rf"\b{split} [\d,]+ images / [\d,]+ classes", line), (split, line)

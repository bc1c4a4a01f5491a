"""Training options that had no test of their own: the random sampler, timm's own pooling,
training without validation classes, and SEE's scheduled threshold mode."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from see_dml.module import DMLModule
from see_dml.train import train
from see_dml.training.components import build_datamodule

QUIET = ["callbacks.embedding_export=null", "test_final=false"]


def test_random_sampler_draws_plain_shuffled_batches(make_cfg):
    cfg = make_cfg("data.sampler=random", *QUIET)
    dm = build_datamodule(cfg)
    loader = dm.train_dataloader()
    assert loader.batch_sampler.batch_size == cfg.data.batch_size
    counts = [torch.bincount(batch[1]) for _, batch in zip(range(5), loader)]
    # class-balanced batches hold exactly m_per_class images of each class they draw; plain
    # shuffling of 64 classes x 20 images almost never does, over five batches
    assert any(set(c[c > 0].tolist()) != {cfg.data.m_per_class} for c in counts)
    metrics = train(cfg)
    assert 0.0 <= metrics["test/recall@1"] <= 1.0


def test_model_pooling_is_timms_own(make_cfg):
    """pooling=model hands the backbone's features to timm's own head (global average pooling
    for a ResNet): the same embeddings as the head's avg pooling with the same weights."""
    common = ["model.backbone.name=resnet18", "model.backbone.pretrained=false"]
    timm_pool = DMLModule.from_config(make_cfg(*common, "model.head.pooling=model"), num_classes=4)
    avg_pool = DMLModule.from_config(make_cfg(*common, "model.head.pooling=avg"), num_classes=4)
    avg_pool.load_state_dict(timm_pool.state_dict())
    images = torch.randn(3, 1, 32, 32)
    timm_pool.eval(), avg_pool.eval()
    with torch.no_grad():
        torch.testing.assert_close(timm_pool(images), avg_pool(images))
    small = DMLModule.from_config(make_cfg("model.head.pooling=model"), num_classes=4)
    with pytest.raises(ValueError, match=r"model\.head\.pooling=model needs a timm backbone"):
        small(images)


@pytest.mark.slow
def test_training_without_validation_classes_keeps_the_last_epoch(make_cfg):
    """dataset.val_fraction=0 (the papers' protocol): no validation, the final epoch is the
    selected checkpoint, and its numbers are the final epoch's."""
    cfg = make_cfg("dataset=mnist", "dataset.val_fraction=0", "data.batch_size=16",
                   "trainer.max_epochs=2",
                   "callbacks.embedding_export=null")
    metrics = train(cfg)
    assert not any(k.startswith(("val/", "best/")) for k in metrics)
    selected = torch.load(metrics["best_checkpoint"], map_location="cpu", weights_only=False)
    assert selected["epoch"] == 1
    for key in ("recall@1", "map@r"):
        assert metrics[f"test/{key}"] == metrics[f"test_final/{key}"]


def test_scheduled_threshold_mode_lowers_the_threshold_every_epoch(make_cfg):
    cfg = make_cfg("see.enabled=true", "see.mode=threshold", "see.p_max=0.95", "see.p_min=0.5",
                   "see.scheduled=true", "see.n_points=4", "trainer.max_epochs=3", *QUIET)
    train(cfg)
    with (Path(cfg.paths.run_dir) / "csv" / "metrics.csv").open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/see/level_epoch")]
    levels = [float(r["train/see/level_epoch"]) for r in sorted(rows, key=lambda r:
                                                                 int(r["epoch"]))]
    assert len(levels) == 3
    assert levels[0] == pytest.approx(0.95)  # the threshold starts at p_max ...
    assert levels[0] > levels[1] > levels[2] >= 0.5  # ... and decays towards p_min

"""NonFiniteGuard: a diverged run stops, names the step, and writes no metrics."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from see_dml.callbacks.guards import NonFiniteGuard
from see_dml.module import DMLModule, build_backbone
from see_dml.runtime.errors import DivergenceError
from see_dml.train import train
from see_dml.training.components import build_datamodule


def test_the_default_callbacks_include_the_guard(make_cfg):
    guard = instantiate(make_cfg().callbacks.nonfinite_guard)
    assert isinstance(guard, NonFiniteGuard) and guard.max_skipped_steps == 0


@pytest.mark.slow
def test_lr_1e6_stops_before_metrics_naming_the_step(make_cfg):
    # At lr=1e6 every unit dies in the first steps: the loss stays finite but every image
    # embeds to the zero vector, and the run used to report chance-level metrics.
    cfg = make_cfg("optimizer.lr=1e6")
    with pytest.raises(DivergenceError, match=r"val image.*training step 3.*backbone=1e\+06"):
        train(cfg)
    run_dir = Path(cfg.paths.run_dir)
    assert not (run_dir / "metrics.json").exists()
    assert not (run_dir / "checkpoints").exists()  # no "best" checkpoint of a dead model


def test_nan_loss_stops_at_that_step_naming_terms_and_learning_rates(make_cfg):
    cfg = make_cfg("optimizer.lr=1e20")
    with pytest.raises(DivergenceError) as err:
        train(cfg)
    msg = str(err.value)
    assert "non-finite training loss at training step 1 (epoch 0, batch 1)" in msg
    assert "train/loss/metric=nan" in msg
    assert "backbone=1e+20, head=1e+20" in msg
    assert "max_skipped_steps" in msg
    assert not (Path(cfg.paths.run_dir) / "metrics.json").exists()


class PoisonStep(L.Callback):
    """Adds a NaN loss term (``loss/poison``) in the training steps ``steps``."""

    def __init__(self, steps: set[int]) -> None:
        self.steps = steps

    def _hook(self, module, embeddings, labels):
        if module.trainer.global_step in self.steps:
            return {"loss/poison": embeddings.sum() * float("nan")}
        return {"loss/poison": embeddings.sum() * 0.0}

    def on_fit_start(self, trainer, pl_module):
        pl_module.add_embedding_hook(self._hook)


def _fit(make_cfg, guard: NonFiniteGuard, poison: set[int]) -> DMLModule:
    cfg = make_cfg()
    source = instantiate(cfg.dataset)
    backbone = build_backbone(cfg, source.image_mode)
    dm = build_datamodule(cfg, backbone, source)
    model = DMLModule.from_config(cfg, dm.num_classes, backbone, source)
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=4,
                        limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[guard, PoisonStep(poison)])
    trainer.fit(model, datamodule=dm)
    return model


def test_a_skipped_step_leaves_the_weights_finite(make_cfg, caplog):
    with caplog.at_level("WARNING"):
        model = _fit(make_cfg, NonFiniteGuard(max_skipped_steps=1), poison={1})
    assert "training step 1" in caplog.text and "train/loss/poison=nan" in caplog.text
    # the NaN gradients of step 1 were dropped, not applied: later steps trained normally
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert model.trainer.global_step == 4


def test_more_non_finite_steps_than_allowed_stop_the_run(make_cfg):
    with pytest.raises(DivergenceError, match=r"training step 2 .*after skipping 1 such step"
                       r".*train/loss/poison=nan"):
        _fit(make_cfg, NonFiniteGuard(max_skipped_steps=1), poison={1, 2})


def test_nan_test_embeddings_are_refused_before_metrics(make_cfg):
    cfg = make_cfg()
    source = instantiate(cfg.dataset)
    backbone = build_backbone(cfg, source.image_mode)
    dm = build_datamodule(cfg, backbone, source)
    model = DMLModule.from_config(cfg, dm.num_classes, backbone, source)
    with torch.no_grad():
        next(model.head.parameters()).fill_(float("nan"))
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[NonFiniteGuard()])
    with pytest.raises(DivergenceError, match=r"400 test image\(s\) were embedded to NaN"):
        trainer.test(model, datamodule=dm)
    assert not any(k.startswith("test/") for k in trainer.callback_metrics)


def test_max_skipped_steps_must_be_a_non_negative_integer():
    with pytest.raises(ValueError, match="callbacks.nonfinite_guard.max_skipped_steps"):
        NonFiniteGuard(max_skipped_steps=-1)

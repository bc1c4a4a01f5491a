"""model.backbone.trainable_stages: only the last N stages of the backbone train, through the
warm-up and frozen BatchNorm, for the whole run."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from torch import nn

from see_dml.models import Backbone
from see_dml.module import DMLModule, build_backbone
from see_dml.training.components import build_datamodule

LITE0_STAGES = [("conv_stem", "bn1"), *((f"blocks.{i}",) for i in range(6)),
                ("blocks.6", "conv_head", "bn2")]


def prefixes_of(name: str) -> str:
    return next(p for stage in LITE0_STAGES for p in stage if name.startswith(f"{p}."))


@pytest.mark.parametrize("trainable", [None, 0, 1, 3, 8])
def test_efficientnet_trains_its_last_n_stages_stem_to_head(trainable):
    backbone = Backbone("tf_efficientnet_lite0", trainable_stages=trainable)
    stages = backbone.stages()
    assert len(stages) == 8
    assert [sorted({prefixes_of(n) for n in s}) for s in stages] == [
        sorted(s) for s in LITE0_STAGES]
    n = 8 if trainable is None else trainable
    expected = {p for stage in LITE0_STAGES[8 - n:] for p in stage}
    grads = {prefixes_of(name) for name, p in backbone.body.named_parameters() if p.requires_grad}
    assert grads == expected
    frozen = {id(p) for p in backbone.frozen_parameters()}
    assert frozen == {id(p) for p in backbone.parameters() if not p.requires_grad}


def test_frozen_stages_stay_in_eval_mode():
    backbone = Backbone("tf_efficientnet_lite0", trainable_stages=2).train()
    modes = {name: m.training for name, m in backbone.body.named_modules() if name}
    assert not any(v for k, v in modes.items() if k.startswith(("bn1", "blocks.0", "blocks.4")))
    assert all(v for k, v in modes.items() if k.startswith(("blocks.5", "blocks.6", "bn2")))
    backbone.eval()
    assert not any(m.training for m in backbone.modules())


@pytest.mark.parametrize("bad", [-1, 9, True, 1.5])
def test_trainable_stages_out_of_range_names_the_key(bad):
    with pytest.raises(ValueError, match=r"model\.backbone\.trainable_stages .* 0 to 8"):
        Backbone("tf_efficientnet_lite0", trainable_stages=bad)


class EpochProbe(Callback):
    """Per training epoch: the names of backbone parameters that require grad at its first
    step, and the backbone state at its end."""

    def __init__(self) -> None:
        self.trainable: list[set[str]] = []
        self.states: list[dict[str, torch.Tensor]] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if batch_idx == 0:
            self.trainable.append({n for n, p in module.backbone.named_parameters()
                                   if p.requires_grad})

    def on_train_epoch_end(self, trainer, module) -> None:
        self.states.append({k: v.detach().clone() for k, v in module.backbone.state_dict().items()})


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    return {k for k, v in after.items() if not torch.equal(v, before[k])}


@pytest.mark.parametrize("model,freeze_bn,n_stages", [
    ("small_cnn", False, 4),
    # ImageNet weights need 3 channels: the digits train it from random weights here
    ("efficientnet_lite0", True, 8),
])
def test_warmup_then_only_the_last_stages_train(make_cfg, model, freeze_bn, n_stages):
    cfg = make_cfg(f"model={model}", "model.backbone.weights_path=null",
                   "model.backbone.trainable_stages=2", "model.warmup_epochs=1",
                   f"model.freeze_bn={str(freeze_bn).lower()}", "trainer.max_epochs=2",
                   "trainer.limit_train_batches=2")
    source = instantiate(cfg.dataset)
    backbone = build_backbone(cfg, source.image_mode)
    dm = build_datamodule(cfg, backbone, source)
    module = DMLModule.from_config(cfg, dm.num_classes, backbone, source)
    stages = module.backbone.stages()
    assert len(stages) == n_stages
    last = {f"body.{n}" for stage in stages[-2:] for n in stage}
    early = {f"body.{n}" for stage in stages[:-2] for n in stage}
    bn = {f"{name}.{k}" for name, m in module.backbone.named_modules()
          if isinstance(m, nn.modules.batchnorm._BatchNorm) for k in m.state_dict()}
    before = {k: v.detach().clone() for k, v in module.backbone.state_dict().items()}
    probe = EpochProbe()
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=[probe], logger=False,
                                     limit_val_batches=0, enable_checkpointing=False,
                                     enable_model_summary=False)
    trainer.fit(module, datamodule=dm)
    # warm-up epoch: no backbone parameter takes a gradient, nothing in it moves
    assert probe.trainable[0] == set()
    assert changed(before, probe.states[0]) == set()
    # after it: exactly the last two stages train (less BatchNorm affine under freeze_bn)
    bn_affine = {n for n in last if n in bn} if freeze_bn else set()
    assert probe.trainable[1] == last - bn_affine
    moved = changed(probe.states[0], probe.states[1])
    assert not moved & early  # weights, BatchNorm statistics and counters of early stages
    assert {n for n in last - bn_affine if n.endswith("weight")} <= moved
    assert bool(moved & bn) is not freeze_bn  # trainable BatchNorm updates its statistics
    module.train()
    assert not any(m.training for name, m in module.backbone.named_modules()
                   if any(f"{name}.{k}" in early for k, _ in m.named_parameters(recurse=False)))

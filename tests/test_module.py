"""DMLModule: lr groups, backbone warm-up, frozen BatchNorm, sampler epochs, gradient clipping."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from torch import nn

from see_dml.data.datamodule import RetrievalDataModule
from see_dml.module import DMLModule, build_backbone
from see_dml.training.components import build_datamodule


def build(cfg) -> tuple[DMLModule, RetrievalDataModule]:
    """Module and set-up datamodule as ``train`` builds them."""
    source = instantiate(cfg.dataset)
    backbone = build_backbone(cfg, source.image_mode)
    dm = build_datamodule(cfg, backbone, source)
    return DMLModule.from_config(cfg, dm.num_classes, backbone, source), dm


def fit(cfg, module: DMLModule, dm: RetrievalDataModule,
        callbacks: list[Callback] | None = None) -> L.Trainer:
    """Fit with the composed ``trainer`` config: no validation, checkpoints or loggers."""
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks or [], logger=False,
                                     limit_val_batches=0, enable_checkpointing=False,
                                     enable_model_summary=False)
    trainer.fit(module, datamodule=dm)
    return trainer


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict[str, torch.Tensor], after: nn.Module | dict[str, torch.Tensor]
            ) -> set[str]:
    """Names of the state entries that differ."""
    after = after.state_dict() if isinstance(after, nn.Module) else after
    assert after.keys() == before.keys()
    return {k for k, v in after.items() if not torch.equal(v, before[k])}


def conv_weights(module: DMLModule) -> set[str]:
    names = {f"{n}.weight" for n, m in module.backbone.named_modules() if isinstance(m, nn.Conv2d)}
    assert names
    return names


def bn_layers(module: DMLModule) -> list[nn.modules.batchnorm._BatchNorm]:
    layers = [m for m in module.backbone.modules()
              if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert layers  # the small ConvNet has BatchNorm
    return layers


def test_param_groups_get_lr_times_their_multipliers(make_cfg):
    cfg = make_cfg("model.backbone_lr_mult=0.5", "model.head_lr_mult=2", "loss.lr_multiplier=100")
    module = DMLModule.from_config(cfg, num_classes=10)
    optimizer = module.configure_optimizers()
    assert isinstance(optimizer, torch.optim.AdamW)
    lr = cfg.optimizer.lr
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert set(groups) == {"backbone", "head", "loss"}
    assert groups["backbone"]["lr"] == pytest.approx(lr * 0.5)
    assert groups["head"]["lr"] == pytest.approx(lr * 2)
    assert groups["loss"]["lr"] == pytest.approx(lr * 100)
    assert all(g["weight_decay"] == cfg.optimizer.weight_decay for g in groups.values())
    assert all("lr_mult" not in g for g in groups.values())
    ids = {name: {id(p) for p in g["params"]} for name, g in groups.items()}
    assert ids["backbone"] == {id(p) for p in module.backbone.parameters()}
    assert ids["head"] == {id(p) for p in module.head.parameters()}
    assert ids["loss"] == {id(module.criterion.loss.proxies)}


def test_scheduler_scales_every_group_from_its_own_lr(make_cfg):
    cfg = make_cfg("model.head_lr_mult=2", "scheduler=step", "scheduler.step_size=1")
    module = DMLModule.from_config(cfg, num_classes=10)
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["interval"] == "epoch"
    before = [g["lr"] for g in optimizer.param_groups]
    assert [g["initial_lr"] for g in optimizer.param_groups] == before
    optimizer.step()
    scheduler.step()
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([x * 0.5 for x in before])


class EpochSnapshots(Callback):
    """Backbone state and train-mode facts at the end of every training epoch."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []
        self.requires_grad: list[bool] = []
        self.training: list[bool] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if batch_idx == 0:
            self.requires_grad.append(any(p.requires_grad for p in module.backbone.parameters()))
            self.training.append(any(m.training for m in module.backbone.modules()))

    def on_train_epoch_end(self, trainer, module) -> None:
        self.states.append(snapshot(module.backbone))


def test_warmup_freezes_the_backbone_then_trains_it(make_cfg):
    cfg = make_cfg("model.warmup_epochs=1", "trainer.max_epochs=2",
                   "trainer.limit_train_batches=2")
    module, dm = build(cfg)
    backbone0, head0 = snapshot(module.backbone), snapshot(module.head)
    proxies0 = module.criterion.loss.proxies.detach().clone()
    probe = EpochSnapshots()
    fit(cfg, module, dm, callbacks=[probe])
    assert len(probe.states) == 2
    # epoch 0: head and proxies learn, the backbone (weights and BN statistics) does not
    assert not changed(backbone0, probe.states[0])
    assert probe.requires_grad[0] is False and probe.training[0] is False
    # epoch 1: the warm-up is over
    assert probe.requires_grad[1] is True and probe.training[1] is True
    after_warmup = changed(probe.states[0], module.backbone)
    assert conv_weights(module) <= after_warmup
    assert any(k.endswith("running_mean") for k in after_warmup)  # BatchNorm in train mode
    assert changed(head0, module.head) == {"proj.weight", "proj.bias"}
    assert not torch.equal(module.criterion.loss.proxies, proxies0)


def test_freeze_bn_keeps_statistics_and_affine_fixed(make_cfg):
    cfg = make_cfg("model.freeze_bn=true", "trainer.limit_train_batches=2")
    module, dm = build(cfg)
    layers = bn_layers(module)
    assert all(not p.requires_grad for bn in layers for p in bn.parameters())
    before = snapshot(module.backbone)
    fit(cfg, module, dm)
    assert all(not p.requires_grad for bn in layers for p in bn.parameters())
    diff = changed(before, module.backbone)
    bn_names = {f"{name}.{k}" for name, m in module.backbone.named_modules() if m in layers
                for k in m.state_dict()}
    assert bn_names and not diff & bn_names  # statistics, affine and counters all untouched
    assert conv_weights(module) <= diff  # the rest of the backbone trained
    module.train()
    assert all(not bn.training for bn in layers)


def test_each_epoch_draws_new_class_balanced_batches(make_cfg):
    """Lightning calls ``set_epoch`` on samplers, not on batch samplers: the module does."""
    cfg = make_cfg("trainer.max_epochs=2", "trainer.limit_train_batches=2")
    module, dm = build(cfg)
    seen: list[list[int]] = []
    module.add_embedding_hook(lambda m, emb, labels: seen.append(labels.tolist()) or {})
    trainer = fit(cfg, module, dm)
    sampler = trainer.train_dataloader.batch_sampler
    assert sampler.epoch == 1
    assert len(seen) == 4
    assert seen[:2] != seen[2:]
    labels = dm.datasets["train"].labels
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        expected = [labels[b].tolist() for b in sampler.global_batches()[:2]]
        assert seen[2 * epoch: 2 * epoch + 2] == expected


class GradientProbe(Callback):
    """The largest |gradient| the optimiser steps with (after Lightning's clipping)."""

    def __init__(self) -> None:
        self.max_abs: list[float] = []
        self.losses: list[float] = []

    def on_train_start(self, trainer, module) -> None:
        # after the step: Lightning runs backward and clipping inside the step's closure
        def record(optimizer, args, kwargs) -> None:
            grads = [p.grad.abs().max() for g in optimizer.param_groups for p in g["params"]
                     if p.grad is not None]
            self.max_abs.append(float(torch.stack(grads).max()))

        trainer.optimizers[0].register_step_post_hook(record)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


@pytest.mark.parametrize("clip", [10, 1e-4])
def test_gradient_value_clipping_trains(make_cfg, clip):
    cfg = make_cfg(f"trainer.gradient_clip_val={clip}", "trainer.gradient_clip_algorithm=value",
                   "trainer.limit_train_batches=2")
    module, dm = build(cfg)
    before = snapshot(module)
    probe = GradientProbe()
    trainer = fit(cfg, module, dm, callbacks=[probe])
    assert trainer.gradient_clip_val == clip
    assert trainer.gradient_clip_algorithm == "value"
    assert len(probe.max_abs) == 2
    assert all(0 < g <= clip for g in probe.max_abs)
    assert all(math.isfinite(x) for x in probe.losses)
    assert changed(before, module)


def test_tests_log_under_the_prefix_of_their_block_and_leave_one_result(make_cfg):
    """``test_metrics_prefix`` names one test's metrics and result; the next test is ``test``
    again. The result holds the logged metrics and the embeddings they come from."""
    from see_dml.metrics import retrieval_metrics

    cfg = make_cfg()
    module, dm = build(cfg)
    trainer: L.Trainer = instantiate(cfg.trainer, logger=False, enable_model_summary=False)
    with module.test_metrics_prefix("test_final"):
        trainer.test(module, datamodule=dm, verbose=False)
    first = module.test_result
    assert first is not None and first.prefix == "test_final"
    assert {k for k in trainer.callback_metrics if k.endswith("/map@r")} == {"test_final/map@r"}
    trainer.test(module, datamodule=dm, verbose=False)
    assert module.test_result.prefix == "test"
    assert "test/map@r" in trainer.callback_metrics
    (split,) = first.splits
    assert split.name == "test"
    assert split.indices.tolist() == list(range(len(dm.eval_dataset("test"))))
    expected = retrieval_metrics(split.embeddings, split.labels, ks=module.recall_ks)
    assert float(trainer.callback_metrics["test/map@r"]) == pytest.approx(expected["map@r"])


@pytest.mark.parametrize("model", ["small_cnn", "resnet50"])
def test_model_compile_compiles_backbone_and_head_in_place(make_cfg, model):
    """``model.compile=true`` compiles both modules without renaming their weights (a
    compiled run's checkpoint loads into an eager model); the default leaves them eager and
    the same seed builds the same weights either way."""
    over = ["model.backbone.pretrained=false"] if model != "small_cnn" else []
    eager_cfg = make_cfg(f"model={model}", *over)
    assert eager_cfg.model.compile is False
    torch.manual_seed(0)
    eager = DMLModule.from_config(eager_cfg, num_classes=10)
    torch.manual_seed(0)
    compiled = DMLModule.from_config(make_cfg(f"model={model}", *over, "model.compile=true"), 10)
    for part in ("backbone", "head"):
        assert getattr(eager, part)._compiled_call_impl is None
        assert getattr(compiled, part)._compiled_call_impl is not None
    state = compiled.state_dict()
    assert state.keys() == eager.state_dict().keys()
    assert all(torch.equal(v, state[k]) for k, v in eager.state_dict().items())

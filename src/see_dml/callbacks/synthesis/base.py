"""The contract of a synthesiser (read this first; the shipped ones follow it).

A synthesiser is a Lightning callback, a subclass of :class:`SynthesisCallback`, and one
config node whose ``_target_`` names it (``conf/see/default.yaml``,
``conf/synthesis/<name>.yaml``); the module never knows which one is active.

- **When it runs.** ``setup`` registers it as an *embedding hook* of the
  :class:`~see_dml.module.DMLModule`. Every training step the hook is called as
  ``hook(module, embeddings, labels)`` with the step's unit embeddings ``(B, d)`` (gathered
  over DDP ranks, with their gradients) and labels ``(B,)``, after the backbone and head and
  before the loss. ``self.epoch`` / ``self.max_epochs`` give the progress for a schedule;
  ``self.generator(device)`` is its own random generator, saved in checkpoints.
- **What it returns:** a dict of tensors. ``loss/metric`` *replaces* the plain metric loss
  (EE, Symmetrical and Proxy Synthesis are the loss); any other ``loss/<name>`` is *added* to
  it (SEE's ``loss/synthetic``); ``<self.name>/<key>`` (made with :meth:`SynthesisCallback.stat`)
  are statistics, logged as ``train/<name>/<key>`` and never part of the loss.
- **Gradients.** Synthetic points built from the embeddings keep their graph unless the
  method says otherwise (SEE's centres and EE's points are differentiable; Proxy Synthesis
  mixes proxies too). Detach what the method fixes, and say so in ``docs/method.md``.
- **The loss with synthetic rows:** ``module.criterion`` (a
  :class:`~see_dml.losses.MetricLoss`) takes ``criterion(embeddings, labels)``; labels of
  synthetic rows are their class's; classes of their own (Proxy Synthesis' virtual classes)
  go through ``criterion.forward_with_extra_classes(embeddings, labels, extra_proxies)``.
- **Where it is built:** :func:`~see_dml.callbacks.synthesis.factory.build_synthesis_callback`
  instantiates the one node that the config asks for (``see.enabled`` or ``synthesis=``).

A new synthesiser: a pure function in :mod:`see_dml.synthesis` (embeddings and labels in,
synthetic embeddings and labels out), a subclass here that calls it, one YAML file in
``conf/synthesis/`` and a line in ``docs/training.md``'s group table.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, cast

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

if TYPE_CHECKING:
    from see_dml.module import DMLModule


IndicesTuple = tuple[torch.Tensor, ...]


class SynthesisCallback(Callback):
    """Base: registration, training progress, the step's random generator, stats names.

    Args:
        name: prefix of the logged statistics (``train/<name>/synthetic``, ...).
        seed: seed of the synthesiser's own random generator (saved in checkpoints).
    """

    def __init__(self, name: str, seed: int = 0) -> None:
        self.name = name
        self.seed = int(seed)
        self._generator: torch.Generator | None = None
        self._pending_state: torch.Tensor | None = None
        # training progress in epochs (fractional when training by steps)
        self.epoch: float = 0
        self.max_epochs: float = 1
        self.steps_per_epoch: float | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Lightning types the hooks' module as any LightningModule; a synthesiser runs on
        # the DMLModule whose embedding hooks it joins
        cast("DMLModule", pl_module).add_embedding_hook(self)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        if trainer.max_epochs is not None and trainer.max_epochs > 0:
            self.epoch, self.max_epochs = trainer.current_epoch, trainer.max_epochs
            return
        # Training by steps (max_epochs=-1): progress is optimiser steps, counted in epochs
        # so that the ramp's epoch cap keeps its meaning; an endless loader counts steps.
        batches = trainer.num_training_batches
        spe = (max(1.0, batches / trainer.accumulate_grad_batches)
               if math.isfinite(batches) else 1.0)
        self.steps_per_epoch = spe
        self.epoch = trainer.global_step / spe
        self.max_epochs = max(trainer.max_steps, 1) / spe

    def generator(self, device: torch.device) -> torch.Generator:
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device)
            # the same seed on every rank: all ranks see the same gathered batch
            self._generator.manual_seed(self.seed)
            if self._pending_state is not None:
                self._generator.set_state(self._pending_state)
                self._pending_state = None
        return self._generator

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"seed": self.seed}
        if self._generator is not None:
            state["generator"] = self._generator.get_state()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.seed = state_dict.get("seed", self.seed)
        self._pending_state = state_dict.get("generator")
        self._generator = None

    def stat(self, like: torch.Tensor, key: str, value: float) -> tuple[str, torch.Tensor]:
        return f"{self.name}/{key}", like.new_tensor(float(value), dtype=torch.float32)

    def __call__(self, module: Any, embeddings: torch.Tensor, labels: torch.Tensor
                 ) -> dict[str, torch.Tensor]:
        raise NotImplementedError


def split_mixed_tuples(tuples: IndicesTuple, num_real: int) -> tuple[IndicesTuple, int, int]:
    """Keep the mined tuples that mix real and synthetic points (rows ``>= num_real``).

    Args:
        tuples: pairs ``(a1, p, a2, n)`` or triplets ``(a, p, n)`` over ``[real; synthetic]``.
        num_real: ``B``, the number of real rows.

    Returns:
        The mixed tuples (same format), their count, and the count of tuples with at least
        one real member (a synthetic-only tuple carries no gradient: its points are fixed).
    """
    if len(tuples) == 4:
        a1, p, a2, n = tuples
        pos_syn = (a1 >= num_real).int() + (p >= num_real).int()
        neg_syn = (a2 >= num_real).int() + (n >= num_real).int()
        keep_pos, keep_neg = pos_syn == 1, neg_syn == 1
        mixed = int(keep_pos.sum() + keep_neg.sum())
        with_real = int((pos_syn < 2).sum() + (neg_syn < 2).sum())
        return (a1[keep_pos], p[keep_pos], a2[keep_neg], n[keep_neg]), mixed, with_real
    a, p, n = tuples
    syn = (a >= num_real).int() + (p >= num_real).int() + (n >= num_real).int()
    keep = (syn > 0) & (syn < 3)
    return (a[keep], p[keep], n[keep]), int(keep.sum()), int((syn < 3).sum())

"""Guards that stop a run whose numbers have stopped meaning anything.

A diverged run (a learning rate far too high, an fp16 overflow) trains on NaN for hours,
still selects a "best" checkpoint, and reports chance-level metrics computed from NaN
embeddings as if they were results. :class:`NonFiniteGuard` stops it at the first
non-finite training loss, naming the step, the loss terms and the learning rates, and
refuses to let validation or test metrics be computed from non-finite embeddings, or from
zero vectors (what the L2 normalisation makes of a network whose units all died in a
diverged step: the loss stays finite then, and the metrics sit at chance).
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from see_dml.runtime.errors import DivergenceError

log = logging.getLogger(__name__)


class NonFiniteGuard(Callback):
    """Stop training at a non-finite loss; refuse diverged validation / test embeddings.

    Args:
        max_skipped_steps: training steps with a non-finite loss that are skipped (their
            gradients dropped, so the optimiser leaves the weights as they were) before the
            run stops. 0: stop at the first. With fp16's gradient scaler the scaler skips
            such steps itself; they are still counted.

    Raises:
        DivergenceError: at the training step that exceeds ``max_skipped_steps`` (naming the
            step, every logged loss term and each parameter group's learning rate), or at the
            end of a validation / test epoch that embedded any image to a non-finite or zero
            vector (before the module computes metrics from it).
    """

    def __init__(self, max_skipped_steps: int = 0) -> None:
        if not isinstance(max_skipped_steps, int) or max_skipped_steps < 0:
            raise ValueError("callbacks.nonfinite_guard.max_skipped_steps must be a "
                             f"non-negative integer, got {max_skipped_steps!r}")
        self.max_skipped_steps = max_skipped_steps
        self.skipped_steps = 0
        self._batch_idx = 0
        self._drop_gradients = False
        self._bad_rows: torch.Tensor | None = None
        self._hook: torch.utils.hooks.RemovableHandle | None = None

    # -- training loss --------------------------------------------------------------------
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        self._batch_idx = batch_idx

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           loss: torch.Tensor) -> None:
        if bool(torch.isfinite(loss.detach()).all()):
            return
        self.skipped_steps += 1
        where = (f"training step {trainer.global_step} (epoch {trainer.current_epoch}, "
                 f"batch {self._batch_idx})")
        details = (f"loss={float(loss.detach().float().mean())}; "
                   f"terms: {self._loss_terms(trainer)}; "
                   f"learning rates: {self._learning_rates(trainer)}")
        if self.skipped_steps > self.max_skipped_steps:
            skipped = (f" after skipping {self.max_skipped_steps} such step(s)"
                       if self.max_skipped_steps else "")
            raise DivergenceError(
                f"non-finite training loss at {where}{skipped}: {details}. Training stopped "
                "(no metrics are written from a diverged model); lower optimizer.lr, or let "
                "callbacks.nonfinite_guard.max_skipped_steps=N skip up to N such steps."
            )
        log.warning("non-finite training loss at %s, step skipped (%d of at most %d): %s",
                    where, self.skipped_steps, self.max_skipped_steps, details)
        self._drop_gradients = getattr(trainer.precision_plugin, "scaler", None) is None

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        if self._drop_gradients:
            # Parameters without a gradient are left alone by torch's optimisers: no update,
            # no moment or weight-decay change.
            optimizer.zero_grad(set_to_none=True)
            self._drop_gradients = False

    @staticmethod
    def _loss_terms(trainer: L.Trainer) -> str:
        """This step's logged ``train/loss...`` values (``self.log`` of the training step)."""
        terms = {}
        for key, value in trainer.callback_metrics.items():
            if key.startswith("train/loss") and not key.endswith("_epoch"):
                terms[key.removesuffix("_step")] = float(value)
        return ", ".join(f"{k}={v:.6g}" for k, v in sorted(terms.items())) or "none logged"

    @staticmethod
    def _learning_rates(trainer: L.Trainer) -> str:
        rates = []
        for i, optimizer in enumerate(trainer.optimizers):
            for j, group in enumerate(optimizer.param_groups):
                name = group.get("name", f"optimizer{i}/group{j}")
                rates.append(f"{name}={group['lr']:.3g}")
        return ", ".join(rates) or "no optimiser"

    # -- evaluation embeddings ------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._hook is None:
            self._hook = pl_module.register_forward_hook(self._count_bad_rows)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _count_bad_rows(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if module.training or not isinstance(output, torch.Tensor) or output.ndim != 2:
            return
        # Counted on the device, without a sync per batch; read once at the epoch's end.
        # Embeddings are unit vectors: a norm near 0 is a zero vector, not a small one.
        out = output.detach().float()
        bad = (~torch.isfinite(out).all(dim=1) | (out.norm(dim=1) < 0.5)).sum()
        self._bad_rows = bad if self._bad_rows is None else self._bad_rows + bad

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule
                                  ) -> None:
        self._bad_rows = None

    on_test_epoch_start = on_validation_epoch_start

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule
                                ) -> None:
        # with test_every_epoch the validation loop embeds the test split(s) too
        names = getattr(getattr(trainer, "datamodule", None), "val_split_names", ["val"])
        self._check_embeddings(trainer, pl_module, " or ".join(names) or "val")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check_embeddings(trainer, pl_module, "test")

    def _check_embeddings(self, trainer: L.Trainer, pl_module: L.LightningModule,
                          split: str) -> None:
        bad = self._bad_rows if self._bad_rows is not None else torch.zeros(
            (), device=pl_module.device)
        self._bad_rows = None
        # Every rank takes part in the sum, so all ranks stop together under DDP.
        n_bad = trainer.strategy.reduce(bad.float(), reduce_op="sum")
        n_bad = int(n_bad.item()) if isinstance(n_bad, torch.Tensor) else int(n_bad)
        if n_bad == 0:
            return
        raise DivergenceError(
            f"{n_bad} {split} image(s) were embedded to NaN, inf or zero vectors at epoch "
            f"{trainer.current_epoch}, training step {trainer.global_step}: the model has "
            "diverged (or its units died), and metrics from these embeddings would be "
            "meaningless, so none are computed. Learning rates: "
            f"{self._learning_rates(trainer)}; lower optimizer.lr."
        )

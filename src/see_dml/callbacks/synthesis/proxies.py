"""Proxy Synthesis (Gu et al., AAAI 2021) as a synthesis callback: virtual classes mixed from
pairs of embeddings and of their proxies."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import lightning as L
import numpy as np
import torch

from see_dml.callbacks.synthesis.base import SynthesisCallback
from see_dml.losses import MetricLoss, full_precision, no_autocast
from see_dml.synthesis import (
    proxy_synthesis,
)

if TYPE_CHECKING:
    from see_dml.module import DMLModule


class ProxySynthesisCallback(SynthesisCallback):
    """Proxy Synthesis (Gu, Ko & Kim, AAAI 2021), for proxy losses; its loss is the loss.

    Every step draws ``λ ~ Beta(α, α)``, mixes the first ``floor(B·ratio)`` embeddings with a
    partner of another class and their proxies alike, and computes the loss over real and
    synthetic embeddings with ``C + S`` classes (:func:`~see_dml.synthesis.proxy_synthesis`).

    Args:
        ratio: PS's ``μ``, synthetic embeddings per real one (paper: 1.0).
        alpha: PS's ``α`` of the Beta distribution (paper: 0.4).
        name, seed: see :class:`SynthesisCallback`.
    """

    def __init__(self, ratio: float = 1.0, alpha: float = 0.4, name: str = "proxy_synthesis",
                 seed: int = 0) -> None:
        super().__init__(name, seed)
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"synthesis.ratio must be in [0, 1], got {ratio}")
        if alpha <= 0:
            raise ValueError(f"synthesis.alpha must be > 0, got {alpha}")
        self.ratio = float(ratio)
        self.alpha = float(alpha)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        criterion = cast("DMLModule", pl_module).criterion  # the module: see SynthesisCallback
        if criterion.kind != "proxy":
            from see_dml.runtime.errors import ConfigError  # one 'error:' line, not a traceback

            raise ConfigError(f"synthesis=proxy_synthesis mixes proxies, but loss="
                             f"{criterion.name} has none; use loss=proxy_anchor, norm_softmax "
                             "or arcface")
        super().setup(trainer, pl_module, stage)

    def draw_lambda(self, device: torch.device) -> float:
        """``λ ~ Beta(α, α)`` from a NumPy generator seeded by this callback's generator (torch
        cannot draw Beta samples from a given generator); resumes exactly with it."""
        seed = torch.randint(2**62, (1,), generator=self.generator(device), device=device)
        return float(np.random.default_rng(int(seed.item())).beta(self.alpha, self.alpha))

    def __call__(self, module: Any, embeddings: torch.Tensor, labels: torch.Tensor
                 ) -> dict[str, torch.Tensor]:
        criterion: MetricLoss = module.criterion
        lam = self.draw_lambda(embeddings.device)
        with no_autocast(embeddings):
            embeddings = full_precision(embeddings)
            proxies = criterion.class_directions()
            if proxies is None:  # setup refuses such a loss before training
                raise ValueError(f"synthesis=proxy_synthesis: loss '{criterion.name}' has no "
                                 "proxies")
            syn, syn_labels, syn_proxies = proxy_synthesis(
                embeddings, labels, proxies, self.ratio, lam)
            loss = criterion.forward_with_extra_classes(
                torch.cat([embeddings, syn]), torch.cat([labels, syn_labels]), syn_proxies)
        return {"loss/metric": loss, **dict([self.stat(embeddings, "synthetic", len(syn)),
                                             self.stat(embeddings, "lambda", lam)])}

"""SEE as a synthesis callback: when to expand, how many, and how its term enters each loss
(the synthesis itself is :func:`see_dml.synthesis.spherical_expansion`)."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch

from see_dml.callbacks.synthesis.base import SynthesisCallback, split_mixed_tuples
from see_dml.losses import MetricLoss, full_precision, no_autocast
from see_dml.synthesis import (
    class_axes,
    expansion_fraction,
    expansion_threshold,
    select_threshold,
    select_top_fraction,
    spherical_expansion,
)
from see_dml.synthesis.see import ExpansionMode


class SEECallback(SynthesisCallback):
    """Spherical Embedding Expansion (Le & Woo, PAKDD 2024).

    Args:
        n_points: synthetic points per expanded sample (``n <= d - 2``).
        mode: ``top_fraction`` (expand the ``round(B·p(e))`` samples closest to their axis)
            or ``threshold`` (expand every sample with cosine ``>= t(e)``).
        p_min, p_max: the schedule's ends (fractions, or cosine thresholds).
        scheduled: cosine ramp over training; ``False`` keeps ``p_max`` (top-fraction) or
            ``max(threshold_floor, p_min)`` (threshold) throughout.
        ramp_end_epoch: the top-fraction ramp ends here for long runs (the threshold decay
            spans the whole run, as the authors').
        threshold_floor: threshold mode: the lowest threshold.
        weight: λ of the synthetic term.
        directions: ``simplex`` (Max-Mahalanobis centres), ``random`` (the authors'
            ablation: zero-sum Gaussian matrix, points off the sphere) or ``random_circle``
            (same latitude circle as SEE, random zero-sum placement).
        pair_axes: pair losses: ``leave_one_out`` (the class mean of the batch without the
            sample) or ``class_mean`` (with it; its synthetic positives are never mined).
        pair_integration: pair losses: ``mined`` (the loss's miner runs over real and
            synthetic points together; the term is the loss over the mined tuples that mix
            the two) or ``joint`` (``λ·L([Z; Ẑ], [Y; Ŷ])``, every mined tuple).
        name, seed: see :class:`SynthesisCallback`.
    """

    def __init__(self, n_points: int = 8,
                 mode: Literal["top_fraction", "threshold"] = "top_fraction",
                 p_min: float = 0.0, p_max: float = 0.4, scheduled: bool = True,
                 ramp_end_epoch: int = 200, threshold_floor: float = 0.0, weight: float = 0.2,
                 directions: ExpansionMode = "simplex",
                 pair_axes: Literal["leave_one_out", "class_mean"] = "leave_one_out",
                 pair_integration: Literal["mined", "joint"] = "mined", name: str = "see",
                 seed: int = 0) -> None:
        super().__init__(name, seed)
        for key, value, allowed in (
                ("mode", mode, ("top_fraction", "threshold")),
                ("directions", directions, ("simplex", "random", "random_circle")),
                ("pair_axes", pair_axes, ("leave_one_out", "class_mean")),
                ("pair_integration", pair_integration, ("mined", "joint"))):
            if value not in allowed:
                raise ValueError(f"see.{key} must be one of {', '.join(allowed)}; got '{value}'")
        self.n_points = n_points
        self.mode = mode
        self.p_min, self.p_max = p_min, p_max
        self.scheduled = scheduled
        self.ramp_end_epoch = ramp_end_epoch
        self.threshold_floor = threshold_floor
        self.weight = float(weight)
        self.directions = directions
        self.pair_axes = pair_axes
        self.pair_integration = pair_integration

    def current_level(self) -> float:
        """The expansion fraction (top-fraction) or cosine threshold at this point of training."""
        if self.mode == "top_fraction":
            return expansion_fraction(self.epoch, self.max_epochs, self.p_min, self.p_max,
                                      self.ramp_end_epoch, self.scheduled)
        if not self.scheduled:
            return max(self.threshold_floor, self.p_min)
        return expansion_threshold(self.epoch, self.max_epochs, self.p_max, self.p_min,
                                   self.threshold_floor)

    def select(self, embeddings: torch.Tensor, axes: torch.Tensor,
               valid: torch.Tensor | None = None) -> torch.Tensor:
        """Indices of the samples to expand; ``valid`` ``(B,)`` excludes samples outright."""
        cos = (embeddings * axes).sum(dim=1)
        if valid is not None:
            cos = torch.where(valid, cos, torch.full_like(cos, -math.inf))
        level = self.current_level()
        chosen = (select_top_fraction(cos, level) if self.mode == "top_fraction"
                  else select_threshold(cos, level))
        return chosen if valid is None else chosen[valid[chosen]]

    def _pair_term(self, criterion: MetricLoss, embeddings: torch.Tensor, labels: torch.Tensor,
                   syn: torch.Tensor, syn_labels: torch.Tensor
                   ) -> tuple[torch.Tensor, float]:
        """The synthetic term of a pair loss and the share of mined tuples that are mixed."""
        all_emb, all_labels = torch.cat([embeddings, syn]), torch.cat([labels, syn_labels])
        mixed_tuples, mixed, with_real = split_mixed_tuples(
            criterion.mine(all_emb, all_labels), len(labels))
        share = mixed / with_real if with_real else 0.0
        if self.pair_integration == "joint":
            return criterion(all_emb, all_labels), share
        if not mixed:
            return all_emb.sum() * 0, share
        return criterion(all_emb, all_labels, indices_tuple=mixed_tuples), share

    def __call__(self, module: Any, embeddings: torch.Tensor, labels: torch.Tensor
                 ) -> dict[str, torch.Tensor]:
        criterion: MetricLoss = module.criterion
        embeddings = full_precision(embeddings)
        proxies = criterion.class_directions()
        with torch.no_grad():
            z = embeddings.detach()
            if proxies is not None:  # the authors' axis: the sample's own proxy
                axes, valid = proxies.detach().to(z.dtype)[labels], None
            else:
                axes, valid = class_axes(z, labels, self.pair_axes == "leave_one_out")
                axes = axes.to(z.dtype)
            chosen = self.select(z, axes, valid)
            syn, syn_labels = spherical_expansion(
                z[chosen], labels[chosen], axes[chosen], self.n_points,
                generator=self.generator(z.device) if len(chosen) else None,
                mode=self.directions)
        stats = dict([self.stat(z, "expanded", len(chosen)),
                      self.stat(z, "synthetic", len(syn)),
                      self.stat(z, "level", self.current_level())])
        with no_autocast(embeddings):
            if proxies is not None:
                # detached points: the term reaches only the proxies (the authors' formula);
                # nothing expanded (epoch 0 of the ramp): no term, as theirs
                term = criterion(syn, syn_labels) if len(syn) else z.new_zeros(())
            else:
                term, share = (self._pair_term(criterion, embeddings, labels, syn, syn_labels)
                               if len(syn) else (z.new_zeros(()), 0.0))
                stats.update([self.stat(z, "mined_share", share)])
        return {**stats, "loss/synthetic": self.weight * term}

"""The synthesis callbacks: plug SEE, EE, Symmetrical or Proxy Synthesis into training.

The module never knows which synthesiser is active. A callback registers itself as an
*embedding hook* of :class:`~see_dml.module.DMLModule`; every training step it receives the
(DDP-gathered) embeddings and labels, decides with its schedule what to synthesise, calls a
pure function from :mod:`see_dml.synthesis`, and returns loss terms (``loss/...``) and
statistics (``<name>/...``) for the logger. A hook that returns ``loss/metric`` *replaces*
the plain loss (EE, Symmetrical and Proxy Synthesis are the loss); SEE adds
``loss/synthetic``. Each synthesiser is one config node with a ``_target_`` (``conf/see``,
``conf/synthesis/*.yaml``): a new synthesiser is a class here and one YAML file.

How the synthetic points enter each kind of loss is written out, with every departure from
the authors' code, in ``docs/method.md``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal, cast

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig
from pytorch_metric_learning.losses import TripletMarginLoss

from see_dml.config import to_dict
from see_dml.losses import MetricLoss, full_precision, hphn_triplet_loss, no_autocast
from see_dml.synthesis import (
    class_axes,
    embedding_expansion,
    expansion_fraction,
    expansion_threshold,
    hardest_negative_pairs,
    proxy_synthesis,
    select_threshold,
    select_top_fraction,
    spherical_expansion,
    symmetric_npair_loss,
    symmetrical_synthesis,
)
from see_dml.synthesis.see import ExpansionMode

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


class HardPairSynthesisCallback(SynthesisCallback):
    """Base of EE and Symmetrical Synthesis: differentiable points from same-class pairs.

    The synthesiser's loss *is* the loss (``loss/metric``):

    * pair losses with ``mining=hardest``: each real anchor's hardest real positive pair
      and hardest negative pair over its whole synthetic group
      (:func:`~see_dml.synthesis.hardest_negative_pairs`); ``loss=triplet`` gives EE's
      HPHN triplet (:func:`~see_dml.losses.hphn_triplet_loss`), other pair losses take the
      two pairs as their ``(a1, p, a2, n)`` tuple;
    * pair losses with ``mining=none``: ``L([Z; Ẑ], [Y; Ŷ])`` with the loss's own miner;
    * proxy losses: ``L([Z; Ẑ], [Y; Ŷ])``.

    Args:
        mining: ``hardest`` (as both papers) or ``none``.
        real_term: also add the plain loss of the real embeddings (``loss/real``); not in
            the papers, off by default.
        name, seed: see :class:`SynthesisCallback`.
        margin: the HPHN triplet's margin (``loss=triplet``); ``None``: the loss's own.
    """

    def __init__(self, mining: str = "hardest", real_term: bool = False, name: str = "pairs",
                 seed: int = 0, margin: float | None = None) -> None:
        super().__init__(name, seed)
        if mining not in ("hardest", "none"):
            raise ValueError(f"synthesis.mining must be 'hardest' or 'none', got '{mining}'")
        self.mining = mining
        self.real_term = bool(real_term)
        self.margin = None if margin is None else float(margin)

    def synthesise(self, embeddings: torch.Tensor, labels: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(syn (S, d), syn_labels (S,), pair_index (S, 2))``, differentiable."""
        raise NotImplementedError

    def loss(self, criterion: MetricLoss, embeddings: torch.Tensor, labels: torch.Tensor
             ) -> tuple[torch.Tensor, int]:
        """The synthesiser's loss over ``embeddings (B, d)`` and the number of points made."""
        syn, syn_labels, pair_index = self.synthesise(embeddings, labels)
        if not len(syn):  # no same-class pair in the batch: the plain loss
            return criterion(embeddings, labels), 0
        all_emb, all_labels = torch.cat([embeddings, syn]), torch.cat([labels, syn_labels])
        if criterion.kind == "proxy" or self.mining == "none":
            return criterion(all_emb, all_labels), len(syn)
        indices = hardest_negative_pairs(embeddings, labels, syn, syn_labels, pair_index)
        if isinstance(criterion.loss, TripletMarginLoss):
            loss = criterion.loss
            margin = loss.margin if self.margin is None else self.margin
            return hphn_triplet_loss(all_emb, indices, loss.distance, margin,
                                     smooth=loss.smooth_loss), len(syn)
        if criterion.tuple_kind != "pair":
            raise ValueError(f"synthesis.mining=hardest needs a pair loss or the triplet loss; "
                             f"loss={criterion.name} takes other tuples (use mining=none)")
        return criterion(all_emb, all_labels, indices_tuple=indices), len(syn)

    def __call__(self, module: Any, embeddings: torch.Tensor, labels: torch.Tensor
                 ) -> dict[str, torch.Tensor]:
        criterion: MetricLoss = module.criterion
        with no_autocast(embeddings):
            embeddings = full_precision(embeddings)
            loss, made = self.loss(criterion, embeddings, labels)
            out = {"loss/metric": loss, **dict([self.stat(embeddings, "synthetic", made)])}
            if self.real_term:
                out["loss/real"] = criterion(embeddings, labels)
        return out


class EmbeddingExpansionCallback(HardPairSynthesisCallback):
    """Embedding Expansion (Ko & Gu, CVPR 2020): ``n`` division points per same-class chord.

    Args:
        n_points: internal division points per pair (EE's default 2).
        pairs: ``neighbours`` (EE's code: a class's samples paired 1st-2nd, 3rd-4th, ...) or
            ``all`` (every same-class pair). docs/method.md.
        margin: the HPHN triplet's margin; ``None``: ``loss.loss.margin``. EE's script
            trains with 1e-5 (conf/synthesis/embedding_expansion.yaml).
        mining, real_term, name, seed: see :class:`HardPairSynthesisCallback`.
    """

    def __init__(self, n_points: int = 2, mining: str = "hardest", real_term: bool = False,
                 name: str = "embedding_expansion", seed: int = 0, pairs: str = "neighbours",
                 margin: float | None = None) -> None:
        super().__init__(mining, real_term, name, seed, margin)
        if n_points < 1:
            raise ValueError(f"synthesis.n_points must be >= 1, got {n_points}")
        if pairs not in ("neighbours", "all"):
            raise ValueError(f"synthesis.pairs must be 'neighbours' or 'all', got '{pairs}'")
        self.n_points = n_points
        self.pairs = pairs

    def synthesise(self, embeddings: torch.Tensor, labels: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return embedding_expansion(embeddings, labels, self.n_points, pairs=self.pairs)


class SymmetricalSynthesisCallback(HardPairSynthesisCallback):
    """Symmetrical Synthesis (Gu & Ko, AAAI 2020): each pair reflected about each other.

    Args:
        formulation: ``official`` (default): the authors' loss,
            :func:`~see_dml.synthesis.symmetric_npair_loss` (per pair and other pair the
            maximum similarity over the six pairs of {anchor, positive, sym1, sym2}, an
            N-pair softmax over it); the configured loss is not used (only for
            ``real_term``). ``hardest_pair``: the project's earlier formulation, the
            reflections with EE's hardest-pair mining fed to the configured loss (see
            :class:`HardPairSynthesisCallback`). docs/method.md.
        scale: ``official``: logits are ``scale`` times the similarities (1: the inner
            products of the embeddings as the model outputs them, as the authors').
        mining, real_term, name, seed: see :class:`HardPairSynthesisCallback`
            (``mining`` applies to ``hardest_pair`` only).
    """

    def __init__(self, formulation: str = "official", scale: float = 1.0,
                 mining: str = "hardest", real_term: bool = False,
                 name: str = "symmetric", seed: int = 0) -> None:
        super().__init__(mining, real_term, name, seed)
        if formulation not in ("official", "hardest_pair"):
            raise ValueError("synthesis.formulation must be 'official' or 'hardest_pair', "
                             f"got '{formulation}'")
        self.formulation = formulation
        self.scale = float(scale)

    def loss(self, criterion: MetricLoss, embeddings: torch.Tensor, labels: torch.Tensor
             ) -> tuple[torch.Tensor, int]:
        if self.formulation == "hardest_pair":
            return super().loss(criterion, embeddings, labels)
        loss, pairs = symmetric_npair_loss(embeddings, labels, self.scale)
        if not pairs:  # no same-class pair in the batch: the plain loss
            return criterion(embeddings, labels), 0
        return loss, 2 * pairs

    def synthesise(self, embeddings: torch.Tensor, labels: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return symmetrical_synthesis(embeddings, labels)


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
            from see_dml.errors import ConfigError  # one 'error:' line, not a traceback

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


def synthesis_node(cfg: DictConfig) -> DictConfig | None:
    """The one synthesiser's config node: ``see`` when ``see.enabled``, else ``synthesis``.

    ``validate_config`` rejects asking for both; this only picks.
    """
    see = cfg.get("see")
    if see is not None and see.get("enabled", False):
        return see
    return cfg.get("synthesis")


def build_synthesis_callback(cfg: DictConfig) -> SynthesisCallback | None:
    """Instantiate the synthesiser's node (its ``_target_``); ``None`` for the plain loss."""
    node = synthesis_node(cfg)
    if node is None:
        return None
    kwargs = to_dict(node)
    kwargs.pop("enabled", None)  # the SEE switch, not an argument
    return instantiate(kwargs, seed=cfg.seed)

"""The synthesis callback: plugs a synthesiser (SEE, EE, Symmetrical) into training.

The module never knows which synthesiser is active. The callback registers itself as an
*embedding hook* of :class:`~see_dml.module.DMLModule`; every training step it receives
the (DDP-gathered) unit embeddings and labels, decides with its schedule what to expand,
calls a pure synthesis function from :mod:`see_dml.synthesis`, and returns the extra loss
term (``loss/synthetic``) and statistics (``see/...``) for the logger.

How synthetic points enter each kind of loss
--------------------------------------------
SEE (``see.enabled=true``), points detached (``torch.no_grad`` synthesis):

* proxy losses (Proxy-Anchor, NormSoftmax, ArcFace): axis = the sample's own proxy;
  term ``λ·L(stopgrad(Ẑ), Ŷ)`` — a second loss over the synthetic points alone that
  updates only the proxies. For Proxy-Anchor this is exactly the authors' formulation.
* pair losses (Multi-Similarity, contrastive, triplet): axis = the batch mean of the class
  (there is no proxy); with ``see.pair_integration=reference`` (default) the term is
  ``λ·L(Z, Y; ref=stopgrad(Ẑ), ref_labels=Ŷ)``: real anchors are pulled to / pushed from
  the synthetic points; with ``joint`` it is ``λ·L([Z; stopgrad(Ẑ)], [Y; Ŷ])``.

Embedding Expansion and Symmetrical Synthesis (``synthesis=embedding_expansion|symmetric``)
follow their papers: synthetic points are differentiable functions of real pairs, and for
pair losses the term is ``λ·L([Z; Ẑ], [Y; Ŷ])`` restricted to the hardest (positive,
negative) pair of each anchor's synthetic group (``synthesis.mining=hardest``; a triplet
loss takes the group's hardest negative against the real anchor); for proxy
losses, where pair mining means nothing, ``λ·L(Ẑ, Ŷ)`` with gradients through ``Ẑ``.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig
from pytorch_metric_learning.losses import TripletMarginLoss

from see_dml.synthesis import (
    embedding_expansion,
    expansion_fraction,
    expansion_threshold,
    hardest_negative_pairs,
    select_threshold,
    select_top_fraction,
    spherical_expansion,
    symmetrical_synthesis,
)


def class_mean_axes(embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Unit direction of each sample's class mean in the batch: ``(B, d)`` -> ``(B, d)``."""
    classes, inverse = torch.unique(labels, return_inverse=True)
    sums = torch.zeros(len(classes), embeddings.shape[1], device=embeddings.device,
                       dtype=embeddings.dtype).index_add_(0, inverse, embeddings)
    return F.normalize(sums, dim=1)[inverse]


class SynthesisCallback(Callback):
    """Base: registration, the step's random generator (saved in checkpoints) and logging."""

    def __init__(self, weight: float, seed: int = 0) -> None:
        self.weight = float(weight)
        self.seed = int(seed)
        self._generator: torch.Generator | None = None
        self._pending_state: torch.Tensor | None = None
        self.epoch = 0
        self.max_epochs = 1

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        pl_module.add_embedding_hook(self)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epoch = trainer.current_epoch
        self.max_epochs = max(1, trainer.max_epochs or 1)

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
        state = {"seed": self.seed}
        if self._generator is not None:
            state["generator"] = self._generator.get_state()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.seed = state_dict.get("seed", self.seed)
        self._pending_state = state_dict.get("generator")
        self._generator = None

    def __call__(self, module: Any, embeddings: torch.Tensor, labels: torch.Tensor
                 ) -> dict[str, torch.Tensor]:
        raise NotImplementedError


class SEECallback(SynthesisCallback):
    """Spherical Embedding Expansion (Le & Woo, PAKDD 2024).

    Args:
        n_points: synthetic points per expanded sample (``n <= d - 2``).
        mode: ``top_fraction`` (expand the ``round(B·p(e))`` samples closest to their axis)
            or ``threshold`` (expand every sample with cosine ``>= t(e)``).
        p_min, p_max: the schedule's ends (fractions, or cosine thresholds).
        scheduled: cosine ramp over training; ``False`` keeps ``p_max`` throughout.
        ramp_end_epoch: the ramp ends here for long runs.
        threshold_floor: threshold mode: the lowest threshold.
        weight: λ of the synthetic term.
        directions: ``simplex`` (Max-Mahalanobis centres) or ``random`` (ablation: same
            latitude circle, random zero-sum placement).
        pair_integration: ``reference`` or ``joint`` (pair losses, see module docstring).
    """

    def __init__(self, n_points: int = 8, mode: str = "top_fraction", p_min: float = 0.0,
                 p_max: float = 0.4, scheduled: bool = True, ramp_end_epoch: int = 200,
                 threshold_floor: float = 0.0, weight: float = 0.2,
                 directions: str = "simplex", pair_integration: str = "reference",
                 seed: int = 0) -> None:
        super().__init__(weight, seed)
        if mode not in ("top_fraction", "threshold"):
            raise ValueError(f"see.mode must be 'top_fraction' or 'threshold', got '{mode}'")
        if directions not in ("simplex", "random"):
            raise ValueError(f"see.directions must be 'simplex' or 'random', got '{directions}'")
        if pair_integration not in ("reference", "joint"):
            raise ValueError("see.pair_integration must be 'reference' or 'joint', "
                             f"got '{pair_integration}'")
        self.n_points = n_points
        self.mode = mode
        self.p_min, self.p_max = p_min, p_max
        self.scheduled = scheduled
        self.ramp_end_epoch = ramp_end_epoch
        self.threshold_floor = threshold_floor
        self.directions = directions
        self.pair_integration = pair_integration

    def current_level(self) -> float:
        """This epoch's expansion fraction (top-fraction) or cosine threshold."""
        if self.mode == "top_fraction":
            return expansion_fraction(self.epoch, self.max_epochs, self.p_min, self.p_max,
                                      self.ramp_end_epoch, self.scheduled)
        if not self.scheduled:
            return max(self.threshold_floor, self.p_min)
        return expansion_threshold(self.epoch, self.max_epochs, self.p_max, self.p_min,
                                   self.threshold_floor, self.ramp_end_epoch)

    def select(self, embeddings: torch.Tensor, axes: torch.Tensor) -> torch.Tensor:
        cos = (embeddings * axes).sum(dim=1)
        level = self.current_level()
        if self.mode == "top_fraction":
            return select_top_fraction(cos, level)
        return select_threshold(cos, level)

    def __call__(self, module: Any, embeddings: torch.Tensor, labels: torch.Tensor
                 ) -> dict[str, torch.Tensor]:
        criterion = module.criterion
        with torch.no_grad():
            z = embeddings.detach().float()
            proxies = criterion.class_directions()
            axes = (proxies.detach().float()[labels] if proxies is not None
                    else class_mean_axes(z, labels))
            chosen = self.select(z, axes)
            if len(chosen):
                syn, syn_labels = spherical_expansion(
                    z[chosen], labels[chosen], axes[chosen], self.n_points,
                    generator=self.generator(z.device),
                    mode="mmd" if self.directions == "simplex" else "random")
        stats = {
            "see/expanded": embeddings.new_tensor(float(len(chosen))),
            "see/synthetic": embeddings.new_tensor(float(len(chosen) * self.n_points)),
            "see/level": embeddings.new_tensor(self.current_level()),
        }
        if not len(chosen):  # nothing expanded (epoch 0 of the ramp): no synthetic term
            return {**stats, "loss/synthetic": embeddings.new_zeros(())}
        syn = syn.to(embeddings.dtype)
        if criterion.kind == "proxy":
            term = criterion(syn, syn_labels)  # detached points: reaches only the proxies
        elif self.pair_integration == "reference":
            term = criterion(embeddings, labels, ref_emb=syn, ref_labels=syn_labels)
        else:
            term = criterion(torch.cat([embeddings, syn]), torch.cat([labels, syn_labels]))
        return {**stats, "loss/synthetic": self.weight * term}


class PairSynthesisCallback(SynthesisCallback):
    """Embedding Expansion (Ko & Gu, CVPR 2020) or Symmetrical Synthesis (Gu & Ko, AAAI 2020).

    Args:
        method: ``embedding_expansion`` or ``symmetric``.
        n_points: EE's internal division points per same-class pair.
        weight: λ of the synthetic term.
        mining: ``hardest`` (each anchor's hardest positive and hardest negative over its
            synthetic group, as both papers) or ``none`` (the loss's own miner, if any).
    """

    def __init__(self, method: str, n_points: int = 2, weight: float = 1.0,
                 mining: str = "hardest", seed: int = 0) -> None:
        super().__init__(weight, seed)
        if method not in ("embedding_expansion", "symmetric"):
            raise ValueError(f"unknown synthesis '{method}' (embedding_expansion, symmetric)")
        if mining not in ("hardest", "none"):
            raise ValueError(f"synthesis.mining must be 'hardest' or 'none', got '{mining}'")
        self.method = method
        self.n_points = n_points
        self.mining = mining

    def __call__(self, module: Any, embeddings: torch.Tensor, labels: torch.Tensor
                 ) -> dict[str, torch.Tensor]:
        criterion = module.criterion
        if self.method == "embedding_expansion":
            syn, syn_labels, pair_index = embedding_expansion(embeddings, labels, self.n_points)
        else:
            syn, syn_labels, pair_index = symmetrical_synthesis(embeddings, labels)
        stats = {"see/synthetic": embeddings.new_tensor(float(len(syn)))}
        if not len(syn):
            return {**stats, "loss/synthetic": embeddings.new_zeros(())}
        if criterion.kind == "proxy":
            term = criterion(syn, syn_labels)
        else:
            all_emb, all_labels = torch.cat([embeddings, syn]), torch.cat([labels, syn_labels])
            indices = None
            if self.mining == "hardest":
                a1, p, a2, n = hardest_negative_pairs(embeddings, labels, syn, syn_labels,
                                                      pair_index)
                if isinstance(criterion.loss, TripletMarginLoss):
                    # PML forms triplets only where a1 == a2; EE's negative pair may start
                    # at a synthetic member of the anchor's group, so anchor it at a1.
                    a2 = a1
                indices = (a1, p, a2, n)
            term = criterion(all_emb, all_labels, indices_tuple=indices)
        return {**stats, "loss/synthetic": self.weight * term}


def build_synthesis_callback(cfg: DictConfig) -> SynthesisCallback | None:
    """The callback for ``see.enabled=true`` or ``synthesis=...``; ``None`` for the plain loss."""
    see = cfg.get("see")
    synthesis = cfg.get("synthesis")
    see_on = see is not None and see.get("enabled", False)
    if see_on and synthesis is not None:
        raise ValueError("see.enabled=true and synthesis=... both ask for a synthesiser")
    if see_on:
        return SEECallback(
            n_points=see.n_points, mode=see.mode, p_min=see.p_min, p_max=see.p_max,
            scheduled=see.scheduled, ramp_end_epoch=see.ramp_end_epoch,
            threshold_floor=see.threshold_floor, weight=see.weight,
            directions=see.directions, pair_integration=see.pair_integration,
            seed=cfg.seed)
    if synthesis is not None:
        return PairSynthesisCallback(
            method=synthesis.name, n_points=synthesis.get("n_points", 2),
            weight=synthesis.weight, mining=synthesis.mining, seed=cfg.seed)
    return None

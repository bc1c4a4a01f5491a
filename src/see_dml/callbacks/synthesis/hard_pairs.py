"""The hard-pair baselines as synthesis callbacks: Embedding Expansion (Ko & Gu, CVPR 2020) and
Symmetrical Synthesis (Gu & Ko, CVPR 2020), whose loss replaces the plain one."""

from __future__ import annotations

from typing import Any

import torch
from pytorch_metric_learning.losses import TripletMarginLoss

from see_dml.callbacks.synthesis.base import SynthesisCallback
from see_dml.losses import MetricLoss, full_precision, hphn_triplet_loss, no_autocast
from see_dml.synthesis import (
    embedding_expansion,
    hardest_negative_pairs,
    symmetric_npair_loss,
    symmetrical_synthesis,
)


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

"""One adapter over pytorch-metric-learning losses and miners.

The library has the losses, miners and distances; what it lacks, and this adapter adds, is
(1) building proxy/classifier losses from a config that does not know the number of classes,
(2) a uniform view of the class directions (``ProxyAnchorLoss.proxies`` is ``(C, d)``, the
softmax family's ``W`` is ``(d, C)``) that synthesis needs, (3) the loss *kind* (``proxy``
or ``pair``), which decides how synthetic embeddings enter the loss (``docs/method.md``),
(4) the tuples the loss would train on (:meth:`MetricLoss.mine`), so that a synthesiser can
mine over real and synthetic points together, (5) a call with extra classes appended to the
proxies (:meth:`MetricLoss.forward_with_extra_classes`, for Proxy Synthesis) and (6) float32
arithmetic whatever the training precision: pytorch-metric-learning casts its proxies *in
place* to the embeddings' dtype (``cast_types``), so bf16/fp16 embeddings would silently turn
the proxies Parameter into half precision.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, Literal, overload

import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import BaseMetricLossFunction, GenericPairLoss
from pytorch_metric_learning.miners import BaseMiner
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu
from torch import nn

LossKind = Literal["proxy", "pair"]
IndicesTuple = tuple[torch.Tensor, ...]


@overload
def full_precision(x: torch.Tensor) -> torch.Tensor: ...
@overload
def full_precision(x: torch.Tensor | None) -> torch.Tensor | None: ...


def full_precision(x: torch.Tensor | None) -> torch.Tensor | None:
    """fp16/bf16 tensors as float32; float32/float64 (and ``None``) unchanged. A tensor in is
    a tensor out (the first overload), so callers that pass no ``None`` get no ``None``."""
    if x is not None and x.dtype in (torch.float16, torch.bfloat16):
        return x.float()
    return x


def no_autocast(x: torch.Tensor) -> torch.autocast:
    """A context without autocast on ``x``'s device: matmuls stay in the inputs' dtype."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def _accepts(factory: Callable, name: str) -> bool:
    func = factory.func if isinstance(factory, functools.partial) else factory
    try:
        return name in inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False


class MetricLoss(nn.Module):
    """A pytorch-metric-learning loss with an optional miner.

    Args:
        loss: the loss, or a factory (``_partial_`` config) still missing ``num_classes``
            and ``embedding_size`` when the loss has class weights.
        num_classes: training classes.
        embed_dim: embedding size.
        miner: optional miner (or factory) whose tuples feed the loss.
        name: short name for logs.
        lr_multiplier: learning-rate multiplier of the loss's own parameters (proxies).
    """

    def __init__(self, loss: BaseMetricLossFunction | Callable[..., BaseMetricLossFunction],
                 num_classes: int, embed_dim: int, miner: BaseMiner | Callable | None = None,
                 name: str = "loss", lr_multiplier: float = 1.0) -> None:
        super().__init__()
        if not isinstance(loss, nn.Module):
            kwargs: dict[str, Any] = {}
            if _accepts(loss, "num_classes"):
                kwargs = {"num_classes": num_classes, "embedding_size": embed_dim}
            loss = loss(**kwargs)
        if miner is not None and not isinstance(miner, nn.Module):
            miner = miner()
        self.loss = loss
        self.miner = miner
        self.name = name
        self.lr_multiplier = float(lr_multiplier)
        self.num_classes = num_classes
        self.embed_dim = embed_dim

    @property
    def kind(self) -> LossKind:
        return "proxy" if self._class_weight() is not None else "pair"

    def _class_weight(self) -> torch.Tensor | None:
        """The class weights as ``(C, d)``: ``proxies`` are stored so, the softmax family's
        ``W`` as ``(d, C)`` (decided by name: the shapes alone are ambiguous when C == d)."""
        for attr, transpose in (("proxies", False), ("W", True)):
            weight = getattr(self.loss, attr, None)
            if isinstance(weight, torch.Tensor):
                return weight.t() if transpose else weight
        return None

    def class_directions(self) -> torch.Tensor | None:
        """Unit class directions ``(C, d)`` (the proxies), or ``None`` for pair losses."""
        weight = self._class_weight()
        if weight is None:
            return None
        return F.normalize(weight, dim=-1)

    @property
    def tuple_kind(self) -> Literal["pair", "triplet"]:
        """What the loss trains on: pairs ``(a1, p, a2, n)`` or triplets ``(a, p, n)``."""
        return "pair" if isinstance(self.loss, GenericPairLoss) else "triplet"

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                ref_emb: torch.Tensor | None = None,
                ref_labels: torch.Tensor | None = None,
                indices_tuple: tuple | None = None) -> torch.Tensor:
        """Loss of ``embeddings (B, d)`` with ``labels (B,)``; ``ref_*`` for pair losses.

        Runs in float32 (float64 inputs stay float64) with autocast off, whatever the
        training precision; the result is a 0-dim tensor of that dtype.
        """
        with no_autocast(embeddings):
            embeddings, ref_emb = full_precision(embeddings), full_precision(ref_emb)
            if indices_tuple is None and self.miner is not None:
                indices_tuple = self.miner(embeddings, labels, ref_emb, ref_labels)
            return self.loss(embeddings, labels, indices_tuple, ref_emb, ref_labels)

    @torch.no_grad()
    def mine(self, embeddings: torch.Tensor, labels: torch.Tensor) -> IndicesTuple:
        """The tuples the loss would train on: its miner's, or all of the kind it uses.

        Returns ``(a1, p, a2, n)`` for pair losses (:attr:`tuple_kind` ``"pair"``) and
        ``(a, p, n)`` for triplet losses, indices into ``embeddings (N, d)``.
        """
        with no_autocast(embeddings):
            embeddings = full_precision(embeddings)
            if self.miner is not None:
                mined = self.miner(embeddings, labels)
                if self.tuple_kind == "pair":
                    return lmu.convert_to_pairs(mined, labels)
                return lmu.convert_to_triplets(mined, labels)
        if self.tuple_kind == "pair":
            return lmu.get_all_pairs_indices(labels)
        return lmu.get_all_triplets_indices(labels)

    def forward_with_extra_classes(self, embeddings: torch.Tensor, labels: torch.Tensor,
                                   extra_directions: torch.Tensor) -> torch.Tensor:
        """Proxy losses only: the loss with ``S`` more classes whose proxies are given.

        Args:
            embeddings: ``(N, d)``; labels ``(N,)`` in ``[0, C + S)``.
            extra_directions: ``(S, d)`` proxies of classes ``C .. C + S - 1`` (may carry
                gradients; they join the loss's own proxies for this call only).

        pytorch-metric-learning has no way to add classes for one call: the loss runs with
        its class-weight Parameter swapped for the concatenation
        (``torch.func.functional_call``) and its ``num_classes`` raised to ``C + S``.
        """
        if self.kind != "proxy":
            raise ValueError(f"loss '{self.name}' has no proxies to add classes to")
        attr = "proxies" if isinstance(getattr(self.loss, "proxies", None), torch.Tensor) else "W"
        with no_autocast(embeddings):
            embeddings = full_precision(embeddings)
            weight = getattr(self.loss, attr)
            extra = extra_directions.to(weight.dtype)
            full = (torch.cat([weight, extra]) if attr == "proxies"
                    else torch.cat([weight, extra.t()], dim=1))
            # NormalizedSoftmaxLoss keeps no num_classes; the others build masks from it
            num_classes = getattr(self.loss, "num_classes", None)
            if num_classes is not None:
                self.loss.num_classes = num_classes + extra.shape[0]
            try:
                return torch.func.functional_call(self.loss, {attr: full}, (embeddings, labels))
            finally:
                if num_classes is not None:
                    self.loss.num_classes = num_classes


def build_metric_loss(cfg: Any, num_classes: int, embed_dim: int) -> MetricLoss:
    """Instantiate the ``loss`` config node (a ``_target_``, normally :class:`MetricLoss`,
    whose ``loss`` and ``miner`` nodes are pytorch-metric-learning ``_target_``s) for
    ``num_classes`` training classes and ``embed_dim``-d embeddings."""
    from hydra.utils import instantiate

    return instantiate(cfg, num_classes=num_classes, embed_dim=embed_dim)

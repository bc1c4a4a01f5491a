"""One adapter over pytorch-metric-learning losses and miners.

The library has the losses, miners and distances; what it lacks, and this adapter adds, is
(1) building proxy/classifier losses from a config that does not know the number of classes,
(2) a uniform view of the class directions (``ProxyAnchorLoss.proxies`` is ``(C, d)``, the
softmax family's ``W`` is ``(d, C)``) that synthesis needs, and (3) the loss *kind*, which
decides how synthetic embeddings enter the loss:

* ``proxy`` losses (Proxy-Anchor, Proxy-NCA, NormSoftmax, ArcFace, CosFace...): synthetic
  points form a second term ``L(stopgrad(Z_syn), Y_syn)`` that reaches only the proxies
  (SEE's own formulation for Proxy-Anchor);
* ``pair`` losses (Multi-Similarity, contrastive, triplet...): synthetic points join as
  extra *reference* embeddings, ``L(Z, Y; ref=stopgrad(Z_syn), ref_labels=Y_syn)``, so that
  real anchors are pulled to / pushed from them.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import BaseMetricLossFunction
from pytorch_metric_learning.miners import BaseMiner
from torch import nn

LossKind = Literal["proxy", "pair"]


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

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                ref_emb: torch.Tensor | None = None,
                ref_labels: torch.Tensor | None = None,
                indices_tuple: tuple | None = None) -> torch.Tensor:
        """Loss of ``embeddings (B, d)`` with ``labels (B,)``; ``ref_*`` for pair losses."""
        if indices_tuple is None and self.miner is not None:
            indices_tuple = self.miner(embeddings, labels, ref_emb, ref_labels)
        return self.loss(embeddings, labels, indices_tuple, ref_emb, ref_labels)


def build_metric_loss(cfg: Any, num_classes: int, embed_dim: int) -> MetricLoss:
    """Instantiate the ``loss`` config node (a ``_target_``, normally :class:`MetricLoss`,
    whose ``loss`` and ``miner`` nodes are pytorch-metric-learning ``_target_``s) for
    ``num_classes`` training classes and ``embed_dim``-d embeddings."""
    from hydra.utils import instantiate

    return instantiate(cfg, num_classes=num_classes, embed_dim=embed_dim)

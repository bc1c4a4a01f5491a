"""What a method does to the geometry of the embedding space, measured on any embeddings.

SEE's synthetic term moves only the proxies, so whether it helps is a question about where
the proxies go and how the real embeddings sit around them. These functions measure that
on plain tensors (unit rows, or rows normalised here), so they apply to any run, any
checkpoint and to hand-made embeddings alike; :class:`see_dml.callbacks.geometry.
GeometryMonitor` logs them every epoch. Angles are in degrees.

- :func:`proxy_drift`: how far the proxies moved between two snapshots (mean angle).
- :func:`proxy_class_cosine`: cosine of each class's proxy to its class's mean embedding.
- :func:`class_spread`: mean angle of a class's embeddings to their proxy.
- :func:`uniformity`: Wang & Isola's (ICML 2020) uniformity, the log of the mean Gaussian
  potential ``exp(-t ||x - y||^2)`` over all pairs (lower: more uniform on the sphere).

pytorch-metric-learning and torchmetrics have none of these (PML's ``AccuracyCalculator``
scores retrieval only), so they are written here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.detach().double(), dim=-1)


def _angle_deg(cos: torch.Tensor) -> torch.Tensor:
    return torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0)))


def proxy_drift(before: torch.Tensor, after: torch.Tensor) -> float:
    """Mean angle (degrees) between each proxy ``(C, d)`` before and after."""
    if before.shape != after.shape:
        raise ValueError(f"proxy snapshots differ in shape: {tuple(before.shape)} vs "
                         f"{tuple(after.shape)}")
    cos = (_unit(before) * _unit(after)).sum(-1)
    return float(_angle_deg(cos).mean())


def class_means(embeddings: torch.Tensor, labels: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(classes (K,), unit mean direction (K, d))`` of the classes present in ``labels``."""
    emb = _unit(embeddings)
    classes, inverse = torch.unique(labels, return_inverse=True)
    sums = torch.zeros(len(classes), emb.shape[1], dtype=emb.dtype, device=emb.device)
    sums.index_add_(0, inverse, emb)
    return classes, F.normalize(sums, dim=-1)


def proxy_class_cosine(proxies: torch.Tensor, embeddings: torch.Tensor,
                       labels: torch.Tensor) -> float:
    """Mean over the classes in ``labels`` of cos(proxy of the class, its mean embedding).

    ``labels`` index the rows of ``proxies`` (training classes numbered ``0..C-1``).
    """
    classes, means = class_means(embeddings, labels)
    cos = (_unit(proxies)[classes] * means).sum(-1)
    return float(cos.mean())


def class_spread(proxies: torch.Tensor, embeddings: torch.Tensor,
                 labels: torch.Tensor) -> float:
    """Mean angle (degrees) of each embedding to its class's proxy."""
    cos = (_unit(embeddings) * _unit(proxies)[labels]).sum(-1)
    return float(_angle_deg(cos).mean())


def uniformity(embeddings: torch.Tensor, t: float = 2.0) -> float:
    """``log mean_{i<j} exp(-t ||x_i - x_j||^2)`` of the unit rows (Wang & Isola 2020).

    Between ``-4t`` (two antipodal points) and 0 (all points equal); lower is more uniform.
    """
    emb = _unit(embeddings)
    n = emb.shape[0]
    if n < 2:
        raise ValueError("uniformity needs at least two embeddings")
    sq = torch.pdist(emb, p=2).pow(2)
    return float(torch.logsumexp(-t * sq, dim=0) - math.log(sq.numel()))

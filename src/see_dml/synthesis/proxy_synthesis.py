"""Proxy Synthesis (PS; Gu, Ko and Kim, AAAI 2021): mixup of embeddings *and* of their proxies.

For a mixing weight ``λ ~ Beta(α, α)`` (one draw per step) and a partner ``j`` of another
class for each sample ``i``, PS synthesises the embedding ``x̂ = λ·x_i + (1 − λ)·x_j`` and its
own proxy ``p̂ = λ·p_{y_i} + (1 − λ)·p_{y_j}`` (both L2-normalised; the proxies are mixed as
unit vectors). Each synthetic embedding is a new class ``C + i`` whose only proxy is ``p̂``:
the loss then sees ``C + S`` classes, and real embeddings are pushed away from the synthetic
proxies as from any other class. Unlike SEE, gradients flow through both mixtures.

The authors pair each sample with its predecessor in the batch (``torch.roll(x, 1)``) and
rely on a sampler that never puts two images of a class side by side (one image per class).
Class-balanced batches hold ``m`` images per class, so :func:`other_class_partners` picks a
partner of another class for every sample instead (``docs/method.md``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["other_class_partners", "proxy_synthesis"]


def other_class_partners(labels: torch.Tensor) -> torch.Tensor:
    """A partner index of another class for every sample: ``(B,)`` → ``(B,)``.

    Samples are ordered by label (stable) and each is paired with the sample ``M`` places
    before it in that order, cyclically, where ``M`` is the largest class count. Two samples
    of one class are less than ``M`` apart in that order, so the partner is of another
    class whenever no class holds more than half the batch (the authors' roll by one is the
    case ``M = 1``). Where a class does hold more than half, some partners share the class.
    """
    b = labels.shape[0]
    if b == 0:
        return labels.new_zeros(0)
    order = torch.sort(labels, stable=True).indices
    shift = int(torch.unique(labels, return_counts=True)[1].max()) % b
    partners = torch.empty_like(order)
    partners[order] = torch.roll(order, shift)
    return partners


def proxy_synthesis(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    class_directions: torch.Tensor,
    ratio: float,
    lam: float,
    partners: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PS's synthetic embeddings, their new class labels and their synthetic proxies.

    Args:
        embeddings: ``(B, d)`` embeddings (normalised here before mixing, as the authors).
        labels: ``(B,)`` labels in ``[0, C)``.
        class_directions: ``(C, d)`` proxies (normalised here before mixing).
        ratio: PS's ``μ``, synthetic points per real one; the first ``floor(B·μ)`` samples
            are mixed. ``0 <= μ <= 1``.
        lam: the mixing weight ``λ`` (the caller draws it from ``Beta(α, α)``).
        partners: ``(B,)`` partner index of each sample; default
            :func:`other_class_partners`.

    Returns:
        ``syn`` ``(S, d)`` unit embeddings, ``syn_labels`` ``(S,)`` = ``C, C+1, ..., C+S-1``
        and ``syn_proxies`` ``(S, d)`` unit proxies (row ``k`` is class ``C + k``), all
        differentiable with respect to ``embeddings`` and ``class_directions``.
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio (PS's mu) must be in [0, 1], got {ratio}")
    b = embeddings.shape[0]
    s = math.floor(b * ratio + 1e-9)
    if partners is None:
        partners = other_class_partners(labels)
    x = F.normalize(embeddings, dim=1)
    p = F.normalize(class_directions, dim=1)[labels]
    first, second = torch.arange(s, device=labels.device), partners[:s]
    syn = F.normalize(lam * x[first] + (1.0 - lam) * x[second], dim=1)
    syn_proxies = F.normalize(lam * p[first] + (1.0 - lam) * p[second], dim=1)
    num_classes = class_directions.shape[0]
    syn_labels = torch.arange(num_classes, num_classes + s, device=labels.device)
    return syn, syn_labels, syn_proxies

"""What a method does to the geometry of the embedding space, measured on any embeddings.

SEE's synthetic term moves only the proxies, so whether it helps is a question about where
the proxies go and how the real embeddings sit around them. These functions measure that
on plain tensors (unit rows, or rows normalised here), so they apply to any run, any
checkpoint and to hand-made embeddings alike; :class:`see_dml.callbacks.geometry_monitor.
GeometryMonitor` logs them every epoch. Angles are in degrees.

- :func:`proxy_drift`: how far the proxies moved between two snapshots (mean angle).
- :func:`proxy_class_cosine`: cosine of each class's proxy to its class's mean embedding.
- :func:`class_spread`: mean angle of a class's embeddings to their proxy.
- :func:`uniformity`: Wang & Isola's (ICML 2020) uniformity, the log of the mean Gaussian
  potential ``exp(-t ||x - y||^2)`` over all pairs (of a fixed sample of
  :data:`UNIFORMITY_ROWS` rows above that many) (lower: more uniform on the sphere).

Every measure is linear in the number of embeddings (per-class sums, per-row cosines) or
bounded (uniformity's blocks or sample), so SOP's 59,551 training images fit.

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


#: Rows :func:`uniformity` uses by default: every pair of up to this many embeddings (exact),
#: else every pair of a fixed-seed sample of this many rows (33.5M pairs, ~2 s on one core).
UNIFORMITY_ROWS = 8192
# rows per block of the (block, n) float64 distance matrix: ~32 MiB
_BLOCK_ELEMENTS = 1 << 22


def uniformity_rows(n: int, max_rows: int | None = UNIFORMITY_ROWS) -> int:
    """The number of rows :func:`uniformity` uses for ``n`` embeddings."""
    return n if max_rows is None else min(n, int(max_rows))


def uniformity(embeddings: torch.Tensor, t: float = 2.0,
               max_rows: int | None = UNIFORMITY_ROWS, seed: int = 0) -> float:
    """``log mean_{i<j} exp(-t ||x_i - x_j||^2)`` of the unit rows (Wang & Isola 2020).

    Between ``-4t`` (two antipodal points) and 0 (all points equal); lower is more uniform.
    Memory stays bounded whatever ``n`` (``torch.pdist`` would hold every pair): the mean is
    accumulated over blocks of rows. Above ``max_rows`` embeddings it is the mean over every
    pair of ``max_rows`` rows drawn without replacement with ``seed`` (an unbiased estimate;
    the same rows every call for the same ``n``, so epochs and arms compare like with like),
    so the time is bounded too.

    Args:
        embeddings: (n, d) rows, normalised here.
        t: the potential's temperature.
        max_rows: rows used at most; None: every row (``O(n^2)`` time, bounded memory).
        seed: seed of the row sample.
    """
    emb = _unit(embeddings)
    n = emb.shape[0]
    if n < 2:
        raise ValueError("uniformity needs at least two embeddings")
    if max_rows is not None and max_rows < 2:
        raise ValueError(f"max_rows must be at least 2 or None, got {max_rows}")
    m = uniformity_rows(n, max_rows)
    if m < n:
        gen = torch.Generator().manual_seed(int(seed))
        emb = emb[torch.randperm(n, generator=gen)[:m].sort().values]
    parts = []
    block = max(1, _BLOCK_ELEMENTS // m)
    for a in range(0, m - 1, block):  # rows a..b-1 against rows j > a; pairs i < j kept
        b = min(a + block, m - 1)
        sq = (2.0 - 2.0 * emb[a:b] @ emb[a + 1:].T).clamp_min(0.0)
        upper = torch.arange(a + 1, m)[None, :] > torch.arange(a, b)[:, None]
        parts.append(torch.logsumexp(-t * sq[upper], dim=0))
    return float(torch.logsumexp(torch.stack(parts), dim=0) - math.log(m * (m - 1) // 2))

"""Max-Mahalanobis distribution (MMD) centres: unit vectors forming a regular simplex.

Pang, Du and Zhu, "Max-Mahalanobis Linear Discriminant Analysis Networks", ICML 2018.
``L`` unit vectors in ``d`` dimensions with pairwise inner product exactly ``-1/(L-1)``;
they exist iff ``L - 1 <= d``. SEE uses the ``(n+1, n)`` case as its coefficient matrix.
"""

from __future__ import annotations

import functools
from typing import Literal

import torch
import torch.nn.functional as F

__all__ = ["max_mahalanobis_centers"]


def _pang_recursion(num_centers: int, dim: int) -> torch.Tensor:
    """Pang et al.'s recursion in float64; returns ``(L, d)`` unit rows, row 0 = ``e_1``."""
    L = num_centers
    centers = torch.zeros(L, dim, dtype=torch.float64)
    centers[0, 0] = 1.0
    if L == 1:
        return centers
    target = -1.0 / (L - 1)
    # Column j: fix row j's diagonal, then every later row's entry j from the pairwise
    # constraint <mu_i, mu_j> = -1/(L-1). The last row's diagonal is 0 analytically (the
    # L centres span L-1 dims), so columns stop at L-2 and no sqrt of a rounding residue
    # is ever taken.
    for j in range(L - 1):
        head = centers[j, :j]
        centers[j, j] = torch.sqrt(torch.clamp(1.0 - head @ head, min=0.0))
        centers[j + 1 :, j] = (target - centers[j + 1 :, :j] @ head) / centers[j, j]
    return F.normalize(centers, dim=1)


def _optimize_centers(
    num_centers: int, dim: int, steps: int, seed: int, temperature: float = 50.0
) -> torch.Tensor:
    """Numerical fallback: minimise a log-sum-exp smooth max of the pairwise cosines.

    Returns ``(L, d)`` float64 unit rows. Deterministic for a given ``seed``.
    """
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(num_centers, dim, dtype=torch.float64, generator=gen)
    off_diag = ~torch.eye(num_centers, dtype=torch.bool)
    with torch.enable_grad():  # callers may sit inside torch.no_grad()
        x.requires_grad_(True)
        opt = torch.optim.Adam([x], lr=0.05)
        for _ in range(steps):
            xn = F.normalize(x, dim=1)
            cos = (xn @ xn.T)[off_diag]
            loss = torch.logsumexp(temperature * cos, dim=0) / temperature
            opt.zero_grad()
            loss.backward()
            opt.step()
    return F.normalize(x.detach(), dim=1)


def max_mahalanobis_centers(
    num_centers: int,
    dim: int,
    *,
    fallback: Literal["raise", "optimize"] = "raise",
    steps: int = 300,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``L`` unit vectors in ``d`` dims with pairwise inner product ``-1/(L-1)``.

    Args:
        num_centers: ``L >= 1``.
        dim: ``d >= 1``. A regular simplex of ``L`` vertices needs ``L - 1 <= d``.
        fallback: what to do when ``L - 1 > d``. ``"raise"`` (default) raises ValueError;
            ``"optimize"`` returns a numerical approximation (as Pang's repository does):
            ``steps`` Adam steps minimising a log-sum-exp smooth maximum of the pairwise
            cosines, from a Gaussian start seeded by ``seed``. Its rows are unit but the
            pairwise inner products are only roughly equal and all above ``-1/(L-1)``.
        steps, seed: only used by ``fallback="optimize"``.
        dtype, device: of the returned tensor (computed in float64 on CPU, then cast).

    Returns:
        ``(L, d)`` tensor; row 0 is ``e_1`` and row ``i`` has non-zeros only in its first
        ``i + 1`` coordinates in the exact case.
    """
    if num_centers < 1 or dim < 1:
        raise ValueError(f"need num_centers >= 1 and dim >= 1, got L={num_centers}, d={dim}")
    if num_centers - 1 <= dim:
        centers = _pang_recursion(num_centers, dim)
    elif fallback == "optimize":
        centers = _optimize_centers(num_centers, dim, steps=steps, seed=seed)
    elif fallback == "raise":
        raise ValueError(
            f"a regular simplex of L={num_centers} centres needs L - 1 <= d, but d={dim}; "
            f"use dim >= {num_centers - 1} or pass fallback='optimize' for a numerical "
            "approximation"
        )
    else:
        raise ValueError(f"fallback must be 'raise' or 'optimize', got {fallback!r}")
    return centers.to(dtype=dtype, device=device)


@functools.lru_cache(maxsize=64)
def simplex_coefficients(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """SEE's coefficient matrix ``B``: ``(n+1, n)``, unit rows, pairwise ``-1/n``, row 0 = e_1.

    Cached per ``(n, dtype, device)`` because it is rebuilt every training step otherwise.
    The cached tensor is shared: callers must not modify it in place.
    """
    return max_mahalanobis_centers(n + 1, n, dtype=dtype, device=device)

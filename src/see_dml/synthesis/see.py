"""Spherical Embedding Expansion (SEE; Le & Woo, PAKDD 2024), batched.

For each selected unit embedding ``z`` with class direction ``w`` (unit), write
``z = s·w + ρ·u`` with ``s = z·w``, ``ρ = ||z - s·w||`` and ``u`` the unit radial direction.
An orthonormal frame ``{u, v_2, ..., v_n}`` of the null space of ``w`` (``u`` fixed, the rest
random) and the MMD coefficient matrix ``B`` (``(n+1, n)``, a regular simplex with row 0 =
``e_1``) give the ``n + 1`` points ``ẑ_k = s·w + ρ·Σ_j B[k, j]·frame_j``: ``ẑ_0 = z`` and the
``n`` new points ``k = 1..n`` lie on ``z``'s latitude circle around ``w``, spread as far apart
as possible. See ``docs/method.md`` ("Geometry") for the properties the tests check.

The class axis is the sample's proxy for proxy losses; for pair losses
:func:`class_axes` gives the leave-one-out class mean of the batch (the class mean without
the sample itself), so that synthetic positives are *harder* than the real ones and are
mined (``docs/method.md``, "How synthetic points enter each loss").

All synthesis runs under ``torch.no_grad()``: the synthetic points are fixed targets.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from see_dml.synthesis.simplex import simplex_coefficients

__all__ = ["class_axes", "random_expansion", "spherical_expansion"]

# Below this radial length the radial direction u is numerical noise (the sample sits on
# the axis); any unit vector orthogonal to w is then as good, and the points collapse to z.
_RHO_EPS = 1e-6

ExpansionMode = Literal["simplex", "random", "random_circle"]
_MODES = ("simplex", "random", "random_circle")


@torch.no_grad()
def class_axes(
    embeddings: torch.Tensor, labels: torch.Tensor, leave_one_out: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class axes from the batch itself, for losses without proxies.

    Args:
        embeddings: ``(B, d)`` embeddings. labels: ``(B,)``.
        leave_one_out: the axis of sample ``i`` is the direction of the sum of the *other*
            samples of its class (default); ``False``: of the whole class, ``i`` included.

    Returns:
        ``axes`` ``(B, d)`` unit rows and ``valid`` ``(B,)`` bool: ``False`` for a sample
        alone of its class in the batch, whose axis would be itself (or nothing) and which
        must never be expanded.
    """
    classes, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    z = embeddings.float()
    sums = torch.zeros(len(classes), z.shape[1], device=z.device, dtype=z.dtype)
    sums.index_add_(0, inverse, z)
    axes = sums[inverse] - z if leave_one_out else sums[inverse]
    return F.normalize(axes, dim=1), counts[inverse] > 1


def _check_inputs(
    z: torch.Tensor,
    labels: torch.Tensor,
    axes: torch.Tensor,
    n_points: int,
    noise: torch.Tensor | None,
    noise_columns: int | None = None,
) -> None:
    if z.ndim != 2:
        raise ValueError(f"z must be (K, d), got shape {tuple(z.shape)}")
    if axes.shape != z.shape:
        raise ValueError(f"axes must match z's shape {tuple(z.shape)}, got {tuple(axes.shape)}")
    if labels.shape != z.shape[:1]:
        raise ValueError(f"labels must be ({z.shape[0]},), got {tuple(labels.shape)}")
    d = z.shape[1]
    if n_points < 1 or n_points > d - 2:
        raise ValueError(
            f"n_points must satisfy 1 <= n <= d - 2, got n={n_points} with embedding dim "
            f"d={d} (so n <= {d - 2}); lower the number of points per expanded sample"
        )
    cols = n_points if noise_columns is None else noise_columns
    if noise is not None and noise.shape != (z.shape[0], d, cols):
        raise ValueError(
            f"noise must be (K, d, {cols}) = {(z.shape[0], d, cols)}, got {tuple(noise.shape)}"
        )


def _draw_noise(
    z: torch.Tensor, n: int, generator: torch.Generator | None, noise: torch.Tensor | None
) -> torch.Tensor:
    """``(K, d, n)`` float32 Gaussian draws that seed the random part of every frame."""
    if noise is not None:
        return noise.to(device=z.device, dtype=torch.float32)
    return torch.randn(
        z.shape[0], z.shape[1], n, generator=generator, device=z.device, dtype=torch.float32
    )


def _authors_random_coefficients(
    k: int, n: int, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """``(K, n, n+1)``: rows ``1..n`` of the authors' ``(n+1, n+1)`` zero-sum Gaussian matrix.

    Rows ``0..n-1`` are standard Gaussian and row ``n`` is minus their sum (every column sums
    to zero), as in the authors' ``random_sum_zero``; the rows are *not* normalised, so the
    points leave the sphere and the latitude circle. Row 0 (which would replace ``z``
    itself) is dropped like theirs.
    """
    g = torch.randn(k, n, n + 1, generator=generator, device=device, dtype=torch.float32)
    return torch.cat([g[:, 1:], -g.sum(dim=1, keepdim=True)], dim=1)


def _random_zero_sum_coefficients(
    k: int, n: int, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """``(K, n, n)`` random rows ``c_1..c_n``: zero-sum with ``c_0 = e_1``, then unit length.

    Gaussian rows are shifted so that ``e_1 + Σ_k c_k = 0`` (the n+1 points' centroid would
    sit on the axis), then normalised so every point stays on the latitude circle; after the
    normalisation the zero sum holds only approximately. No simplex: that is the ablation.
    """
    g = torch.randn(k, n, n, generator=generator, device=device, dtype=torch.float32)
    e1 = torch.zeros(n, device=device, dtype=torch.float32)
    e1[0] = 1.0
    g = g - (e1 + g.sum(dim=1, keepdim=True)) / n
    return F.normalize(g, dim=-1)


def _householder_columns(cols: torch.Tensor) -> torch.Tensor:
    """``Q`` of a batched Householder QR with ``diag(R) > 0`` (LAPACK; the fastest on CPU)."""
    q, r = torch.linalg.qr(cols)
    # QR is unique only up to column signs; a positive diag(R) makes it the Gram–Schmidt Q.
    # In place: every (K, d, n) temporary is a fresh allocation, page faults included.
    return q.mul_(torch.where(torch.diagonal(r, dim1=-2, dim2=-1) < 0, -1.0, 1.0)[:, None, :])


def _cholesky_qr2_columns(cols: torch.Tensor) -> torch.Tensor:
    """The same ``Q`` by Cholesky-QR applied twice ("CholeskyQR2"), for GPUs.

    ``R`` from the Cholesky factor of the ``(n, n)`` Gram matrix, ``Q = C R⁻¹``, repeated once
    on ``Q`` to remove the rounding of the first pass: one batched matmul, one batched
    Cholesky and one batched triangular solve per pass. Batched QR of many thin matrices
    runs as a loop of solver calls on CUDA (an H200 took 6.2 ms for the expansion at
    K = 72, d = 128, n = 8 with it, 1.6 ms with this). The Gram matrix and the solves are
    float64, so its squared condition number stays far from the precision limit (10⁶
    random frames at d = n + 2, the worst case: no failed factorisation, columns orthonormal
    to 2.4e-7 after the cast back).
    """
    q = cols.double()
    for _ in range(2):
        factor, _ = torch.linalg.cholesky_ex(q.transpose(1, 2) @ q)  # G = L Lᵀ, R = Lᵀ
        q = torch.linalg.solve_triangular(factor.transpose(1, 2), q, upper=True, left=False)
    return q.to(cols.dtype)


def _orthonormalise_columns(cols: torch.Tensor) -> torch.Tensor:
    """Orthonormalise ``(K, d, n)`` columns in order, all K at once; column 0 must be unit.

    Both routes give the Gram–Schmidt frame (column 0 unchanged) to float32 rounding; each
    is the faster one where it is used (CPU: Householder, 1.3 vs 1.4 ms at d = 128 and 4.7
    vs 8.3 ms at d = 512 on the 2-core dev box; GPU: CholeskyQR2, 4-5x faster there).
    """
    q = _householder_columns(cols) if cols.device.type == "cpu" else _cholesky_qr2_columns(cols)
    q[:, :, 0] = cols[:, :, 0]  # exactly u, not u up to rounding
    return q


def _latitude_frames(
    z: torch.Tensor, w: torch.Tensor, noise: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batched orthonormalisation for all samples.

    Args:
        z, w: ``(K, d)`` float32 unit rows. noise: ``(K, d, n)`` float32.

    Returns:
        ``s`` ``(K,)`` cosines to the axis, ``rho`` ``(K,)`` radii, and ``frame``
        ``(K, d, n)`` orthonormal columns orthogonal to ``w`` with ``frame[:, :, 0] = u``.
    """
    s = (z * w).sum(dim=1)
    # Columns [r, g_2..g_n] projected onto null(w), then orthonormalised in order.
    cols = torch.cat([(z - s[:, None] * w)[:, :, None], noise[:, :, 1:]], dim=2)
    cols -= w[:, :, None] * (w[:, None, :] @ cols)
    radial = cols[:, :, 0]
    rho = radial.norm(dim=1)
    spare = noise[:, :, 0] - w * (w * noise[:, :, 0]).sum(dim=1, keepdim=True)
    first = torch.where((rho < _RHO_EPS)[:, None], spare, radial)
    u = F.normalize(first, dim=1)
    cols[:, :, 0] = u
    # u is exactly column 0; the others are orthogonal to u and to each other. They stay
    # orthogonal to w too: every step combines columns that already are.
    return s, rho, _orthonormalise_columns(cols)


@torch.no_grad()
def spherical_expansion(
    z: torch.Tensor,
    labels: torch.Tensor,
    axes: torch.Tensor,
    n_points: int,
    generator: torch.Generator | None = None,
    *,
    mode: ExpansionMode = "simplex",
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SEE: ``n`` new points per sample on its latitude circle around its class axis.

    Args:
        z: ``(K, d)`` embeddings to expand (L2-normalised again in float32 here).
        labels: ``(K,)`` their labels.
        axes: ``(K, d)`` class direction of each sample (its class proxy or class centre;
            normalised here, so raw proxies are fine).
        n_points: ``n``, new points per sample; ``1 <= n <= d - 2``.
        generator: for the random frame (and the random coefficients in ``"random"`` mode);
            must live on ``z``'s device.
        mode: ``"simplex"`` (SEE: the ``n+1`` points form a regular simplex around the axis),
            ``"random"`` (the authors' ablation: the simplex matrix replaced by a zero-sum
            Gaussian one over ``n+1`` frame directions; the points leave the sphere) or
            ``"random_circle"`` (this project's ablation: same latitude circle as SEE,
            random zero-sum unit directions, no simplex). See :func:`random_expansion`.
        noise: optional ``(K, d, n)`` Gaussian draws (``(K, d, n+1)`` in ``"random"``
            mode, whose frame has one more direction) used instead of the generator, so a
            reference implementation can rebuild the same frame. Column 0 is only used as
            the radial direction of samples lying on their axis (``ρ ≈ 0``); the other
            columns are projected and orthonormalised into ``v_2, v_3, ...``. The random
            coefficients of the random modes still come from ``generator``.

    Returns:
        ``(K·n, d)`` points in ``z``'s dtype (unit, except in ``"random"`` mode), the ``n``
        points of sample ``i`` at rows ``i·n .. i·n + n - 1``, and their ``(K·n,)`` labels
        ``labels.repeat_interleave(n)``.
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    frame_size = n_points + 1 if mode == "random" else n_points
    _check_inputs(z, labels, axes, n_points, noise, frame_size)
    out_dtype = z.dtype if z.is_floating_point() else torch.float32
    k, d = z.shape
    syn_labels = labels.repeat_interleave(n_points)
    if k == 0:
        return z.new_zeros((0, d), dtype=out_dtype), syn_labels
    # float32 arithmetic: fp16/bf16 rounding would break the unit norms and the simplex.
    z32 = F.normalize(z.float(), dim=1)
    w32 = F.normalize(axes.float(), dim=1)
    draws = _draw_noise(z32, frame_size, generator, noise)
    s, rho, frame = _latitude_frames(z32, w32, draws)
    if mode == "simplex":
        coeff = simplex_coefficients(n_points, torch.float32, z32.device)[1:]  # (n, n)
    elif mode == "random":
        coeff = _authors_random_coefficients(k, n_points, generator, z32.device)  # (K, n, n+1)
    else:
        coeff = _random_zero_sum_coefficients(k, n_points, generator, z32.device)  # (K, n, n)
    directions = coeff @ frame.transpose(1, 2)  # (K, n, d): row k is c_k in R^d
    axial = (s[:, None] * w32)[:, None, :]  # (K, 1, d)
    points = torch.addcmul(axial, rho[:, None, None], directions).reshape(k * n_points, d)
    if mode == "random":  # the authors' points are off the sphere; losses normalise them
        return points.to(out_dtype), syn_labels
    # Absorb float32 rounding so downstream cosine losses see exactly unit rows (F.normalize,
    # in place).
    points /= points.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return points.to(out_dtype), syn_labels


def random_expansion(
    z: torch.Tensor,
    labels: torch.Tensor,
    axes: torch.Tensor,
    n_points: int,
    generator: torch.Generator | None = None,
    *,
    on_circle: bool = False,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ablation of SEE with ``B`` replaced by a random zero-sum matrix (no simplex).

    ``on_circle=False`` (default, the authors' variant, ``see.directions=random``): an
    ``(n+1, n+1)`` Gaussian matrix whose columns sum to zero multiplies ``n+1`` frame
    directions ``{u, v_2, ..., v_{n+1}}``; rows ``1..n`` give the points ``s·w + ρ·c_k``,
    which are not unit and lean away from the axis (their cosine to it drops).

    ``on_circle=True`` (``see.directions=random_circle``): each sample gets its own random
    rows ``c_1..c_n`` (Gaussian, shifted so that ``e_1 + Σ c_k = 0``, then normalised). The
    points keep unit norm and the sample's cosine to its axis, exactly like SEE, but are not
    spread as a regular simplex: any difference to :func:`spherical_expansion` measures the
    MMD placement alone. Shapes and arguments as in :func:`spherical_expansion`.
    """
    mode: ExpansionMode = "random_circle" if on_circle else "random"
    return spherical_expansion(z, labels, axes, n_points, generator, mode=mode, noise=noise)


@torch.no_grad()
def _spherical_expansion_loop(
    z: torch.Tensor,
    labels: torch.Tensor,
    axes: torch.Tensor,
    n_points: int,
    generator: torch.Generator | None = None,
    *,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample Gram–Schmidt version (as in the authors' code); the benchmark's baseline.

    Same arguments and, for the same ``noise``, the same result as
    :func:`spherical_expansion` in ``"simplex"`` mode, up to float32 rounding.
    """
    _check_inputs(z, labels, axes, n_points, noise)
    draws = _draw_noise(z, n_points, generator, noise)
    coeff = simplex_coefficients(n_points, torch.float32, z.device)[1:]
    out = []
    for i in range(z.shape[0]):
        zi = F.normalize(z[i].float(), dim=0)
        wi = F.normalize(axes[i].float(), dim=0)
        s = zi @ wi
        radial = zi - s * wi
        rho = radial.norm()
        if rho < _RHO_EPS:
            radial = draws[i, :, 0] - (draws[i, :, 0] @ wi) * wi
        frame = [radial / radial.norm()]
        for j in range(1, n_points):
            v = draws[i, :, j] - (draws[i, :, j] @ wi) * wi
            for f in frame:
                v = v - (v @ f) * f
            frame.append(v / v.norm())
        basis = torch.stack(frame, dim=1)  # (d, n)
        points = s * wi[None, :] + rho * (coeff @ basis.T)
        out.append(F.normalize(points, dim=1))
    return torch.cat(out).to(z.dtype), labels.repeat_interleave(n_points)

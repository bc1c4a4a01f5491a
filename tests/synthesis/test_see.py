"""SEE geometry: the properties of docs/method.md, a per-sample reference, edge cases."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from see_dml.synthesis import max_mahalanobis_centers, random_expansion, spherical_expansion
from see_dml.synthesis import see as see_impl
from see_dml.synthesis.see import _spherical_expansion_loop

GRID = [(n, d) for n in (1, 2, 8, 16) for d in (16, 64, 128) if n <= d - 2]


def _inputs(k: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit ``z``, ``w`` ``(K, d)`` float32 with cosines to the axis spread over (-0.95, 0.95)."""
    g = torch.Generator().manual_seed(seed)
    w = F.normalize(torch.randn(k, d, generator=g, dtype=torch.float64), dim=1)
    radial = torch.randn(k, d, generator=g, dtype=torch.float64)
    radial = F.normalize(radial - (radial * w).sum(1, keepdim=True) * w, dim=1)
    s = torch.rand(k, 1, generator=g, dtype=torch.float64) * 1.9 - 0.95
    z = s * w + (1 - s**2).sqrt() * radial
    return z.float(), w.float()


def _reference(z: torch.Tensor, w: torch.Tensor, n: int, noise: torch.Tensor) -> torch.Tensor:
    """The method doc's recipe, one sample at a time, float64: ``(K·n, d)``."""
    b = max_mahalanobis_centers(n + 1, n, dtype=torch.float64)
    out = []
    for i in range(z.shape[0]):
        zi, wi = F.normalize(z[i].double(), dim=0), F.normalize(w[i].double(), dim=0)
        s = zi @ wi
        r = zi - s * wi
        rho = r.norm()
        frame = [r / rho]
        for j in range(1, n):
            v = noise[i, :, j].double()
            v = v - (v @ wi) * wi
            for f in frame:
                v = v - (v @ f) * f
            frame.append(v / v.norm())
        points = s * wi + rho * (b @ torch.stack(frame, dim=1).T)  # (n+1, d), row 0 = z
        out.append(points[1:])
    return torch.cat(out)


@pytest.mark.parametrize(("n", "d"), GRID)
def test_geometry_properties(n: int, d: int) -> None:
    k = 12
    z, w = _inputs(k, d, seed=n * 1000 + d)
    gen = torch.Generator().manual_seed(1)
    syn, _ = spherical_expansion(z, torch.arange(k), w, n, generator=gen)
    assert syn.shape == (k * n, d) and syn.dtype == torch.float32

    pts = torch.cat([z.double()[:, None, :], syn.double().view(k, n, d)], dim=1)  # (K, n+1, d)
    wd = w.double()
    s = (z.double() * wd).sum(1)
    torch.testing.assert_close(
        pts.norm(dim=2), torch.ones(k, n + 1, dtype=torch.float64), atol=1e-5, rtol=0
    )
    cos_to_axis = (pts * wd[:, None, :]).sum(2)
    torch.testing.assert_close(cos_to_axis, s[:, None].expand(k, n + 1), atol=1e-5, rtol=0)
    gram = pts @ pts.transpose(1, 2)
    off = ~torch.eye(n + 1, dtype=torch.bool)
    expected = (s**2 - (1 - s**2) / n)[:, None].expand(k, int(off.sum()))
    torch.testing.assert_close(gram[:, off].reshape(k, -1), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(pts.mean(dim=1), s[:, None] * wd, atol=1e-5, rtol=0)


@pytest.mark.parametrize("d", [3, 16, 128])
def test_single_point_is_the_reflection_about_the_axis(d: int) -> None:
    z, w = _inputs(9, d, seed=d)
    syn, _ = spherical_expansion(z, torch.zeros(9, dtype=torch.long), w, 1)
    reflection = 2 * (z * w).sum(1, keepdim=True) * w - z
    torch.testing.assert_close(syn, reflection, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("n", "d"), [(1, 16), (2, 16), (8, 64), (16, 128), (14, 16)])
def test_batched_equals_per_sample_reference(n: int, d: int) -> None:
    k = 10
    z, w = _inputs(k, d, seed=7)
    noise = torch.randn(k, d, n, generator=torch.Generator().manual_seed(3))
    expected = _reference(z, w, n, noise)
    batched, _ = spherical_expansion(z, torch.arange(k), w, n, noise=noise)
    loop, _ = _spherical_expansion_loop(z, torch.arange(k), w, n, noise=noise)
    torch.testing.assert_close(batched.double(), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(loop.double(), expected, atol=1e-5, rtol=0)
    # A generator with the same seed draws the same noise, so it gives the same points.
    from_gen, _ = spherical_expansion(
        z, torch.arange(k), w, n, generator=torch.Generator().manual_seed(3)
    )
    torch.testing.assert_close(from_gen, batched, atol=0, rtol=0)


@pytest.mark.parametrize(("n", "d"), [(1, 16), (8, 10), (8, 128), (14, 16)])
def test_gpu_orthonormalisation_route_matches_cpu_route(n: int, d: int) -> None:
    """CholeskyQR2 (used on GPUs) gives Householder QR's frame (used on CPU), column 0 kept."""
    k = 200
    z, w = _inputs(k, d, seed=11)
    noise = torch.randn(k, d, n, generator=torch.Generator().manual_seed(5))
    s = (z * w).sum(1)
    cols = torch.cat([F.normalize(z - s[:, None] * w, dim=1)[:, :, None], noise[:, :, 1:]], 2)
    cols = cols - w[:, :, None] * (w[:, None, :] @ cols)
    cols[:, :, 0] = F.normalize(cols[:, :, 0], dim=1)
    householder = see_impl._householder_columns(cols)
    cholesky = see_impl._cholesky_qr2_columns(cols)
    assert cholesky.dtype == torch.float32
    torch.testing.assert_close(cholesky, householder, atol=2e-5, rtol=0)
    torch.testing.assert_close(cholesky[:, :, 0], cols[:, :, 0], atol=1e-6, rtol=0)
    eye = torch.eye(n).expand(k, n, n)
    torch.testing.assert_close(cholesky.transpose(1, 2) @ cholesky, eye, atol=1e-5, rtol=0)
    assert (cholesky.transpose(1, 2) @ w[:, :, None]).abs().max() < 1e-5  # still ⟂ the axis


def test_labels_and_row_layout() -> None:
    z, w = _inputs(4, 16)
    labels = torch.tensor([5, 2, 5, 9])
    syn, syn_labels = spherical_expansion(z, labels, w, 3, generator=torch.Generator())
    assert torch.equal(syn_labels, torch.tensor([5, 5, 5, 2, 2, 2, 5, 5, 5, 9, 9, 9]))
    # Rows i*n .. i*n+n-1 share sample i's cosine to its own axis.
    cos = (syn.view(4, 3, 16) * w[:, None, :]).sum(2)
    torch.testing.assert_close(cos, (z * w).sum(1, keepdim=True).expand(4, 3), atol=1e-5, rtol=0)


def test_unnormalised_axes_are_directions() -> None:
    z, w = _inputs(5, 32)
    noise = torch.randn(5, 32, 4)
    a, _ = spherical_expansion(z, torch.arange(5), w, 4, noise=noise)
    b, _ = spherical_expansion(z, torch.arange(5), 7.5 * w, 4, noise=noise)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
def test_half_precision_inputs(dtype: torch.dtype, tol: float) -> None:
    z, w = _inputs(16, 128, seed=11)
    z[0], z[1] = w[0], -w[1]  # on the axis: rho = 0
    syn, _ = spherical_expansion(z.to(dtype), torch.arange(16), w.to(dtype), 8)
    assert syn.dtype == dtype
    assert torch.isfinite(syn).all()
    norms = syn.float().norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms), atol=tol, rtol=0)


@pytest.mark.parametrize("mode", ["simplex", "random", "random_circle"])
def test_on_axis_samples_collapse_without_nan(mode: str) -> None:
    _, w = _inputs(4, 16, seed=2)
    near = F.normalize(w[3] + 1e-7 * torch.randn(16), dim=0)
    z = torch.stack([w[0], -w[1], w[2].clone(), near])
    syn, _ = spherical_expansion(z, torch.arange(4), w, 5, mode=mode)
    assert torch.isfinite(syn).all()
    torch.testing.assert_close(syn.norm(dim=1), torch.ones(20), atol=1e-6, rtol=0)
    torch.testing.assert_close(syn, z.repeat_interleave(5, dim=0), atol=1e-3, rtol=0)


@pytest.mark.parametrize(("n", "d"), [(15, 16), (3, 4), (1, 2)])
def test_too_many_points_raises(n: int, d: int) -> None:
    z, w = _inputs(3, d)
    with pytest.raises(ValueError, match=rf"n={n}.*d={d}"):
        spherical_expansion(z, torch.arange(3), w, n)


def test_largest_allowed_n() -> None:
    z, w = _inputs(3, 4)
    syn, _ = spherical_expansion(z, torch.arange(3), w, 2)
    assert torch.isfinite(syn).all() and syn.shape == (6, 4)


def test_no_gradient_and_empty_batch() -> None:
    z, w = _inputs(3, 16)
    z.requires_grad_(True)
    syn, _ = spherical_expansion(z, torch.arange(3), w, 4)
    assert not syn.requires_grad
    empty, empty_labels = spherical_expansion(z[:0], torch.arange(0), w[:0], 4)
    assert empty.shape == (0, 16) and empty_labels.shape == (0,)


def test_random_circle_mode_same_latitude_but_no_simplex() -> None:
    k, n, d = 8, 6, 64
    z, w = _inputs(k, d, seed=5)
    syn, labels = random_expansion(z, torch.arange(k), w, n, torch.Generator().manual_seed(0),
                                   on_circle=True)
    assert torch.equal(labels, torch.arange(k).repeat_interleave(n))
    pts = syn.double().view(k, n, d)
    s = (z.double() * w.double()).sum(1)
    torch.testing.assert_close(
        pts.norm(dim=2), torch.ones(k, n, dtype=torch.float64), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(
        (pts * w.double()[:, None]).sum(2), s[:, None].expand(k, n), atol=1e-5, rtol=0
    )
    gram = pts @ pts.transpose(1, 2)
    off = ~torch.eye(n, dtype=torch.bool)
    simplex = (s**2 - (1 - s**2) / n)[:, None]
    assert (gram[:, off].reshape(k, -1) - simplex).abs().max() > 1e-2
    # With one point the only zero-sum unit choice is the reflection, as in SEE.
    one, _ = random_expansion(z, torch.arange(k), w, 1, on_circle=True)
    mmd, _ = spherical_expansion(z, torch.arange(k), w, 1)
    torch.testing.assert_close(one, mmd, atol=1e-5, rtol=0)


def test_random_mode_is_the_authors_zero_sum_gaussian_off_the_sphere() -> None:
    """The authors' ablation: ``s·w + ρ·Σ_j M[k, j]·frame_j`` with an ``(n+1, n+1)`` Gaussian
    ``M`` whose columns sum to zero, over the ``n+1`` directions ``{u, v_2..v_{n+1}}``."""
    k, n, d = 64, 8, 32
    z, w = _inputs(k, d, seed=7)
    z = F.normalize(z + 1.5 * w, dim=1)  # cosine to the axis around 0.8
    noise = torch.randn(k, d, n + 1, generator=torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(3)
    syn, labels = random_expansion(z, torch.arange(k), w, n, gen, noise=noise)
    assert torch.equal(labels, torch.arange(k).repeat_interleave(n))
    pts = syn.double().view(k, n, d)
    zd, wd = z.double(), w.double()
    s = (zd * wd).sum(1)
    rho = (1 - s**2).sqrt()
    # The axial part is exactly the sample's: every point projects onto the axis at s.
    torch.testing.assert_close((pts * wd[:, None]).sum(2), s[:, None].expand(k, n),
                               atol=1e-5, rtol=0)
    # Off the latitude circle inside the null space of the axis: the radial parts stay
    # orthogonal to w but their lengths are rho times Gaussian row norms, not rho.
    radial = pts - s[:, None, None] * wd[:, None, :]
    assert (radial @ wd[:, :, None]).abs().max() < 1e-5
    assert (radial.norm(dim=2) / rho[:, None] - 1).abs().mean() > 0.5
    # Not unit: the rows of M are Gaussian, not normalised (norm ~ sqrt(n+1)·ρ).
    norms = pts.norm(dim=2)
    assert (norms - 1).abs().mean() > 0.5
    # Directions lean away from the axis: the mean cosine to it drops well below s.
    cos = (F.normalize(pts, dim=2) * wd[:, None]).sum(2)
    assert cos.mean() < s.mean() - 0.2
    # The same generator state gives the same points (the ablation is reproducible).
    again, _ = random_expansion(z, torch.arange(k), w, n, torch.Generator().manual_seed(3),
                                noise=noise)
    torch.testing.assert_close(syn, again)


def test_bad_mode_and_shapes_raise() -> None:
    z, w = _inputs(3, 16)
    with pytest.raises(ValueError, match="mode"):
        spherical_expansion(z, torch.arange(3), w, 2, mode="uniform")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="axes"):
        spherical_expansion(z, torch.arange(3), w[:2], 2)
    with pytest.raises(ValueError, match="noise"):
        spherical_expansion(z, torch.arange(3), w, 2, noise=torch.randn(3, 16, 3))
    with pytest.raises(ValueError, match="noise"):  # the authors' random mode needs n + 1
        spherical_expansion(z, torch.arange(3), w, 2, mode="random", noise=torch.randn(3, 16, 2))

"""Max-Mahalanobis centres: regular simplex where one exists, clear error or fallback otherwise."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from see_dml.synthesis import max_mahalanobis_centers
from see_dml.synthesis.simplex import simplex_coefficients


@pytest.mark.parametrize(
    ("num_centers", "dim"),
    [(2, 1), (3, 2), (4, 3), (5, 8), (10, 9), (11, 10), (100, 128), (129, 128), (2, 5)],
)
def test_regular_simplex(num_centers: int, dim: int) -> None:
    c = max_mahalanobis_centers(num_centers, dim).double()
    assert c.shape == (num_centers, dim)
    torch.testing.assert_close(
        c.norm(dim=1), torch.ones(num_centers, dtype=torch.float64), atol=1e-5, rtol=0
    )
    gram = c @ c.T
    off = ~torch.eye(num_centers, dtype=torch.bool)
    torch.testing.assert_close(
        gram[off], torch.full_like(gram[off], -1 / (num_centers - 1)), atol=1e-5, rtol=0
    )
    assert c[0, 0] == 1 and (c[0, 1:] == 0).all()
    assert torch.allclose(c.sum(dim=0), torch.zeros(dim, dtype=torch.float64), atol=1e-5)


def test_single_center_and_dtype_device() -> None:
    c = max_mahalanobis_centers(1, 3, dtype=torch.float64, device="cpu")
    assert c.dtype == torch.float64 and torch.equal(c, torch.tensor([[1.0, 0.0, 0.0]]).double())


def test_too_many_centers_raise_by_default() -> None:
    with pytest.raises(ValueError, match=r"L=12.*d=10"):
        max_mahalanobis_centers(12, 10)
    with pytest.raises(ValueError, match="fallback"):
        max_mahalanobis_centers(12, 10, fallback="nope")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        max_mahalanobis_centers(0, 3)


@pytest.mark.slow
def test_optimize_fallback_spreads_the_centers() -> None:
    num_centers, dim = 12, 3
    c = max_mahalanobis_centers(num_centers, dim, fallback="optimize")
    off = ~torch.eye(num_centers, dtype=torch.bool)
    torch.testing.assert_close(c.norm(dim=1), torch.ones(num_centers), atol=1e-5, rtol=0)
    best = (c @ c.T)[off].max()
    rand = F.normalize(
        torch.randn(num_centers, dim, generator=torch.Generator().manual_seed(0)), dim=1
    )
    # 12 points on S^2: the optimum (icosahedron) has max cosine 1/sqrt(5) ~ 0.447.
    assert best < 0.55
    assert best < (rand @ rand.T)[off].max() - 0.2
    assert torch.equal(c, max_mahalanobis_centers(num_centers, dim, fallback="optimize"))


def test_optimize_fallback_works_under_no_grad() -> None:
    with torch.no_grad():
        c = max_mahalanobis_centers(6, 2, fallback="optimize", steps=50)
    assert torch.isfinite(c).all() and c.shape == (6, 2)


@pytest.mark.parametrize("n", [1, 2, 8, 16])
def test_see_coefficients_are_cached_simplex(n: int) -> None:
    b = simplex_coefficients(n, torch.float32, torch.device("cpu"))
    assert b.shape == (n + 1, n)
    assert b is simplex_coefficients(n, torch.float32, torch.device("cpu"))
    assert torch.equal(b[0], torch.eye(n)[0])
    gram = b.double() @ b.double().T
    off = ~torch.eye(n + 1, dtype=torch.bool)
    torch.testing.assert_close(gram[off], torch.full_like(gram[off], -1 / n), atol=1e-6, rtol=0)

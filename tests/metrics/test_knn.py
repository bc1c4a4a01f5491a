"""Exact kNN: self-exclusion by index, agreement of backends and with brute force."""

import numpy as np
import pytest
import torch

from see_dml.metrics import knn_search, resolve_backend
from see_dml.metrics.knn import _drop_self


def _brute_force_topk(q: np.ndarray, r: np.ndarray, k: int, exclude_self: bool) -> np.ndarray:
    """(Q, k) indices by cosine from a full float64 similarity matrix (fine at test sizes)."""
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    rn = r / np.linalg.norm(r, axis=1, keepdims=True)
    sims = qn.astype(np.float64) @ rn.astype(np.float64).T
    if exclude_self:
        sims[np.arange(len(q)), np.arange(len(q))] = -np.inf
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


def test_drop_self_removes_own_index_wherever_it_sits():
    # Row 0: a duplicate (index 5) tied ahead of the query -> own index 0 is in column 1.
    # Row 1: own index 1 in column 0, the usual case.
    # Row 2: own index 2 absent (k + 1 ties ahead of it) -> the last column goes.
    idx = np.array([[5, 0, 7], [1, 3, 4], [8, 9, 6]])
    sims = np.array([[1.0, 1.0, 0.5], [1.0, 0.75, 0.625], [1.0, 1.0, 1.0]], dtype=np.float32)
    s, i = _drop_self(sims, idx, np.arange(3))
    np.testing.assert_array_equal(i, [[5, 7], [3, 4], [8, 9]])
    np.testing.assert_array_equal(s, [[1.0, 0.5], [0.75, 0.625], [1.0, 1.0]])


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_exclude_self_with_exact_duplicates(backend):
    rng = np.random.default_rng(0)
    base = rng.standard_normal((60, 16)).astype(np.float32)
    x = np.concatenate([base, base[:30]])  # rows 60..89 duplicate rows 0..29
    partner = np.arange(len(x))
    partner[:30], partner[60:] = np.arange(60, 90), np.arange(30)
    _, idx = knn_search(x, x, 5, exclude_self=True, backend=backend, batch_size=16)
    assert idx.shape == (90, 5)
    assert not (idx == np.arange(90)[:, None]).any(), "a query was returned as its own neighbour"
    duplicated = np.r_[0:30, 60:90]
    # The duplicate is the unique best match once the query itself is gone.
    np.testing.assert_array_equal(idx[duplicated, 0], partner[duplicated])


@pytest.mark.parametrize("exclude_self", [True, False])
@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_matches_brute_force(backend, exclude_self):
    rng = np.random.default_rng(1)
    r = rng.standard_normal((300, 24)).astype(np.float32)
    q = r if exclude_self else rng.standard_normal((70, 24)).astype(np.float32)
    sims, idx = knn_search(q, r, 10, exclude_self=exclude_self, backend=backend, batch_size=32)
    np.testing.assert_array_equal(idx, _brute_force_topk(q, r, 10, exclude_self))
    assert sims.dtype == np.float32 and idx.dtype == np.int64
    assert np.all(np.diff(sims, axis=1) <= 0), "similarities must be sorted, best first"


def test_backends_agree_and_accept_tensors():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((257, 32)).astype(np.float32)
    s_f, i_f = knn_search(x, x, 7, exclude_self=True, backend="faiss")
    s_t, i_t = knn_search(torch.from_numpy(x), torch.from_numpy(x), 7, exclude_self=True,
                          backend="torch", batch_size=50)
    np.testing.assert_array_equal(i_f, i_t)
    np.testing.assert_allclose(s_f, s_t, atol=1e-5)


def test_inputs_are_not_normalised_in_place():
    x = np.full((5, 4), 3.0, dtype=np.float32)
    before = x.copy()
    sims, _ = knn_search(x, x, 2, exclude_self=True)
    np.testing.assert_array_equal(x, before)
    np.testing.assert_allclose(sims, 1.0, atol=1e-6)  # cosine, not raw inner product


def test_k_is_validated():
    x = np.eye(4, dtype=np.float32)
    with pytest.raises(ValueError, match="k=4"):
        knn_search(x, x, 4, exclude_self=True)
    with pytest.raises(ValueError, match="backend"):
        knn_search(x, x, 1, exclude_self=False, backend="annoy")


def test_auto_backend_is_faiss_off_the_gpu_and_explicit_choices_stay():
    x = np.eye(4, dtype=np.float32)
    assert resolve_backend("auto", x) == "faiss"
    assert resolve_backend("auto", torch.from_numpy(x)) == "faiss"  # a CPU tensor
    assert resolve_backend("torch", x) == "torch"
    assert resolve_backend("faiss", torch.from_numpy(x)) == "faiss"
    with pytest.raises(ValueError, match="'auto'"):
        resolve_backend("annoy", x)
    with pytest.raises(ValueError, match="backend"):
        knn_search(x, x, 1, exclude_self=True, backend="annoy")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_auto_backend_searches_gpu_tensors_with_torch():
    x = torch.randn(300, 16, device="cuda")
    assert resolve_backend("auto", x) == "torch"
    _, i_auto = knn_search(x, x, 5, exclude_self=True, backend="auto")
    _, i_faiss = knn_search(x.cpu().numpy(), x.cpu().numpy(), 5, exclude_self=True)
    np.testing.assert_array_equal(i_auto, i_faiss)

"""Exact k-nearest-neighbour search by cosine similarity, behind one swappable signature.

Both backends L2-normalise float32 copies of the inputs and rank by inner product, so the
scores are cosine similarities and "nearest" means "most similar". Queries are searched
in chunks (:func:`knn_chunks`), so nothing larger than one chunk's ``(chunk, k)`` result
and, for torch, its ``(chunk, R)`` block is held while searching — never an ``N x N``
matrix; :func:`knn_search` gathers the chunks into the whole ``(Q, k)`` result.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Literal

import faiss
import numpy as np
import torch

Backend = Literal["faiss", "torch", "auto"]
ArrayLike = np.ndarray | torch.Tensor

# faiss blocks queries by 4096 inside its BLAS path, so chunks that are a multiple of that
# cost nothing in speed; 8192 keeps the (chunk, k + 1) scratch for self-exclusion small.
_FAISS_CHUNK = 8192
# torch materialises a (chunk, R) similarity block; ~256 MiB of float32 per block.
_TORCH_BLOCK_ELEMENTS = 1 << 26
#: Default budget of one chunk's ``(chunk, k)`` result, in elements (4M: 48 MiB of
#: similarities and indices, and a few such arrays while the metrics reduce it).
CHUNK_RESULT_ELEMENTS = 1 << 22


def l2_normalised(x: ArrayLike) -> np.ndarray:
    """(N, d) anything -> (N, d) C-contiguous float32 with unit rows (a copy, never a view).

    Zero rows stay zero (their similarity to everything is 0).
    """
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float32).numpy()
    # np.array copies, so the caller's array is never normalised in place.
    out = np.array(x, dtype=np.float32, order="C", copy=True)
    if out.ndim != 2:
        raise ValueError(f"embeddings must be 2-D (N, d), got shape {out.shape}")
    faiss.normalize_L2(out)
    return out


def _as_normalised_tensor(x: ArrayLike, device: torch.device) -> torch.Tensor:
    """(N, d) anything -> (N, d) float32 tensor on ``device`` with unit rows."""
    t = torch.as_tensor(x).detach().to(device=device, dtype=torch.float32)
    if t.ndim != 2:
        raise ValueError(f"embeddings must be 2-D (N, d), got shape {tuple(t.shape)}")
    return torch.nn.functional.normalize(t, dim=1)


def _drop_self(
    sims: np.ndarray, idx: np.ndarray, row_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Remove each row's own index from a (c, k + 1) result, giving (c, k).

    The own index is dropped wherever it sits, not assumed to be column 0: with exact
    duplicates (tied scores) another index can come first. A row whose own index is missing
    (more than k ties in front of it) drops its last column instead, as
    pytorch-metric-learning's ``return_results`` does.
    """
    if len(idx) and bool((idx[:, 0] == row_ids).all()):
        return sims[:, 1:], idx[:, 1:]  # the usual case: every row's own index comes first
    is_self = idx == row_ids[:, None]
    is_self[~is_self.any(axis=1), -1] = True
    c, kp1 = idx.shape
    keep = ~is_self
    return sims[keep].reshape(c, kp1 - 1), idx[keep].reshape(c, kp1 - 1)


def certain_columns(sims: np.ndarray, idx: np.ndarray, row_ids: np.ndarray | None
                    ) -> np.ndarray:
    """(c,) how many leading columns of each row of a raw (c, k') faiss result (own index
    still in it when ``row_ids`` is given) every search of the same rows at any width
    ``>= k'`` returns alike, once the own index is dropped.

    Those are the columns scoring strictly above the row's last one: a wider search keeps
    every item above that score, and faiss orders them the same way whatever its width
    (by score, exact ties by index). Items tied with the last score may be others in a
    wider search. The own index, when among them, is not counted.
    """
    trusted = sims > sims[:, -1:]  # a prefix: the scores are sorted, best first
    count = trusted.sum(axis=1)
    if row_ids is not None:
        count -= ((idx == row_ids[:, None]) & trusted).any(axis=1)
    return count


_BLAS_SETTING = threading.Lock()


def _blas_search(index: faiss.Index, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``index.search(x, k)`` with faiss's BLAS kernel, whatever the number of queries.

    faiss scores a search of few queries (``nq * d`` under
    ``faiss.cvar.distance_compute_blas_threshold`` in faiss 1.15, ``nq < 20`` before) with
    another kernel than a larger one, and their last bits differ, which reorders near ties.
    With the BLAS kernel a query gets the same scores whichever other queries share its
    search: a chunked or a partial search returns what one search of all queries does. The
    threshold is faiss's process-wide setting: set for the call and restored, under a lock.
    """
    with _BLAS_SETTING:
        previous = faiss.cvar.distance_compute_blas_threshold
        faiss.cvar.distance_compute_blas_threshold = 0
        try:
            return index.search(x, k)
        finally:
            faiss.cvar.distance_compute_blas_threshold = previous


class ExactIndex:
    """faiss's exact inner-product search over L2-normalised copies of the references, for
    any rows of the (normalised) queries: what :func:`knn_chunks` searches chunk by chunk,
    and what a metric that searches some queries again (wider) searches with.

    Args:
        query: (Q, d) embeddings.
        reference: (R, d) embeddings; ``query`` itself (the same object) for all-vs-all.
        exclude_self: query row ``i`` is reference row ``i``, dropped from its neighbours.
    """

    def __init__(self, query: ArrayLike, reference: ArrayLike, exclude_self: bool) -> None:
        self.query = l2_normalised(query)
        self.reference = self.query if reference is query else l2_normalised(reference)
        self.exclude_self = exclude_self
        # Threads are left as the process has them (OMP_NUM_THREADS /
        # faiss.omp_set_num_threads): the caller, not a metric, knows what else shares the
        # machine.
        self.index = faiss.IndexFlatIP(self.reference.shape[1])
        self.index.add(self.reference)

    def search_raw(self, rows: slice | np.ndarray, k: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(similarities, indices, row ids)`` of query ``rows`` (a slice or increasing
        int64 row numbers), ``k`` wide plus one for the own index in all-vs-all mode, the
        own index not yet dropped."""
        if isinstance(rows, slice):
            row_ids = np.arange(*rows.indices(len(self.query)))
        else:
            row_ids = np.asarray(rows, dtype=np.int64)
        sims, idx = _blas_search(self.index, self.query[rows], k + int(self.exclude_self))
        return sims, idx, row_ids

    def search(self, rows: slice | np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(similarities, indices)``, each ``(c, k)``, of query ``rows``, own index
        dropped in all-vs-all mode."""
        sims, idx, row_ids = self.search_raw(rows, k)
        return self.drop_self(sims, idx, row_ids)

    def drop_self(self, sims: np.ndarray, idx: np.ndarray, row_ids: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
        """A :meth:`search_raw` result without the own index (unchanged for
        query-vs-gallery)."""
        return _drop_self(sims, idx, row_ids) if self.exclude_self else (sims, idx)


def _faiss_chunks(
    query: ArrayLike, reference: ArrayLike, k: int, exclude_self: bool, batch_size: int
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    index = ExactIndex(query, reference, exclude_self)
    n_q = len(index.query)
    for start in range(0, n_q, batch_size):
        yield (start, *index.search(slice(start, min(start + batch_size, n_q)), k))


def _torch_chunks(
    query: torch.Tensor, reference: torch.Tensor, k: int, exclude_self: bool, batch_size: int
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    n_q = query.shape[0]
    k_search = k + 1 if exclude_self else k
    for start in range(0, n_q, batch_size):
        stop = min(start + batch_size, n_q)
        block = query[start:stop] @ reference.T  # (c, R)
        d_chunk, i_chunk = torch.topk(block, k_search, dim=1, largest=True, sorted=True)
        del block
        d_np, i_np = d_chunk.cpu().numpy(), i_chunk.cpu().numpy()
        if exclude_self:
            d_np, i_np = _drop_self(d_np, i_np, np.arange(start, stop))
        yield start, d_np, i_np


def resolve_backend(backend: str, query: ArrayLike) -> Literal["faiss", "torch"]:
    """``"auto"`` -> ``"torch"`` for embeddings on a GPU, else ``"faiss"``; others unchanged.

    faiss-cpu would first copy GPU embeddings to the host and search on the CPU; the chunked
    matmul + top-k stays on the GPU, which is the faster of the two at SOP size (measured in
    ``benchmarks/README.md``).
    """
    if backend == "faiss":
        return "faiss"
    if backend == "torch":
        return "torch"
    if backend != "auto":
        raise ValueError(f"backend must be 'faiss', 'torch' or 'auto', got {backend!r}")
    on_gpu = isinstance(query, torch.Tensor) and query.device.type == "cuda"
    return "torch" if on_gpu else "faiss"


def _check(n_q: int, n_r: int, k: int, exclude_self: bool, batch_size: int | None) -> None:
    if exclude_self and n_q > n_r:
        raise ValueError(
            f"exclude_self=True needs query row i to be reference row i, but Q={n_q} > R={n_r}"
        )
    if not 1 <= k <= n_r - int(exclude_self):
        raise ValueError(
            f"k={k} must be in [1, {n_r - int(exclude_self)}] "
            f"(reference size {n_r}{' minus the query itself' if exclude_self else ''})"
        )
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")


def default_chunk(n_r: int, k: int, backend: Literal["faiss", "torch"]) -> int:
    """Queries per chunk when the caller names none: at most 8192 (faiss) and as many as
    keep the ``(chunk, k)`` result near :data:`CHUNK_RESULT_ELEMENTS`, and for torch the
    ``(chunk, R)`` similarity block near 256 MiB."""
    chunk = min(_FAISS_CHUNK, max(1, CHUNK_RESULT_ELEMENTS // max(k + 1, 1)))
    if backend == "torch":
        chunk = min(chunk, max(1, _TORCH_BLOCK_ELEMENTS // max(n_r, 1)))
    return chunk


def knn_chunks(
    query: ArrayLike,
    reference: ArrayLike,
    k: int,
    *,
    exclude_self: bool,
    backend: Backend = "faiss",
    batch_size: int | None = None,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """:func:`knn_search` one chunk of queries at a time: yields ``(start, similarities,
    indices)`` for query rows ``start .. start + len(indices)``, each ``(c, k)``, in order.

    Nothing larger than one chunk's result (plus, for torch, its ``(c, R)`` block) is held,
    so a caller that reduces each chunk and drops it needs ``O(chunk x k)`` memory whatever
    the number of queries. Arguments as :func:`knn_search`; the default ``batch_size`` is
    :func:`default_chunk`.
    """
    n_q, n_r = len(query), len(reference)
    _check(n_q, n_r, k, exclude_self, batch_size)
    backend = resolve_backend(backend, query)
    chunk = batch_size or default_chunk(n_r, k, backend)
    if backend == "faiss":
        yield from _faiss_chunks(query, reference, k, exclude_self, chunk)
        return
    if backend == "torch":
        device = query.device if isinstance(query, torch.Tensor) else torch.device("cpu")
        with torch.no_grad():
            q_t = _as_normalised_tensor(query, device)
            r_t = q_t if reference is query else _as_normalised_tensor(reference, device)
            yield from _torch_chunks(q_t, r_t, k, exclude_self, chunk)
        return
    raise AssertionError(backend)  # resolve_backend admits nothing else


def knn_search(
    query: ArrayLike,
    reference: ArrayLike,
    k: int,
    *,
    exclude_self: bool,
    backend: Backend = "faiss",
    batch_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours of each query row among the reference rows, by cosine.

    Both inputs are copied to float32 and L2-normalised here, then ranked by inner product
    (``faiss.IndexFlatIP``, or a chunked matmul + ``torch.topk``). The whole ``(Q, k)``
    result is returned; :func:`knn_chunks` gives it chunk by chunk instead.

    Args:
        query: (Q, d) embeddings, numpy or torch.
        reference: (R, d) embeddings, numpy or torch.
        k: neighbours per query; must satisfy ``1 <= k <= R - exclude_self``.
        exclude_self: all-vs-all mode. Query row ``i`` is reference row ``i`` (``Q <= R``);
            ``k + 1`` are searched and reference ``i`` is removed from row ``i`` by index,
            wherever it appears (ties with duplicates may put it after another index).
        backend: ``"faiss"`` (CPU, default), ``"torch"`` (runs on the query tensor's device)
            or ``"auto"`` (torch for a query tensor on a GPU, else faiss).
        batch_size: queries per chunk; default :func:`default_chunk`.

    Returns:
        ``(similarities, indices)``: ``(Q, k)`` float32 cosine similarities, most similar
        first, and ``(Q, k)`` int64 indices into ``reference``.
    """
    n_q = len(query)
    _check(n_q, len(reference), k, exclude_self, batch_size)
    sims = np.empty((n_q, k), dtype=np.float32)
    idx = np.empty((n_q, k), dtype=np.int64)
    for start, d_chunk, i_chunk in knn_chunks(query, reference, k, exclude_self=exclude_self,
                                              backend=backend, batch_size=batch_size):
        sims[start:start + len(i_chunk)], idx[start:start + len(i_chunk)] = d_chunk, i_chunk
    return sims, idx

"""A wide evaluation (SOP's Recall@1000) in two passes: the numbers and the neighbours of
one full-width search, and only the undecided queries searched at full width."""

from __future__ import annotations

import numpy as np
import pytest

import see_dml.metrics.knn as knn
from see_dml.metrics import (
    evaluate_retrieval,
    knn_search,
    metrics_from_neighbours,
    relevant_counts,
    retrieve,
)
from see_dml.metrics.knn import certain_columns

KS = (1, 10, 100, 1000)


def _clustered(n, d, seed, noise=0.6):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n // 5, n)
    centres = rng.standard_normal((n // 5, d))
    return (centres[labels] + noise * rng.standard_normal((n, d))).astype(np.float32), labels


def _random(n, d, seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)).astype(np.float32), rng.integers(0, n // 5, n)


def _ties(n, d, seed):
    """+-1/8 coordinates in few dimensions: exact ties everywhere, and duplicates."""
    rng = np.random.default_rng(seed)
    x = rng.choice([-0.125, 0.125], size=(n, d)).astype(np.float32)
    x[n // 2:n // 2 + n // 10] = x[:n // 10]
    return x, rng.integers(0, n // 5, n)


def _one_search(query, q_labels, reference, r_labels, ks):
    """The metrics of one full-width search (what evaluate_retrieval must equal)."""
    exclude_self = reference is None
    ref, ref_labels = (query, q_labels) if exclude_self else (reference, r_labels)
    counts = relevant_counts(q_labels, ref_labels, exclude_self=exclude_self)
    width = min(max(max(ks), int(counts.max())), len(ref) - exclude_self)
    _, idx = knn_search(query, ref, width, exclude_self=exclude_self)
    return metrics_from_neighbours(ref_labels[idx], q_labels, counts, ks)


@pytest.mark.parametrize("batch_size", [None, 97])
@pytest.mark.parametrize("mode", ["all_vs_all", "query_vs_gallery"])
@pytest.mark.parametrize("make", [_clustered, _random, _ties],
                         ids=["clustered", "random", "ties"])
def test_two_passes_give_the_numbers_of_one_full_search(make, mode, batch_size):
    x, labels = make(2400, 6 if make is _ties else 16, seed=21)
    labels[:2] = [10_000, 10_001]  # lone queries
    args = ((x, labels, None, None) if mode == "all_vs_all"
            else (x[:900], labels[:900], x[900:], labels[900:]))
    metrics, kept = evaluate_retrieval(*args, KS, batch_size=batch_size)
    assert metrics == _one_search(*args, KS)  # to the last bit
    full = retrieve(*args, k=max(KS))  # keep=None: one full-width pass
    assert kept.k == full.k
    np.testing.assert_array_equal(kept.indices, full.indices[kept.rows])
    np.testing.assert_array_equal(kept.similarities, full.similarities[kept.rows])


def _searched(monkeypatch) -> list[tuple[int, int]]:
    """(queries, k) of every faiss search from here on."""
    calls: list[tuple[int, int]] = []
    search = knn._blas_search

    def spy(index, x, k):
        calls.append((len(x), k))
        return search(index, x, k)

    monkeypatch.setattr(knn, "_blas_search", spy)
    return calls


def test_only_the_undecided_queries_are_searched_wide(monkeypatch):
    x, labels = _clustered(3000, 16, seed=22, noise=0.3)
    calls = _searched(monkeypatch)
    metrics, _ = evaluate_retrieval(x, labels, ks=KS)
    assert metrics["recall@100"] > 0.95  # a model that has learnt something
    narrow = sum(n for n, k in calls if k == 101)  # 100 + the query itself
    wide = sum(n for n, k in calls if k == 1001)
    assert narrow == 3000
    assert 8 <= wide < 0.1 * 3000  # the kept rows and the few undecided ones


def test_without_class_signal_the_rest_is_searched_wide_at_once(monkeypatch):
    x, labels = _random(3000, 16, seed=23)
    calls = _searched(monkeypatch)
    evaluate_retrieval(x, labels, ks=KS)
    narrow = sum(n for n, k in calls if k == 101)
    wide = sum(n for n, k in calls if k == 1001)
    assert narrow == 256  # the first chunk only: most of it undecided
    assert 3000 - 256 <= wide < 3000  # the rest at once, and the first chunk's undecided


def test_narrow_searches_are_left_for_small_widths(monkeypatch):
    x, labels = _clustered(3000, 16, seed=24)
    calls = _searched(monkeypatch)
    evaluate_retrieval(x, labels, ks=(1, 2, 4, 8))  # CUB's ks: one pass
    assert {k for _, k in calls} == {int(np.bincount(labels).max())}  # max R, + the query


def test_certain_columns_stop_before_a_tie_with_the_last_score():
    sims = np.array([[1.0, 0.9, 0.8, 0.7],     # no tie: all but the last
                     [1.0, 0.9, 0.7, 0.7],     # the last two tie
                     [0.7, 0.7, 0.7, 0.7],     # all tie: nothing is certain
                     [1.0, 0.9, 0.8, 0.7]], dtype=np.float32)
    idx = np.array([[0, 5, 6, 7], [5, 1, 6, 7], [2, 5, 6, 7], [5, 6, 7, 8]])
    np.testing.assert_array_equal(certain_columns(sims, idx, None), [3, 2, 0, 3])
    # the own index, when among the certain columns, is not a neighbour (row 3: absent)
    np.testing.assert_array_equal(certain_columns(sims, idx, np.arange(4)), [2, 1, 0, 3])


def test_chunk_size_must_be_positive():
    x, labels = _clustered(600, 8, seed=25)
    with pytest.raises(ValueError, match="batch_size"):
        evaluate_retrieval(x, labels, ks=KS, batch_size=-5)

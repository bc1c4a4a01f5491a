"""A wide evaluation (SOP's Recall@1000) in two passes: the numbers and the neighbours of
one full-width search, and only the undecided queries searched at full width."""

from __future__ import annotations

import numpy as np
import pytest

import see_dml.metrics.knn as knn
from see_dml.metrics import (
    MetricSet,
    evaluate_retrieval,
    knn_search,
    metrics_from_neighbours,
    relevant_counts,
    retrieve,
)
from see_dml.metrics.knn import certain_columns
from see_dml.metrics.retrieval import _exact_within, _narrow_width

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


def _one_search(query, q_labels, reference, r_labels, ks, metric_set=None):
    """The metrics of one full-width search (what evaluate_retrieval must equal)."""
    exclude_self = reference is None
    ref, ref_labels = (query, q_labels) if exclude_self else (reference, r_labels)
    counts = relevant_counts(q_labels, ref_labels, exclude_self=exclude_self)
    ms = (metric_set or MetricSet()).resolved(ks)
    width = ms.width(int(counts.max()), len(ref) - exclude_self)
    _, idx = knn_search(query, ref, width, exclude_self=exclude_self)
    return metrics_from_neighbours(ref_labels[idx], q_labels, counts, ks, metric_set=ms)


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


#: metric sets beside Recall@K (1, 10, 100, 1000) and the narrow width each searches first
#: (all-vs-all of 2,400: max R is far below 100)
METRIC_SETS = {
    # Precision@K and mAP@K within the first 100 columns
    "p_map_within_100": (MetricSet(precision_at=(1, 5, 50), map_at=(10, 100)), 100),
    # a K beyond 100: the narrow search covers it (150 wide), still 4 times narrower
    "p_map_beyond_100": (MetricSet(precision_at=(1, 10, 150), map_at=(5, 120)), 150),
    # a K of 300 next to Recall@1000: one pass, full width
    "map_300": (MetricSet(precision_at=(1, 50), map_at=(300,)), None),
    # no R-based metric: the first R is not among the columns read
    "no_r": (MetricSet(precision_at=(1, 10, 101), map_at_r=False, r_precision=False), 101),
}


@pytest.mark.parametrize("batch_size", [None, 97])
@pytest.mark.parametrize("mode", ["all_vs_all", "query_vs_gallery"])
@pytest.mark.parametrize("make", [_clustered, _ties], ids=["clustered", "ties"])
@pytest.mark.parametrize("name", list(METRIC_SETS))
def test_two_passes_give_every_metric_of_the_set_of_one_full_search(
        make, mode, batch_size, name, monkeypatch):
    metric_set, narrow = METRIC_SETS[name]
    x, labels = make(2400, 6 if make is _ties else 16, seed=26)
    labels[:2] = [10_000, 10_001]  # lone queries
    args = ((x, labels, None, None) if mode == "all_vs_all"
            else (x[:900], labels[:900], x[900:], labels[900:]))
    calls = _searched(monkeypatch)
    metrics, kept = evaluate_retrieval(*args, KS, metric_set=metric_set,
                                       batch_size=batch_size)
    searched = {k - (mode == "all_vs_all") for _, k in calls}
    width = 1000
    assert searched == ({narrow, width} if narrow else {width})  # two passes, or one
    assert metrics == _one_search(*args, KS, metric_set)  # to the last bit
    assert set(metrics) >= set(metric_set.names(KS))
    one_pass, everything = evaluate_retrieval(*args, KS, metric_set=metric_set, keep=None,
                                              batch_size=batch_size)  # chunked, full width
    assert metrics == one_pass
    assert kept.k == everything.k == width
    np.testing.assert_array_equal(kept.indices, everything.indices[kept.rows])
    np.testing.assert_array_equal(kept.similarities, everything.similarities[kept.rows])


def test_a_k_beyond_the_first_pass_widens_it_or_leaves_one_pass():
    counts = np.array([3, 5, 40])  # max R = 40
    assert _narrow_width(MetricSet(), counts, 1000) == 100
    assert _narrow_width(MetricSet(precision_at=(1, 150)), counts, 1000) == 150
    assert _narrow_width(MetricSet(map_at=(250,)), counts, 1000) == 250
    assert _narrow_width(MetricSet(map_at=(251,)), counts, 1000) is None  # 4 x 251 > 1000
    assert _narrow_width(MetricSet(precision_at=(300,)), counts, 2000) == 300
    assert _narrow_width(MetricSet(), np.array([3, 300]), 1000) is None  # max R 300
    # without R-Precision and MAP@R the largest R does not widen it
    no_r = MetricSet(map_at_r=False, r_precision=False)
    assert _narrow_width(no_r, np.array([3, 300]), 1000) == 100


def test_a_query_is_decided_only_when_every_column_its_metrics_read_is_certain():
    first = np.array([0, 0, 0, 0, 50, 100])  # 100: no hit in the narrow search
    r = np.array([2, 2, 60, 2, 2, 2])
    certain = np.array([100, 9, 100, 99, 60, 100])
    recall = MetricSet(recall_at=(1, 1000), precision_at=(), map_at_r=False,
                       r_precision=False)
    np.testing.assert_array_equal(_exact_within(recall, first, r, certain),
                                  [True, True, True, True, True, False])
    with_r = MetricSet(recall_at=(1, 1000), precision_at=())
    np.testing.assert_array_equal(_exact_within(with_r, first, r, certain),
                                  [True, True, True, True, True, False])
    np.testing.assert_array_equal(_exact_within(with_r, first, r, np.array([100, 1, 59, 99,
                                                                             60, 100])),
                                  [True, False, False, True, True, False])
    # Precision@10 reads 10 columns, mAP@100 all 100 of them
    p10 = MetricSet(recall_at=(1, 1000), precision_at=(1, 10))
    np.testing.assert_array_equal(_exact_within(p10, first, r, certain),
                                  [True, False, True, True, True, False])
    map100 = MetricSet(recall_at=(1, 1000), map_at=(100,))
    np.testing.assert_array_equal(_exact_within(map100, first, r, certain),
                                  [True, False, True, False, False, False])

"""Retrieval metrics: hand-worked matrices, brute force, and pytorch-metric-learning."""

import numpy as np
import pytest
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

from see_dml.metrics import (
    MetricSet,
    metrics_from_neighbours,
    relevant_counts,
    retrieval_metrics,
    retrieve,
)

PML_KEYS = {
    "precision@1": "precision_at_1",
    "r_precision": "r_precision",
    "map@r": "mean_average_precision_at_r",
}


def _hand_built():
    """Three queries, k = 4 neighbours each (labels, best first).

    q0 label 0, R=2, neighbours [1, 0, 0, 2]: first hit at rank 2.
        R-Prec: first 2 = [1, 0] -> 1/2.  MAP@R: hit at rank 2, P(2) = 1/2 -> (1/2)/2 = 1/4.
    q1 label 1, R=3, neighbours [1, 3, 1, 1]: first hit at rank 1.
        R-Prec: first 3 = [1, 3, 1] -> 2/3.  MAP@R: P(1) = 1, P(3) = 2/3 -> (5/3)/3 = 5/9.
    q2 label 2, R=1, neighbours [0, 1, 3, 4]: no hit.  R-Prec 0, MAP@R 0.
    Recall@1 = 1/3, @2 = 2/3, @4 = 2/3.  P@1 = 1/3.
    R-Prec = (1/2 + 2/3 + 0)/3 = 7/18.  MAP@R = (1/4 + 5/9 + 0)/3 = 29/108.
    """
    nbr = np.array([[1, 0, 0, 2], [1, 3, 1, 1], [0, 1, 3, 4]])
    return nbr, np.array([0, 1, 2]), np.array([2, 3, 1])


def test_hand_built_matrix():
    nbr, labels, r = _hand_built()
    m = metrics_from_neighbours(nbr, labels, r, ks=(1, 2, 4))
    expected = {
        "recall@1": 1 / 3, "recall@2": 2 / 3, "recall@4": 2 / 3, "precision@1": 1 / 3,
        "r_precision": 7 / 18, "map@r": 29 / 108, "num_queries": 3.0,
        "num_excluded_queries": 0.0,
    }
    assert m == pytest.approx(expected, abs=1e-12)
    assert all(type(v) is float for v in m.values())


def test_precision_and_map_at_k_on_the_hand_built_matrix():
    """The same three queries (hits q0 [0,1,1,0] R=2, q1 [1,0,1,1] R=3, q2 [0,0,0,0] R=1).

    Precision@K = hits among the first K / K:
        @2: q0 1/2, q1 1/2, q2 0 -> 1/3.   @4: q0 2/4, q1 3/4, q2 0 -> 5/12.
    mAP@K (OML) = sum over hits i <= K of P(i), over min(K, R):
        @1: q0 0, q1 1/1, q2 0 -> 1/3.
        @2: q0 P(2) = 1/2 over min(2, 2) -> 1/4; q1 P(1) = 1 over min(2, 3) -> 1/2 -> 1/4.
        @4: q0 (1/2 + 2/3)/2 = 7/12; q1 (1 + 2/3 + 3/4)/3 = 29/36; q2 0 -> 25/54.
    """
    nbr, labels, r = _hand_built()
    ms = MetricSet(precision_at=(1, 2, 4), map_at=(1, 2, 4))
    m = metrics_from_neighbours(nbr, labels, r, ks=(1,), metric_set=ms)
    assert m == pytest.approx({
        "recall@1": 1 / 3, "precision@1": 1 / 3, "precision@2": 1 / 3,
        "precision@4": 5 / 12, "map@1": 1 / 3, "map@2": 1 / 4, "map@4": 25 / 54,
        "r_precision": 7 / 18, "map@r": 29 / 108, "num_queries": 3.0,
        "num_excluded_queries": 0.0}, abs=1e-12)


def test_map_at_k_is_oml_calc_map():
    """OML's own example (``oml.functional.metrics.calc_map``'s docstring): hits
    ``[[1, 0], [0, 1], [0, 0]]``, ``n_gt = [2, 3, 5]`` give map@1 ``[1, 0, 0]`` and map@2
    ``[0.5, 0.25, 0]``; its precision@2 divides by ``min(2, n_gt)`` (``[0.5, 0.5, 0]``),
    ours by 2: the same here. Per query, one query at a time."""
    for hits, r, map1, map2, p2 in (([1, 0], 2, 1.0, 0.5, 0.5), ([0, 1], 3, 0.0, 0.25, 0.5),
                                    ([0, 0], 5, 0.0, 0.0, 0.0)):
        nbr = np.array([[0 if h else 9 for h in hits] + [9] * (r - 2 if r > 2 else 0)])
        ms = MetricSet(recall_at=(1,), precision_at=(2,), map_at=(1, 2))
        m = metrics_from_neighbours(nbr, np.array([0]), np.array([r]), metric_set=ms)
        assert (m["map@1"], m["map@2"], m["precision@2"]) == pytest.approx((map1, map2, p2))


def test_precision_divides_by_k_and_map_by_min_k_r():
    """One query, R = 2, both relevant items first: Precision@4 = 2/4 (textbook; OML's
    precision@4 would be 2/min(4, 2) = 1), mAP@4 = (1 + 1)/min(4, 2) = 1, and mAP@K = MAP@R
    at K = R."""
    ms = MetricSet(recall_at=(1,), precision_at=(4,), map_at=(2, 4))
    m = metrics_from_neighbours(np.array([[0, 0, 1, 1]]), np.array([0]), np.array([2]),
                                metric_set=ms)
    assert (m["precision@4"], m["map@4"], m["map@2"], m["map@r"]) == (0.5, 1.0, 1.0, 1.0)


def test_a_k_beyond_the_references_counts_those_there_are():
    """A gallery of 3: Precision@10 and mAP@10 are over the 3 neighbours there are (OML clips
    its K the same way), Recall@10 is Recall@3."""
    query, gallery = np.eye(3, dtype=np.float32)[:1], np.eye(3, dtype=np.float32)
    ms = MetricSet(recall_at=(10,), precision_at=(10,), map_at=(10,))
    m = retrieval_metrics(query, np.array([0]), gallery, np.array([0, 1, 0]), metric_set=ms)
    # neighbours by cosine: g0 (label 0), then g1, g2 tied at 0: one of them is relevant
    assert m["recall@10"] == 1.0 and m["precision@10"] == pytest.approx(2 / 3)
    assert m["map@10"] == pytest.approx((1 + (2 / 2 if m["map@r"] == 1.0 else 2 / 3)) / 2)


def test_a_set_computes_only_its_metrics():
    nbr, labels, r = _hand_built()
    only = MetricSet(recall_at=(2,), precision_at=(), map_at_r=False, r_precision=False)
    m = metrics_from_neighbours(nbr[:, :2], labels, r, metric_set=only)  # k=2 < R: no R needed
    assert m == {"recall@2": pytest.approx(2 / 3), "num_queries": 3.0,
                 "num_excluded_queries": 0.0}
    with pytest.raises(ValueError, match="R=3"):  # MAP@R needs R neighbours
        metrics_from_neighbours(nbr[:, :2], labels, r)


def test_lone_queries_are_excluded_and_counted():
    nbr, labels, r = _hand_built()
    # q3 (label 9) has R = 0: whatever its neighbours are, it must not move any metric.
    nbr = np.vstack([nbr, [9, 9, 9, 9]])
    m = metrics_from_neighbours(nbr, np.r_[labels, 9], np.r_[r, 0], ks=(1, 2, 4))
    assert m["recall@1"] == pytest.approx(1 / 3)
    assert m["map@r"] == pytest.approx(29 / 108)
    assert (m["num_queries"], m["num_excluded_queries"]) == (3.0, 1.0)


def test_no_usable_query_gives_nan_and_warns():
    with pytest.warns(UserWarning, match="no query"):
        m = metrics_from_neighbours(np.array([[1, 2]]), np.array([0]), np.array([0]), ks=(1,))
    assert np.isnan(m["recall@1"]) and m["num_excluded_queries"] == 1.0


def test_too_few_columns_for_r_is_an_error():
    with pytest.raises(ValueError, match="R=3"):
        metrics_from_neighbours(np.array([[0, 0]]), np.array([0]), np.array([3]))


def test_relevant_counts():
    ref = np.array([3, 1, 3, 3, 7])
    np.testing.assert_array_equal(
        relevant_counts(np.array([3, 7, 5, 1]), ref, exclude_self=False), [3, 1, 0, 1]
    )
    np.testing.assert_array_equal(relevant_counts(ref, ref, exclude_self=True), [2, 0, 2, 2, 0])


def test_query_vs_gallery_by_hand():
    """In-Shop-like: queries searched against a separate gallery, nothing excluded by index.

    Gallery g0 (1,0) label 0, g1 (0,1) label 1, g2 (-1,0) label 0, g3 (.8,.6) label 1.
    q0 (1, .1)  label 0, R=2: order g0 g3 g1 g2 = labels [0,1,1,0] -> R@1 1, RP 1/2, MAP 1/2.
    q1 (0, 1)   label 1, R=2: order g1 g3 {g0,g2} = [1,1,0,0]    -> R@1 1, RP 1,   MAP 1.
    q2 (-1, .2) label 1, R=2: order g2 g1 g3 g0 = [0,1,1,0]       -> R@1 0, R@2 1, RP 1/2,
        MAP (1/2)/2 = 1/4.
    q3 label 7 is absent from the gallery: excluded.
    """
    gallery = np.array([[1, 0], [0, 1], [-1, 0], [0.8, 0.6]], dtype=np.float32)
    g_labels = np.array([0, 1, 0, 1])
    query = np.array([[1, 0.1], [0, 1], [-1, 0.2], [0.3, 0.3]], dtype=np.float32)
    q_labels = np.array([0, 1, 1, 7])
    m = retrieval_metrics(query, q_labels, gallery, g_labels, ks=(1, 2))
    assert m == pytest.approx({
        "recall@1": 2 / 3, "recall@2": 1.0, "precision@1": 2 / 3, "r_precision": 2 / 3,
        "map@r": 7 / 12, "num_queries": 3.0, "num_excluded_queries": 1.0,
    })


def _brute_force_hits(x: np.ndarray, labels: np.ndarray, ks) -> dict[int, np.ndarray]:
    """(Q,) hit-or-miss per K from a full similarity matrix, self masked by index."""
    xn = x.astype(np.float64) / np.linalg.norm(x, axis=1, keepdims=True)
    sims = xn @ xn.T
    np.fill_diagonal(sims, -np.inf)
    order = np.argsort(-sims, axis=1, kind="stable")
    same = labels[order] == labels[:, None]
    return {k: same[:, :k].any(axis=1) for k in ks}


def test_recall_matches_brute_force():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((400, 16)).astype(np.float32)
    labels = rng.integers(0, 25, 400)
    ks = (1, 2, 4, 8, 16)
    m = retrieval_metrics(x, labels, ks=ks)
    hits = _brute_force_hits(x, labels, ks)
    for k in ks:
        assert m[f"recall@{k}"] == pytest.approx(hits[k].mean(), abs=1e-12)


def test_duplicates_with_other_labels_do_not_count_as_self():
    """Exact duplicates tie with the query; only the query's own index may be dropped.

    Coordinates are +-1/8 in d=64, so every cosine is an exact multiple of 1/64 in float32
    and ties are exact. Each duplicate carries a different label, so a search that dropped
    column 0 instead of the query's index would keep the query itself as a same-class hit.
    Tied neighbours can be ordered either way, so each query's hit must lie between the
    tie-pessimistic and tie-optimistic brute-force answers.
    """
    rng = np.random.default_rng(4)
    base = rng.choice([-0.125, 0.125], size=(150, 64)).astype(np.float32)
    base_labels = rng.integers(0, 15, 150)
    x = np.concatenate([base, base[:50]])
    labels = np.concatenate([base_labels, (base_labels[:50] + 1) % 15])
    ks = (1, 2, 4, 8)

    result = retrieve(x, labels, k=max(ks))
    assert not (result.indices == np.arange(len(x))[:, None]).any()
    same = result.neighbour_labels == labels[:, None]

    sims = np.rint((x @ x.T) * 64).astype(np.int64)  # exact integers
    np.fill_diagonal(sims, -10**6)
    is_hit = labels[None, :] == labels[:, None]
    for k in ks:
        # Items strictly better than the k-th best are in every valid top-k.
        kth = -np.sort(-sims, axis=1)[:, k - 1 : k]
        sure = ((sims > kth) & is_hit).any(axis=1)
        n_tied_slots = k - (sims > kth).sum(axis=1)
        possible = sure | (((sims == kth) & is_hit).any(axis=1))
        forced = sure | (((sims == kth) & ~is_hit).sum(axis=1) < n_tied_slots)
        ours = same[:, :k].any(axis=1)
        assert np.all(ours <= possible) and np.all(ours >= forced), f"K={k}"
    # A duplicated query's unique best match is its differently-labelled twin: a miss.
    assert not same[np.r_[0:50, 150:200], 0].any()
    m = retrieval_metrics(x, labels, ks=ks)
    assert m["recall@1"] == pytest.approx(same[:, 0].mean())


def _clustered(n: int, n_classes: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_classes, d))
    labels = rng.integers(0, n_classes, n)
    x = centres[labels] + 0.8 * rng.standard_normal((n, d))
    return x.astype(np.float32), labels


def _random(n: int, n_classes: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)).astype(np.float32), rng.integers(0, n_classes, n)


def _pml(query, q_labels, reference=None, r_labels=None) -> dict[str, float]:
    calc = AccuracyCalculator(include=tuple(PML_KEYS.values()), k="max_bin_count",
                              device=torch.device("cpu"))
    # PML ranks by L2 on what it is given; normalised inputs make that our cosine order.
    norm = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    if reference is None:
        return calc.get_accuracy(norm(query), q_labels)
    return calc.get_accuracy(norm(query), q_labels, norm(reference), r_labels, False)


@pytest.mark.parametrize("make", [_random, _clustered], ids=["random", "clustered"])
def test_all_vs_all_matches_pml(make):
    x, labels = make(500, 20, 32, seed=5)
    labels[:3] = [100, 101, 102]  # three singleton classes: lone queries, excluded by both
    ours = retrieval_metrics(x, labels)
    theirs = _pml(x, labels)
    for key, pml_key in PML_KEYS.items():
        assert ours[key] == pytest.approx(theirs[pml_key], abs=1e-6), key
    assert (ours["num_queries"], ours["num_excluded_queries"]) == (497.0, 3.0)


@pytest.mark.parametrize("make", [_random, _clustered], ids=["random", "clustered"])
def test_query_vs_gallery_matches_pml(make):
    x, labels = make(700, 20, 32, seed=6)
    query, q_labels, gallery, g_labels = x[:300], labels[:300], x[300:], labels[300:]
    q_labels[:4] = 55  # a class the gallery lacks: lone queries
    ours = retrieval_metrics(query, q_labels, gallery, g_labels, ks=(1, 10, 20))
    theirs = _pml(query, q_labels, gallery, g_labels)
    for key, pml_key in PML_KEYS.items():
        assert ours[key] == pytest.approx(theirs[pml_key], abs=1e-6), key
    assert ours["num_excluded_queries"] == 4.0


def test_backends_give_the_same_metrics():
    x, labels = _clustered(500, 20, 32, seed=7)
    faiss_m = retrieval_metrics(torch.from_numpy(x), torch.from_numpy(labels), ks=(1, 4))
    torch_m = retrieval_metrics(x, labels, ks=(1, 4), backend="torch")
    assert faiss_m == pytest.approx(torch_m, abs=1e-12)


def test_search_is_wide_enough_for_r_and_capped_by_reference_size():
    labels = np.r_[np.zeros(30, int), np.arange(1, 11)]
    x, _ = _random(40, 1, 8, seed=8)
    assert retrieve(x, labels, k=4).k == 29  # max R = 30 - 1 beats max(ks) = 4
    assert retrieve(x, labels, k=1000).k == 39  # at most every other reference
    m = retrieval_metrics(x, labels, ks=(1, 1000))
    assert m["recall@1000"] == 1.0  # every usable query finds its class somewhere


def test_nmi_on_separated_clusters():
    rng = np.random.default_rng(9)
    centres = np.eye(8, 16) * 10
    labels = np.repeat(np.arange(8), 40)
    x = (centres[labels] + 0.1 * rng.standard_normal((320, 16))).astype(np.float32)
    m = retrieval_metrics(x, labels, metric_set=MetricSet(nmi=True))
    assert m["nmi"] == pytest.approx(1.0, abs=1e-6)
    assert m["recall@1"] == 1.0 and m["map@r"] == 1.0


def test_retrieve_result_and_argument_checks():
    x, labels = _random(50, 5, 8, seed=10)
    result = retrieve(x[:20], labels[:20], x[20:], labels[20:], k=3)
    assert result.indices.shape == result.similarities.shape == result.neighbour_labels.shape
    np.testing.assert_array_equal(result.neighbour_labels, labels[20:][result.indices])
    assert not result.exclude_self
    with pytest.raises(ValueError, match="without reference_labels"):
        retrieve(x, labels, reference=x)
    with pytest.raises(ValueError, match="query_labels must have shape"):
        retrieve(x, labels[:-1])

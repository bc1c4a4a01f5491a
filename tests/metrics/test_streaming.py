"""Metrics streamed over query chunks: the numbers of a straightforward whole-matrix
reference, and a peak memory that follows the chunk, not the number of queries."""

from __future__ import annotations

import numpy as np
import pytest

from helpers.memory import CLEAR_REFS, peak_rss_growth, traced_peak
from see_dml.metrics import (
    MetricSet,
    evaluate_retrieval,
    knn_search,
    nmi_score,
    retrieve,
    spread_rows,
)


def _reference(query, q_labels, reference, r_labels, ks, backend="faiss", precision_at=(1,),
               map_at=()):
    """Every metric from the whole ``(Q, k)`` search, one query at a time in plain Python
    (the definitions of see_dml.metrics.retrieval's docstring: PML's conventions, OML's
    mAP@K)."""
    exclude_self = reference is None
    ref, ref_labels = (query, q_labels) if exclude_self else (reference, r_labels)
    counts = np.array([(ref_labels == lab).sum() - exclude_self for lab in q_labels])
    width = min(max(*ks, *precision_at, *map_at, counts.max()), len(ref) - exclude_self)
    _, idx = knn_search(query, ref, int(width), exclude_self=exclude_self, backend=backend)
    per_query = []
    for i, lab in enumerate(q_labels):
        r = int(counts[i])
        if r == 0:
            continue
        same = [ref_labels[j] == lab for j in idx[i]]
        first = same.index(True) if True in same else len(same)
        ap = sum(sum(same[:n + 1]) / (n + 1) for n in range(r) if same[n]) / r
        precision = [sum(same[:k]) / min(k, len(same)) for k in precision_at]
        maps = [sum(sum(same[:n + 1]) / (n + 1) for n in range(min(k, len(same))) if same[n])
                / min(k, len(same), r) for k in map_at]
        per_query.append((first, sum(same[:r]) / r, ap, *precision, *maps))
    first, rprec, ap, *rest = (np.array(c, dtype=float) for c in zip(*per_query, strict=True))
    out = {f"recall@{k}": float(np.mean(first < k)) for k in ks}
    out |= {f"precision@{k}": float(np.mean(v)) for k, v in zip(precision_at, rest)}
    out |= {f"map@{k}": float(np.mean(v)) for k, v in zip(map_at, rest[len(precision_at):])}
    out |= {"r_precision": float(np.mean(rprec)), "map@r": float(np.mean(ap)),
            "num_queries": float(len(first)),
            "num_excluded_queries": float(len(q_labels) - len(first))}
    return out


def _data(n, n_classes, d, seed, ties=False):
    rng = np.random.default_rng(seed)
    if ties:  # +-1/8 coordinates: exact float32 cosines, many exact ties and duplicates
        x = rng.choice([-0.125, 0.125], size=(n, d)).astype(np.float32)
        x[n // 2:n // 2 + n // 10] = x[:n // 10]
    else:
        x = rng.standard_normal((n, d)).astype(np.float32)
    labels = rng.integers(0, n_classes, n)
    labels[:3] = [1000, 1001, 1002]  # lone queries: excluded from every metric
    return x, labels


@pytest.mark.parametrize("ties", [False, True], ids=["random", "ties"])
@pytest.mark.parametrize("backend", ["faiss", "torch"])
@pytest.mark.parametrize("mode", ["all_vs_all", "query_vs_gallery"])
def test_streamed_metrics_equal_a_whole_matrix_reference(mode, backend, ties):
    x, labels = _data(600, 12, 6 if ties else 16, seed=11, ties=ties)
    ks = (1, 2, 4, 8, 100)
    if mode == "all_vs_all":
        args = (x, labels, None, None)
    else:
        args = (x[:250], labels[:250], x[250:], labels[250:])
    # every metric of the set: Precision@K and mAP@K below, at and beyond max R (~50 here),
    # and at a K the gallery does not have
    precision_at, map_at = (1, 5, 100, 700), (1, 5, 100, 700)
    expected = _reference(*args, ks, backend, precision_at, map_at)
    metric_set = MetricSet(precision_at=precision_at, map_at=map_at)
    for batch_size in (7, 64, None):  # 86 chunks, 10 chunks, one chunk
        metrics, kept = evaluate_retrieval(*args, ks, metric_set=metric_set, backend=backend,
                                           batch_size=batch_size)
        assert metrics.keys() == expected.keys()
        for key, value in expected.items():
            assert metrics[key] == pytest.approx(value, abs=1e-6), (key, batch_size)
    # the kept rows are evenly spaced queries, with the very neighbours of the whole search
    full = retrieve(args[0], args[1], args[2], args[3], k=max(*ks, *precision_at),
                    backend=backend)
    np.testing.assert_array_equal(kept.rows, spread_rows(len(args[0]), 8))
    assert kept.rows[0] == 0 and kept.rows[-1] == len(args[0]) - 1
    assert kept.k == full.k
    if not ties:  # with exact ties, equal scores may be ordered either way
        np.testing.assert_array_equal(kept.indices, full.indices[kept.rows])
    np.testing.assert_allclose(kept.similarities, full.similarities[kept.rows], atol=1e-6)


def test_a_set_without_r_metrics_searches_only_its_ks():
    """Without R-Precision and MAP@R the search is max K wide, not max R: 8 classes of
    ~75 images, Recall@1 and Precision@4 read 4 neighbours; the numbers are the reference's
    over the wide search."""
    x, labels = _data(600, 8, 16, seed=5)
    lean = MetricSet(recall_at=(1, 2), precision_at=(4,), map_at=(4,), map_at_r=False,
                     r_precision=False)
    metrics, kept = evaluate_retrieval(x, labels, metric_set=lean, batch_size=64)
    assert kept.k == 4
    expected = _reference(x, labels, None, None, (1, 2), precision_at=(4,), map_at=(4,))
    assert set(metrics) == {"recall@1", "recall@2", "precision@4", "map@4", "num_queries",
                            "num_excluded_queries"}
    for key, value in metrics.items():
        assert value == pytest.approx(expected[key], abs=1e-9), key


def test_nmi_is_part_of_the_set():
    """``nmi`` in the set: the k-means NMI of the query and reference rows together, in the
    same call as the kNN metrics."""
    x, labels = _data(300, 6, 16, seed=3)
    metrics, _ = evaluate_retrieval(x[:100], labels[:100], x[100:], labels[100:], (1,),
                                    metric_set=MetricSet(nmi=True))
    assert metrics["nmi"] == nmi_score(x, labels, seed=0)
    assert "nmi" not in evaluate_retrieval(x, labels, ks=(1,))[0]


def test_streamed_peak_follows_the_chunk_not_the_queries():
    """8,000 queries in 8 classes: R ~ 1,000, so the search keeps ~1,000 neighbours each.
    The whole result is ~8,000 x 1,000 x 20 bytes; streamed in chunks of 128 queries, the
    peak numpy allocation stays within a bound of chunk x width plus O(Q), and far under
    the whole result's."""
    rng = np.random.default_rng(12)
    n, d, chunk = 8000, 8, 128
    x = rng.standard_normal((n, d)).astype(np.float32)
    labels = rng.integers(0, 8, n)
    width = int(np.bincount(labels).max()) - 1
    streamed = traced_peak(lambda: evaluate_retrieval(x, labels, ks=(1, 4), batch_size=chunk))
    whole = traced_peak(lambda: retrieve(x, labels, k=4, batch_size=chunk))
    # per chunk element: similarities, indices, labels, hits and the float64 AP@R scratch
    bound = 64 * chunk * (width + 1) + 64 * n + 2 * x.nbytes
    assert streamed < bound, (streamed, bound)
    assert whole > n * width * 12  # the old path holds (Q, k) similarities and indices
    assert streamed * 5 < whole


@pytest.mark.skipif(not CLEAR_REFS.exists(), reason="needs Linux /proc")
def test_nmi_kmeans_at_many_classes_stays_linear():
    """k-means with thousands of clusters (SOP's test set has 11,316: faiss takes 72 s and
    67 MB above its 30 MB of embeddings, measured): faiss assigns points in blocks, so no
    (points x clusters) matrix is held; here 12,000 x 2,000 would be 96 MB of float32."""
    rng = np.random.default_rng(13)
    labels = np.repeat(np.arange(2000), 6)
    x = (rng.standard_normal((2000, 16))[labels]
         + 0.1 * rng.standard_normal((12_000, 16))).astype(np.float32)
    scores = []
    grown = peak_rss_growth(lambda: scores.append(nmi_score(x, labels)))
    assert 0.9 < scores[0] <= 1.0
    assert grown < 48 * 2**20, grown

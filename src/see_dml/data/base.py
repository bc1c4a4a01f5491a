"""What every dataset of the framework shares: splits, image loading, class-held-out validation.

A dataset module (``cub.py``, ``cars.py``, ...) only knows where its files are and how the
field splits them; it returns :class:`Split` objects. Loading images, remapping labels and
carving a validation split out of the training classes live here, once.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from see_dml.runtime.errors import DatasetCountError, DatasetNotFoundError, UnreadableImageError

log = logging.getLogger(__name__)

EvalProtocol = Literal["all_vs_all", "query_gallery"]
OnError = Literal["fail", "skip"]


def missing_dataset_message(name: str, root: Path, missing: Sequence[Path | str], layout: str,
                            url: str, hint: str = "") -> str:
    """The error text for a missing or incomplete dataset: where, what, and where to get it.

    ``hint`` is an extra line for what the loader could tell (say, the files one folder down).
    """
    missing_txt = "\n".join(f"  - {m}" for m in missing)
    return (
        f"{name}: dataset not found or incomplete at '{root}'.\n"
        f"Missing:\n{missing_txt}\n"
        f"Expected layout under dataset.root:\n{layout.rstrip()}\n"
        f"Official download: {url}\n"
        + (f"{hint.rstrip()}\n" if hint else "")
        + "Point the config at it with dataset.root=/path/to/it (or paths.data_dir=...)."
    )


@dataclass(frozen=True)
class Split:
    """One split of a dataset.

    Attributes:
        items: image file paths (``N`` entries), or an in-memory ``uint8`` array
            ``(N, H, W)`` / ``(N, H, W, C)``.
        labels: ``(N,)`` int64 class ids as the dataset numbers them (not remapped).
        name: split name, for messages.
    """

    items: Sequence[Path] | np.ndarray
    labels: np.ndarray
    name: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        labels = np.asarray(self.labels, dtype=np.int64)
        object.__setattr__(self, "labels", labels)
        if len(self.items) != len(labels):
            raise ValueError(
                f"split '{self.name}': {len(self.items)} items but {len(labels)} labels"
            )

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def classes(self) -> np.ndarray:
        return np.unique(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, mask: np.ndarray, name: str | None = None) -> Split:
        """The items where ``mask`` (bool ``(N,)``) is true."""
        idx = np.flatnonzero(mask)
        items = self.items[idx] if isinstance(self.items, np.ndarray) else [self.items[int(i)]
                                                                            for i in idx]
        return Split(items, self.labels[idx], name or self.name, dict(self.meta))

    def with_contiguous_labels(self) -> Split:
        """Same items with labels remapped to ``0..C-1`` (what proxy and softmax losses need)."""
        _, inverse = np.unique(self.labels, return_inverse=True)
        return Split(self.items, inverse.astype(np.int64), self.name, dict(self.meta))

    def summary(self) -> dict[str, int]:
        return {"images": len(self), "classes": self.num_classes}


def hold_out_classes(train: Split, fraction: float, seed: int) -> tuple[Split, Split | None]:
    """Move a random ``fraction`` of the training *classes* into a validation split.

    The DML protocol is class-disjoint, so checkpoint selection must be too: the validation
    classes are never trained on and never overlap the test classes. ``fraction=0`` gives
    the papers' protocol (no validation split).
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"dataset.val_fraction must be in [0, 1), got {fraction}")
    if fraction == 0.0:
        return train, None
    classes = train.classes
    n_val = max(1, int(round(len(classes) * fraction)))
    if n_val >= len(classes):
        raise ValueError(
            f"dataset.val_fraction={fraction} leaves no training class "
            f"({len(classes)} classes in the train split)"
        )
    rng = np.random.default_rng(seed)
    val_classes = rng.choice(classes, size=n_val, replace=False)
    is_val = np.isin(train.labels, val_classes)
    return train.subset(~is_val, "train"), train.subset(is_val, "val")


def class_folds(classes: np.ndarray, folds: int, seed: int = 0) -> list[np.ndarray]:
    """The ``folds`` class-disjoint folds of ``classes`` that cover them: the classes
    shuffled by ``seed`` and cut into ``folds`` parts of sizes differing by at most one (each
    sorted). The same ``classes`` and ``seed`` give the same folds in every run, whatever its
    training seed: the K runs of a k-fold validation see one partition."""
    classes = np.unique(np.asarray(classes))
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
        raise ValueError(f"dataset.folds must be an integer >= 2, got {folds!r}")
    if folds > len(classes):
        raise ValueError(f"dataset.folds={folds} is more than the {len(classes)} training "
                         "classes: every fold needs a class")
    order = np.random.default_rng(seed).permutation(classes)
    return [np.sort(part) for part in np.array_split(order, folds)]


def fold_split(train: Split, folds: int, fold: int, seed: int = 0) -> tuple[Split, Split]:
    """``(train, val)``: fold ``fold`` of :func:`class_folds` of the training classes as the
    validation classes, the other ``folds - 1`` folds as the training classes (the k-fold
    validation of Musgrave et al., "A Metric Learning Reality Check", 2020)."""
    if isinstance(fold, bool) or not isinstance(fold, (int, np.integer)) or not (
            0 <= fold < folds):
        raise ValueError(f"dataset.fold must be an integer in [0, {folds}) for "
                         f"dataset.folds={folds}, got {fold!r}")
    val_classes = class_folds(train.classes, folds, seed)[fold]
    is_val = np.isin(train.labels, val_classes)
    return train.subset(~is_val, "train"), train.subset(is_val, "val")


def load_image(path: Path | str, mode: str = "RGB") -> Image.Image:
    """Open and decode one image, naming the file when it cannot be read."""
    try:
        with Image.open(path) as img:
            return img.convert(mode)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise UnreadableImageError(f"cannot read image '{path}': {err}") from err


class RetrievalDataset(Dataset):
    """A :class:`Split` as a torch dataset of ``(image, label, index)``.

    The index lets evaluation check that it saw every sample exactly once, also under DDP
    where the distributed sampler pads the last batch with repeats.

    With ``on_error="skip"`` an unreadable file is logged once by path and counted in
    ``skipped``. An evaluation split drops it: its item comes with the index ``-1 - index``
    (:func:`skipped_rows`; the image is a stand-in of its class, to fill the batch), and
    whoever collects the embeddings leaves that row out and counts it, so no image is
    scored twice and no path labels another image's embedding. A training split
    (``substitute=True``) trains on the next readable image of the same class instead.
    With ``"fail"`` it raises :class:`UnreadableImageError` naming the file.
    """

    def __init__(self, split: Split, transform: Callable | None = None, image_mode: str = "RGB",
                 on_error: OnError = "fail", substitute: bool = False) -> None:
        if on_error not in ("fail", "skip"):
            raise ValueError(f"dataset.on_error must be 'fail' or 'skip', got '{on_error}'")
        self.substitute = substitute
        self.split = split
        self.transform = transform
        self.image_mode = image_mode
        self.on_error = on_error
        self.skipped: set[int] = set()
        self._by_class: dict[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.split)

    @property
    def labels(self) -> np.ndarray:
        return self.split.labels

    def _load(self, index: int) -> Image.Image:
        items = self.split.items
        if isinstance(items, np.ndarray):
            return Image.fromarray(items[index]).convert(self.image_mode)
        return load_image(items[index], self.image_mode)

    def _fallback_indices(self, index: int) -> np.ndarray:
        if self._by_class is None:
            order = np.argsort(self.labels, kind="stable")
            bounds = np.flatnonzero(np.diff(self.labels[order])) + 1
            self._by_class = {int(self.labels[g[0]]): g for g in np.split(order, bounds)}
        same = self._by_class[int(self.labels[index])]
        return np.roll(same, -int(np.searchsorted(same, index, sorter=None)) - 1)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | Image.Image, int, int]:
        """``(image, label, index)``: the image through ``transform`` (a tensor with the
        framework's transforms), or the PIL image when the dataset has no transform."""
        try:
            image = self._load(index)
        except UnreadableImageError as err:
            if self.on_error == "fail":
                raise UnreadableImageError(
                    f"{err}. Find every such file with python -m see_dml.data.check "
                    "dataset=<the same> (and replace them), or set dataset.on_error=skip to "
                    "leave such images out of evaluation (training takes the class's next "
                    "image instead)") from err
            image = self._load_replacement(index)
            if not self.substitute:  # an evaluation split: the row is dropped, not scored
                sample = image if self.transform is None else self.transform(image)
                return sample, int(self.labels[index]), -1 - index
        sample = image if self.transform is None else self.transform(image)
        return sample, int(self.labels[index]), index

    def _load_replacement(self, index: int) -> Image.Image:
        """``on_error=skip``: the next readable image of the class of ``index``, whose own
        file could not be read (counted in :attr:`skipped`, logged once)."""
        if index not in self.skipped:
            log.warning("skipping unreadable image %s", self.split.items[index])
            self.skipped.add(index)
        for other in self._fallback_indices(index):
            if other == index or other in self.skipped:
                continue
            try:
                return self._load(int(other))
            except UnreadableImageError:
                self.skipped.add(int(other))
        raise UnreadableImageError(
            f"every image of class {self.labels[index]} is unreadable "
            f"(first: '{self.split.items[index]}')"
        ) from None


def skipped_rows(indices: Any) -> Any:
    """Which rows of a batch's (or a split's) ``indices`` are images that
    ``on_error=skip`` dropped from an evaluation split (their index is ``-1 - index``): a
    bool tensor or array of the same shape."""
    return indices < 0


class DatasetSource(ABC):
    """Where a dataset's files are and how the field splits them.

    Subclasses set the class attributes and implement :meth:`load_splits`. The splits it
    returns are ``train`` and ``test`` (all-vs-all datasets) or ``train``, ``query`` and
    ``gallery`` (query-vs-gallery datasets); :meth:`splits` adds ``val`` (held-out training
    classes) when ``val_fraction > 0``.

    Args:
        root: the dataset's folder, as the official download unpacks.
        val_fraction: share of training classes held out for checkpoint selection.
        seed: seed of the validation class draw.
        strict_counts: insist on the official image/class counts.
        on_error: unreadable image policy, ``fail`` or ``skip``.
        recall_ks: the Ks of Recall@K reported for this dataset (default: the field's).
        folds: ``K`` for class-disjoint k-fold validation: the training classes (with a
            dataset's fixed validation classes, those too) cut into ``K`` folds
            (:func:`class_folds`), fold ``fold`` the validation classes, the others trained
            on; ``val_fraction`` must then be 0. None: one draw by ``val_fraction``.
        fold: which fold validates, ``0..K-1``.
        fold_seed: seed of the fold partition (fixed, so that the ``K`` runs, whatever their
            training seed, share one partition).
    """

    name: str = "dataset"
    eval_protocol: EvalProtocol = "all_vs_all"
    default_recall_ks: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    image_mode: str = "RGB"
    #: ``natural``: photos (RandomResizedCrop + flip); ``digits``: small grey images.
    image_kind: str = "natural"
    #: official counts ``{split: {"images": N, "classes": C}}``, checked when strict.
    expected_counts: dict[str, dict[str, int]] = {}
    #: official download page, named when the files are missing.
    download_url: str = ""
    #: the folder tree expected under ``root`` (a few lines), named when files are missing.
    layout: str = ""

    def __init__(self, root: str | Path | None = None, val_fraction: float = 0.0, seed: int = 0,
                 strict_counts: bool = True, on_error: OnError = "fail",
                 recall_ks: Sequence[int] | None = None, folds: int | None = None,
                 fold: int | None = None, fold_seed: int = 0) -> None:
        self.root = Path(root).expanduser() if root is not None else None
        self.folds = None if folds is None else folds
        self.fold = 0 if fold is None else fold
        self.fold_seed = int(fold_seed)
        if folds is not None:
            if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
                raise ValueError(f"dataset.folds must be an integer >= 2 (or null), got "
                                 f"{folds!r}")
            if float(val_fraction) > 0:
                raise ValueError(
                    f"dataset.folds={folds} chooses the validation classes (fold "
                    f"dataset.fold of the training classes); set dataset.val_fraction=0 "
                    f"(got {val_fraction})")
            if isinstance(self.fold, bool) or not isinstance(self.fold, int) or not (
                    0 <= self.fold < folds):
                raise ValueError(f"dataset.fold must be an integer in [0, {folds}) for "
                                 f"dataset.folds={folds}, got {fold!r}")
        elif fold is not None:
            raise ValueError(f"dataset.fold={fold} needs dataset.folds=K (K >= 2)")
        self.val_fraction = float(val_fraction)
        self.seed = int(seed)
        self.strict_counts = bool(strict_counts)
        self.on_error = on_error
        self.recall_ks = tuple(int(k) for k in (recall_ks or self.default_recall_ks))
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"dataset.val_fraction must be in [0, 1), got {val_fraction}")
        if on_error not in ("fail", "skip"):
            raise ValueError(f"dataset.on_error must be 'fail' or 'skip', got '{on_error}'")
        self._splits: dict[str, Split] | None = None

    @abstractmethod
    def load_splits(self) -> dict[str, Split]:
        """Read the index files and return the official splits (no validation split)."""

    def check_counts(self, splits: dict[str, Split]) -> None:
        """Compare with :attr:`expected_counts`; raise when strict, log otherwise."""
        problems = []
        for split_name, expected in self.expected_counts.items():
            if split_name not in splits:
                continue
            got = splits[split_name].summary()
            for key, value in expected.items():
                if got[key] != value:
                    problems.append(f"{split_name}: {got[key]} {key}, expected {value}")
        if not problems:
            return
        msg = (f"{self.name} at '{self.root}': counts differ from the official ones: "
               + "; ".join(problems))
        if self.strict_counts:
            raise DatasetCountError(
                msg + ". For a subset of the data set dataset.strict_counts=false."
            )
        log.info("%s (dataset.strict_counts=false, going on)", msg)

    def splits(self) -> dict[str, Split]:
        """All splits, with ``val`` carved out of ``train`` when ``val_fraction > 0``."""
        if self._splits is None:
            splits = self.load_splits()
            self.check_counts(splits)
            if self.folds is not None:
                self._splits = self._fold_splits(splits)
                return self._splits
            if "val" in splits:  # the dataset defines its own validation classes
                if self.val_fraction > 0:
                    raise ValueError(
                        f"{self.name} has fixed validation classes; "
                        f"set dataset.val_fraction=0 (got {self.val_fraction})"
                    )
                self._splits = splits
                return splits
            train, val = hold_out_classes(splits["train"], self.val_fraction, self.seed)
            splits = {**splits, "train": train}
            if val is not None:
                splits["val"] = val
            self._splits = splits
        return self._splits

    def _fold_splits(self, splits: dict[str, Split]) -> dict[str, Split]:
        """``splits`` with ``train`` and ``val`` made by :func:`fold_split` of every
        non-test class (``train``, and a dataset's fixed ``val`` with it)."""
        assert self.folds is not None
        pool = splits["train"]
        if "val" in splits:  # a dataset's own validation classes are training classes too
            fixed = splits["val"]
            if isinstance(pool.items, np.ndarray) and isinstance(fixed.items, np.ndarray):
                items: Sequence[Path] | np.ndarray = np.concatenate([pool.items, fixed.items])
            else:
                items = [*pool.items, *fixed.items]
            pool = Split(items, np.concatenate([pool.labels, fixed.labels]), "train",
                         dict(pool.meta))
        train, val = fold_split(pool, self.folds, self.fold, self.fold_seed)
        return {**splits, "train": train, "val": val}

    # Helpers for datasets read from files (all but the in-memory ones).

    def root_dir(self) -> Path:
        """``dataset.root`` made absolute; :class:`DatasetNotFoundError` when it is not a folder."""
        if self.root is None:
            raise self.root_not_set()
        root = self.root.absolute()
        if not root.is_dir():
            raise self.not_found(root, [root])
        return root

    def root_not_set(self) -> DatasetNotFoundError:
        """The error for a dataset without ``dataset.root``, with the layout it wants."""
        return DatasetNotFoundError(
            f"{self.name}: dataset.root is not set. Expected layout under it:\n"
            f"{self.layout.rstrip()}\nOfficial download: {self.download_url}"
        )

    def not_found(self, root: Path, missing: Sequence[Path | str],
                  hint: str = "") -> DatasetNotFoundError:
        """The error for missing files under ``root``, with this dataset's layout and URL."""
        return DatasetNotFoundError(
            missing_dataset_message(self.name, root, missing, self.layout, self.download_url,
                                    hint)
        )

    def require(self, root: Path, *relpaths: str) -> None:
        """Raise :class:`DatasetNotFoundError` naming every ``root/relpath`` that is missing.

        When a missing entry exists one folder down (the archive unpacked into a folder of
        its own), the message names that folder as the likely ``dataset.root``.
        """
        missing = [rel for rel in relpaths if not (root / rel).exists()]
        if not missing:
            return
        nested = sorted(d for d in root.iterdir() if d.is_dir() and (d / missing[0]).exists())
        hint = ""
        if nested:
            hint = f"Found '{missing[0]}' under '{nested[0]}': set dataset.root={nested[0]}"
        raise self.not_found(root, [root / rel for rel in missing], hint)

    def spot_check(self, root: Path, split: Split, per_end: int = 3) -> None:
        """Check that the first and last ``per_end`` files of ``split`` exist.

        Cheap enough for every load and catches a missing or half-unpacked image folder;
        the full scan (every file decoded) is ``python -m see_dml.data.check``.
        """
        n = len(split.items)
        idx = sorted(set(range(min(per_end, n))) | set(range(max(n - per_end, 0), n)))
        missing = [split.items[i] for i in idx if not Path(split.items[i]).is_file()]
        if missing:
            raise self.not_found(
                root, missing,
                f"The index file lists these {split.name} images but they are not on disk: "
                f"is the image folder fully unpacked? A full scan: "
                f"python -m see_dml.data.check dataset=... dataset.root={root}",
            )

    def make_dataset(self, split: Split, transform: Callable | None = None,
                     train: bool = False) -> RetrievalDataset:
        """``split`` as a :class:`RetrievalDataset` with this source's image mode and
        ``on_error``; ``train``: an unreadable image is replaced, not dropped."""
        return RetrievalDataset(split, transform, self.image_mode, self.on_error,
                                substitute=train)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root='{self.root}', val_fraction={self.val_fraction})"

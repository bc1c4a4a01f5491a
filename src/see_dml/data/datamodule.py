"""One LightningDataModule for every dataset: source + sampler + transforms, from config."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any, Protocol

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler, SequentialSampler

from see_dml.data.base import DatasetSource, RetrievalDataset
from see_dml.data.samplers import ClassBalancedBatchSampler
from see_dml.data.transforms import TransformConfig, build_transforms
from see_dml.runtime.errors import ConfigError

log = logging.getLogger(__name__)


def scheduled_epoch(epoch: int, start: int = 0, every: int = 1) -> bool:
    """Whether epoch ``epoch`` (0-based) is one of ``start``, ``start + every``, ...
    (``test_epochs``: the epochs whose test split is scored)."""
    return epoch >= start and (epoch - start) % every == 0


class SizedSampler(Protocol):
    """A sampler with a length (torch's ``Sampler`` declares none): what
    :class:`EpochScheduledSampler` wraps."""

    def __iter__(self) -> Iterator[int]: ...

    def __len__(self) -> int: ...


class EpochScheduledSampler(Sampler[int]):
    """``inner``'s indices in the scheduled epochs (:func:`scheduled_epoch`), none in the
    others.

    What Lightning's own loops lack: a validation dataloader that runs only in some epochs.
    Lightning calls :meth:`set_epoch` on every validation sampler before it iterates them
    (with the epochs trained so far), so an unscheduled epoch reads no image at all.
    """

    def __init__(self, inner: SizedSampler, start: int = 0, every: int = 1) -> None:
        self.inner, self.start, self.every = inner, int(start), int(every)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        set_inner_epoch = getattr(self.inner, "set_epoch", None)
        if callable(set_inner_epoch):
            set_inner_epoch(epoch)

    def scheduled(self, epoch: int | None = None) -> bool:
        return scheduled_epoch(self.epoch if epoch is None else epoch, self.start, self.every)

    def __iter__(self) -> Iterator[int]:
        return iter(self.inner) if self.scheduled() else iter(())

    def __len__(self) -> int:
        return len(self.inner)


class RetrievalDataModule(L.LightningDataModule):
    """Train on the source's ``train`` split; evaluate ``val`` and ``test`` (or query/gallery).

    Training labels are remapped to ``0..C-1`` (proxies and classifiers index by them);
    evaluation keeps the dataset's own class ids, which is all retrieval metrics need.

    Args:
        source: the dataset (a :class:`DatasetSource`).
        batch_size: images per batch and rank.
        m_per_class: images per class in a class-balanced batch.
        sampler: ``class_balanced`` (m per class) or ``random`` (plain shuffling).
        eval_batch_size: images per batch when embedding eval splits.
        persistent_workers: keep training workers alive between epochs. Off by default: new
            workers each epoch take their seeds from the main process's random state, which
            checkpoints restore, so a resumed run draws the same augmentations as an unbroken
            one; persistent workers carry their own random state across epochs instead.
        transforms: :class:`TransformConfig` fields.
        mean, std: normalisation; set from the backbone by :meth:`set_normalization`.
        test_every_epoch: also hand the test split(s) to the validation loop, after ``val``
            (:attr:`val_split_names`), so the test classes are scored after every epoch (the
            top-level ``test_every_epoch`` key; for the papers' best-on-test number only).
        test_epochs: ``(start, every)``: with ``test_every_epoch``, the epochs (0-based) in
            which the test split(s) are scored: ``start``, ``start + every``, ...
    """

    def __init__(self, source: DatasetSource, batch_size: int = 60, m_per_class: int = 2,
                 sampler: str = "class_balanced", num_workers: int = 0,
                 eval_batch_size: int = 256, pin_memory: bool = False,
                 persistent_workers: bool = False,
                 transforms: dict[str, Any] | None = None, seed: int = 0,
                 batches_per_epoch: int | None = None,
                 mean: Sequence[float] = (0.5,), std: Sequence[float] = (0.5,),
                 test_every_epoch: bool = False,
                 test_epochs: Sequence[int] = (0, 1)) -> None:
        super().__init__()
        self.source = source
        self.batch_size = batch_size
        self.m_per_class = m_per_class
        self.sampler = sampler
        self.num_workers = num_workers
        self.eval_batch_size = eval_batch_size
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.transform_cfg = TransformConfig(**(transforms or {}))
        native = getattr(source, "native_size", None)
        if native is not None and self.transform_cfg.native_size is None:
            # known before setup: retrieve sizes folder images without loading the dataset
            self.transform_cfg = replace(self.transform_cfg, native_size=tuple(native))
        self.seed = seed
        self.batches_per_epoch = batches_per_epoch
        self.mean, self.std = tuple(mean), tuple(std)
        self.test_every_epoch = test_every_epoch
        self.test_epochs = (int(test_epochs[0]), int(test_epochs[1]))
        self.datasets: dict[str, RetrievalDataset] = {}
        self._train_sampler: ClassBalancedBatchSampler | None = None

    def set_normalization(self, mean: Sequence[float], std: Sequence[float]) -> None:
        channels = 1 if self.source.image_mode == "L" else 3
        self.mean = tuple(mean)[:channels] if len(mean) >= channels else tuple(mean) * channels
        self.std = tuple(std)[:channels] if len(std) >= channels else tuple(std) * channels

    # -- splits ---------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        splits = self.source.splits()
        items = splits["train"].items
        if self.transform_cfg.native_size is None and isinstance(items, np.ndarray):
            self.transform_cfg = replace(self.transform_cfg, native_size=items.shape[1:3])
        train_tf, eval_tf = build_transforms(self.source.image_kind, self.transform_cfg,
                                             self.mean, self.std)
        for name, split in splits.items():
            if name == "train":
                self.datasets[name] = self.source.make_dataset(split.with_contiguous_labels(),
                                                               train_tf, train=True)
            else:
                self.datasets[name] = self.source.make_dataset(split, eval_tf)

    def validate(self) -> None:
        """Fail before training when the training split cannot fill one batch
        (:class:`~see_dml.runtime.errors.ConfigError`: the data keys do not fit this dataset)."""
        if self.sampler == "class_balanced":
            try:
                ClassBalancedBatchSampler(self.datasets["train"].labels, self.batch_size,
                                          self.m_per_class)
            except ValueError as err:
                raise ConfigError(f"{err} ({self.source.name})") from err
            self._warn_small_classes()
        elif len(self.datasets["train"]) < self.batch_size:
            raise ConfigError(f"data.batch_size={self.batch_size} exceeds the "
                              f"{len(self.datasets['train'])} training images")

    def _warn_small_classes(self) -> None:
        """Classes with fewer training images than ``m_per_class`` fill their share of a
        batch by repeating images (the sampler draws them with replacement)."""
        labels = self.source.splits()["train"].labels  # the dataset's own class ids
        classes, counts = np.unique(labels, return_counts=True)
        short = counts < self.m_per_class
        if short.any():
            smallest = int(np.argmin(counts))
            log.warning(
                "data.m_per_class=%d exceeds the training images of %d of %d classes "
                "(smallest: class %s with %d): their batches repeat images. Lower "
                "data.m_per_class to at most %d to avoid it.", self.m_per_class,
                int(short.sum()), len(classes), classes[smallest], counts[smallest],
                counts[smallest])

    @property
    def num_classes(self) -> int:
        """Training classes (after :meth:`setup`)."""
        return self.datasets["train"].split.num_classes

    @property
    def has_val(self) -> bool:
        return "val" in self.datasets

    @property
    def test_split_names(self) -> list[str]:
        if self.source.eval_protocol == "query_gallery":
            return ["query", "gallery"]
        return ["test"]

    @property
    def val_split_names(self) -> list[str]:
        """The splits of the validation loop's dataloaders, in order: ``val`` when there is
        one, then with ``test_every_epoch`` the :attr:`test_split_names`."""
        return (["val"] if self.has_val else []) + (
            self.test_split_names if self.test_every_epoch else [])

    def eval_dataset(self, name: str) -> RetrievalDataset:
        if name not in self.datasets:
            raise KeyError(f"{self.source.name} has no '{name}' split "
                           f"(has: {', '.join(self.datasets)})")
        return self.datasets[name]

    # -- loaders --------------------------------------------------------------------------
    def _world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 1, 0
        return trainer.world_size, trainer.global_rank

    def train_dataloader(self) -> DataLoader:
        dataset = self.datasets["train"]
        world, rank = self._world()
        if self.sampler == "class_balanced":
            self._train_sampler = ClassBalancedBatchSampler(
                dataset.labels, self.batch_size, self.m_per_class, num_replicas=world,
                rank=rank, seed=self.seed, batches_per_epoch=self.batches_per_epoch)
            # A resumed fit builds its first iterator (whose workers prefetch at once) before
            # any epoch-start hook runs, and Lightning sets the epoch of samplers, not of batch
            # samplers: start at the epoch the fit resumes in, or it replays epoch 0's batches.
            # processed, not current_epoch: a checkpoint written at an epoch's end has the
            # epoch processed but not yet counted as completed (Lightning's own sampler epoch).
            trainer = getattr(self, "trainer", None)
            self._train_sampler.set_epoch(
                trainer.fit_loop.epoch_progress.current.processed if trainer is not None else 0)
            return DataLoader(dataset, batch_sampler=self._train_sampler,
                              num_workers=self.num_workers, pin_memory=self.pin_memory,
                              persistent_workers=self._persistent())
        sampler: DistributedSampler | None = (
            DistributedSampler(dataset, world, rank, shuffle=True, seed=self.seed,
                               drop_last=True) if world > 1 else None)
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=sampler is None,
                          sampler=sampler, drop_last=True, num_workers=self.num_workers,
                          pin_memory=self.pin_memory, persistent_workers=self._persistent())

    def _persistent(self) -> bool:
        return self.persistent_workers and self.num_workers > 0

    def eval_dataloader(self, dataset: RetrievalDataset, own_generator: bool = False,
                        epochs: tuple[int, int] | None = None) -> DataLoader:
        """An in-order loader of ``dataset``. ``own_generator``: its iterators draw their
        seed from a generator of their own instead of torch's global one, so iterating it
        leaves the random state of training (augmentations, SEE) as it was. ``epochs``:
        ``(start, every)``, a loader that reads only in those epochs
        (:class:`EpochScheduledSampler`)."""
        world, rank = self._world()
        # Padded with repeats under DDP; evaluation de-duplicates by sample index.
        distributed: DistributedSampler | None = (
            DistributedSampler(dataset, world, rank, shuffle=False) if world > 1 else None)
        sampler: Sampler[int] | None = distributed
        if epochs is not None:
            sampler = EpochScheduledSampler(distributed or SequentialSampler(dataset), *epochs)
        generator = torch.Generator().manual_seed(self.seed) if own_generator else None
        return DataLoader(dataset, batch_size=self.eval_batch_size, shuffle=False,
                          sampler=sampler, num_workers=self.num_workers,
                          pin_memory=self.pin_memory, generator=generator)

    def val_dataloader(self) -> DataLoader | list:
        """``val``'s loader; with ``test_every_epoch`` a list, the test split(s)' loaders
        after it (:attr:`val_split_names`). Every DataLoader iterator draws a seed from the
        global random state: the test loaders draw theirs from their own generators, so a run
        trains the same with the option on as off."""
        val = self.eval_dataloader(self.datasets["val"]) if self.has_val else None
        if not self.test_every_epoch:
            return val if val is not None else []
        tests = [self.eval_dataloader(self.eval_dataset(n), own_generator=True,
                                      epochs=self.test_epochs)
                 for n in self.test_split_names]
        self._test_schedules = [dl.sampler for dl in tests]
        return ([val] if val is not None else []) + tests

    def tests_scheduled(self) -> bool:
        """Whether the validation loop's test loaders read in the epoch Lightning last set
        (``test_epochs``); True when there are none."""
        return all(s.scheduled() for s in getattr(self, "_test_schedules", []))

    def test_dataloader(self) -> list[DataLoader]:
        return [self.eval_dataloader(self.eval_dataset(n)) for n in self.test_split_names]

    def describe(self) -> dict[str, dict[str, int]]:
        """``{split: {"images": N, "classes": C}}`` for every split."""
        return {n: d.split.summary() for n, d in self.datasets.items()}

    def describe_line(self) -> str:
        """:meth:`describe` for people: ``train 5,278 images / 90 classes, val ...``."""
        return ", ".join(f"{name} {s['images']:,} images / {s['classes']:,} classes"
                         for name, s in self.describe().items())


"""Class-balanced batches that work under DDP and mean something per epoch.

pytorch-metric-learning's ``MPerClassSampler`` yields a flat index stream and knows nothing
of ranks, so under DDP each rank would draw its own classes and the gathered batch would no
longer hold m images per class. This sampler draws *global* batches of whole classes from
one seeded stream that every rank computes identically, then gives each rank a disjoint
share of every batch's classes: the all-gathered global batch is exactly class-balanced.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class ClassBalancedBatchSampler(Sampler[list[int]]):
    """Batches of ``batch_size // m_per_class`` classes with ``m_per_class`` images each.

    Args:
        labels: ``(N,)`` class of every training image.
        batch_size: images per batch *on this rank*; the global batch is
            ``batch_size * num_replicas``.
        m_per_class: images per class in a batch; classes with fewer images are sampled
            with replacement.
        num_replicas, rank: DDP world size and this rank (1 and 0 without DDP).
        seed: the draw depends only on ``(seed, epoch)``; call :meth:`set_epoch` every epoch.
        batches_per_epoch: default ``N // global batch``, i.e. one epoch sees about as many
            images as the training set holds.
    """

    def __init__(self, labels: Sequence[int] | np.ndarray, batch_size: int, m_per_class: int,
                 num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 batches_per_epoch: int | None = None) -> None:
        labels = np.asarray(labels)
        if batch_size % m_per_class:
            raise ValueError(
                f"data.batch_size={batch_size} is not a multiple of data.m_per_class={m_per_class}"
            )
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside world of size {num_replicas}")
        self.labels = labels
        self.batch_size = batch_size
        self.m = m_per_class
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.epoch = 0
        self.classes_per_rank = batch_size // m_per_class
        self.classes_per_batch = self.classes_per_rank * num_replicas
        order = np.argsort(labels, kind="stable")
        bounds = np.flatnonzero(np.diff(labels[order])) + 1
        self._groups = np.split(order, bounds)
        self.classes = labels[order][np.r_[0, bounds]] if len(labels) else labels
        if len(self._groups) < self.classes_per_batch:
            raise ValueError(
                f"a batch needs {self.classes_per_batch} classes "
                f"(data.batch_size={batch_size} / data.m_per_class={m_per_class}"
                f" x {num_replicas} ranks) but the training split has {len(self._groups)}"
            )
        global_batch = batch_size * num_replicas
        self.batches_per_epoch = batches_per_epoch or max(1, len(labels) // global_batch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.batches_per_epoch

    def global_batches(self) -> list[np.ndarray]:
        """All ranks' batches of this epoch: ``(classes_per_batch * m,)`` indices each."""
        rng = np.random.default_rng([self.seed, self.epoch])
        n_classes = len(self._groups)
        # Each class's images are consumed in a shuffled cycle so an epoch covers them evenly.
        pools = [rng.permutation(g) for g in self._groups]
        cursor = np.zeros(n_classes, dtype=np.int64)
        class_stream: list[int] = []
        batches = []
        for _ in range(self.batches_per_epoch):
            # The first classes_per_batch distinct classes of the stream. A repeat (where a
            # batch straddles two permutations) would break m per class; it is deferred to
            # the next batch, never dropped, so every class is drawn equally often.
            chosen: list[int] = []
            deferred: list[int] = []
            i = 0
            while len(chosen) < self.classes_per_batch:
                if i == len(class_stream):
                    class_stream.extend(rng.permutation(n_classes).tolist())
                c = class_stream[i]
                (deferred if c in chosen else chosen).append(c)
                i += 1
            class_stream = deferred + class_stream[i:]
            batch = []
            for c in chosen:
                pool = pools[c]
                if len(pool) >= self.m:
                    if cursor[c] + self.m > len(pool):
                        pools[c] = pool = rng.permutation(pool)
                        cursor[c] = 0
                    batch.append(pool[cursor[c]: cursor[c] + self.m])
                    cursor[c] += self.m
                else:
                    batch.append(rng.choice(pool, size=self.m, replace=True))
            batches.append(np.concatenate(batch))
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        share = self.classes_per_rank * self.m
        for batch in self.global_batches():
            yield batch[self.rank * share: (self.rank + 1) * share].tolist()

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.seed = int(state["epoch"]), int(state["seed"])

"""The metric set: which metrics an evaluation computes (the config group ``metrics``), and
the one place that names and orders them for every display.

A :class:`MetricSet` is a config node (``conf/metrics/default.yaml``), so a metric of the
neighbour lists at another K is a config change: ``metrics.precision_at=[10]`` puts
``test/precision@10`` (and ``val/...``) into ``metrics.json`` and into every table.
:func:`see_dml.metrics.evaluate_retrieval` computes the whole set from one streamed kNN
search, as wide as :meth:`MetricSet.width` says.

The displays (the printed results table, ``make_table``'s long layout, the k-fold table,
the progress bar) show the metrics a result holds, in :func:`shown_metrics`'s order, under
:func:`display_name`'s names; none keeps a list of its own.

This module loads nothing heavy (no numpy, torch or faiss): the config checks and the
tables import it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

#: ``recall@K``, ``precision@K``, ``map@K``: the metrics with a K, in display order.
_AT_K = ("recall", "precision", "map")
_AT_K_KEY = re.compile(r"^(recall|precision|map)@(\d+)$")
#: the metrics without a K, in display order after those with one.
_PLAIN = ("map@r", "r_precision", "nmi")
#: ``{metric family or key: display prefix or name}``: the one place displays take names from.
_NAMES = {"recall": "R@", "precision": "P@", "map": "mAP@", "map@r": "MAP@R",
          "r_precision": "RP", "nmi": "NMI"}
#: Metrics that always equal another one, which a display then shows once: Precision@1 is
#: the fraction of queries whose first neighbour is relevant, which Recall@1 is too.
SAME_AS = {"precision@1": "recall@1"}
#: The metrics a run is summarised by: the progress bar's, the final epoch's columns of the
#: results table and the paired differences to a baseline.
HEADLINE = ("recall@1", "map@r")


def metric_rank(key: str) -> tuple[int, int] | None:
    """Where metric ``key`` (unprefixed, ``recall@4``) sorts among the metrics: its family's
    place, then its K; None when ``key`` is not a metric (``num_queries``, ``epoch``)."""
    m = _AT_K_KEY.match(key)
    if m:
        return _AT_K.index(m[1]), int(m[2])
    if key in _PLAIN:
        return len(_AT_K) + _PLAIN.index(key), 0
    return None


def display_name(key: str) -> str:
    """What every table calls metric ``key``: ``recall@1`` -> ``R@1``, ``precision@10`` ->
    ``P@10``, ``map@10`` -> ``mAP@10``, ``map@r`` -> ``MAP@R``, ``r_precision`` -> ``RP``,
    ``nmi`` -> ``NMI``; anything else keeps its key."""
    m = _AT_K_KEY.match(key)
    if m:
        return f"{_NAMES[m[1]]}{m[2]}"
    return _NAMES.get(key, key)


def shown_metrics(keys: Iterable[str]) -> list[str]:
    """The metrics among ``keys`` (unprefixed) that a display shows, in display order
    (Recall@K, Precision@K, mAP@K by K, then MAP@R, R-Precision, NMI); counts and other
    numbers are left out, and so is a metric equal to another one shown (:data:`SAME_AS`)."""
    present = set(keys)
    metrics = [k for k in present if metric_rank(k) is not None
               and SAME_AS.get(k) not in present]
    return sorted(metrics, key=lambda k: metric_rank(k) or (0, 0))


def _ks(name: str, value: Any) -> tuple[int, ...]:
    """``value`` as sorted distinct positive integers, or a ValueError naming ``name``."""
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise ValueError(f"{name}={value!r}: must be a list of positive integers (the Ks)")
    items = list(value)
    if not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in items):
        raise ValueError(f"{name}={items}: must be a list of positive integers (the Ks)")
    return tuple(sorted(set(items)))


@dataclass(frozen=True)
class MetricSet:
    """Which metrics an evaluation computes, all from one kNN search.

    Attributes:
        recall_at: the Ks of Recall@K (the fraction of queries with a relevant item among
            their first K neighbours); None: the dataset's Ks (``dataset.recall_ks``, or
            the dataset's default: 1, 2, 4, 8, ... for CUB, 1, 10, 100, 1000 for SOP).
        precision_at: the Ks of Precision@K, the fraction of the first K neighbours that are
            relevant (Precision@1 equals Recall@1, PML's ``precision_at_1``).
        map_at: the Ks of mAP@K, OML's ``map_top_k`` (see
            :mod:`see_dml.metrics.retrieval`).
        map_at_r: MAP@R (Musgrave et al. 2020).
        r_precision: R-Precision.
        nmi: the NMI of a k-means clustering of the embeddings (as many clusters as
            classes), the clustering metric older papers report; not of the neighbours,
            and costly (k-means), so training scores it on the test split only.

    Lists from a config become sorted tuples of distinct Ks; a K that is not a positive
    integer is a ValueError naming the field.
    """

    recall_at: tuple[int, ...] | None = None
    precision_at: tuple[int, ...] = (1,)
    map_at: tuple[int, ...] = ()
    map_at_r: bool = True
    r_precision: bool = True
    nmi: bool = False

    def __post_init__(self) -> None:
        if self.recall_at is not None:
            object.__setattr__(self, "recall_at", _ks("recall_at", self.recall_at))
        for name in ("precision_at", "map_at"):
            object.__setattr__(self, name, _ks(name, getattr(self, name)))
        for name in ("map_at_r", "r_precision", "nmi"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r}: must be true or false")

    def resolved(self, ks: Sequence[int]) -> MetricSet:
        """This set with the dataset's Recall@K ``ks`` where it leaves them to the data."""
        return self if self.recall_at is not None else replace(self, recall_at=_ks("ks", ks))

    def names(self, ks: Sequence[int] | None = None) -> list[str]:
        """The metrics this set computes (unprefixed, in display order); ``ks`` are the
        Recall@K where :attr:`recall_at` is None (no recall key when both are None)."""
        recall = self.recall_at if self.recall_at is not None else tuple(ks or ())
        return [*(f"recall@{k}" for k in sorted(set(recall))),
                *(f"precision@{k}" for k in self.precision_at),
                *(f"map@{k}" for k in self.map_at),
                *(["map@r"] if self.map_at_r else []),
                *(["r_precision"] if self.r_precision else []),
                *(["nmi"] if self.nmi else [])]

    @property
    def needs_r(self) -> bool:
        """Whether a metric reads each query's first R neighbours (MAP@R, R-Precision)."""
        return self.map_at_r or self.r_precision

    def width(self, max_r: int, available: int) -> int:
        """The neighbours the one search keeps per query: the largest K of any metric, and
        the largest R when MAP@R or R-Precision is on, capped at the ``available``
        references (at least 1). The only place the search width is decided."""
        ks = [*(self.recall_at or ()), *self.precision_at, *self.map_at]
        return max(1, min(max([*ks, max_r if self.needs_r else 0, 1]), available))

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> MetricSet:
        """The set of a run or tool config: its ``metrics`` node (``_target_`` and keys,
        built as Hydra would, with a ValueError naming the key unchanged), or, for a config
        from before that group, the defaults with its old top-level ``nmi`` switch."""
        node = None if cfg is None else cfg.get("metrics")
        if node is None:
            return cls(nmi=bool((cfg or {}).get("nmi", False)))
        from omegaconf import DictConfig, OmegaConf

        plain = OmegaConf.to_container(node, resolve=True) if isinstance(
            node, DictConfig) else node
        if not isinstance(plain, Mapping):
            raise ValueError(f"metrics={plain!r}: must be a mapping of the metric set's keys")
        values = {str(k): v for k, v in plain.items()}
        target = values.pop("_target_", None)
        if target is None:
            return cls(**values)
        from hydra.utils import get_object

        built = get_object(str(target))(**values)
        if not isinstance(built, MetricSet):
            raise ValueError(f"_target_={target} is not a MetricSet")
        return built

"""What ``python -m see_dml.data.check`` checks, as library functions.

:func:`check_source` builds a dataset's splits exactly as training does (index files,
official counts when ``dataset.strict_counts``, the held-out validation classes), decodes
every image, checks that the training classes are disjoint from the evaluation classes, and
returns a :class:`CheckReport`; :func:`format_report` prints it. ``data.download`` runs the
same check on what it unpacked.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from see_dml.data.base import (
    DatasetSource,
    Split,
    hold_out_classes,
)
from see_dml.runtime.errors import DatasetCountError

#: how many unreadable files the report lists by path before summarising the rest.
MAX_LISTED = 50


def verify_image(path: Path | str) -> str | None:
    """Decode one image file; ``None`` when it is readable, else why not.

    JPEGs are decoded at 1/8 scale (``draft``): the entropy-coded data is still read to the
    end, so truncated files are caught, at a fraction of the cost of a full decode.
    ``Image.verify()`` alone would not catch a truncated JPEG.
    """
    try:
        with Image.open(path) as img:
            if img.format == "JPEG":
                img.draft(img.mode, (max(1, img.width // 8), max(1, img.height // 8)))
            img.load()
    except FileNotFoundError:
        return "file not found"
    except Exception as err:  # any failure to decode makes the file unusable; say which
        return f"{type(err).__name__}: {err}"
    return None


def find_unreadable(paths: Sequence[Path], workers: int = 2,
                    progress: bool = True) -> list[tuple[Path, str]]:
    """``(path, reason)`` for every file of ``paths`` that does not decode.

    Decoding releases the GIL, so a thread pool scales with ``workers``.
    """
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        reasons = list(tqdm(pool.map(verify_image, paths), total=len(paths), desc="images",
                            unit="img", disable=None if progress else True, file=sys.stderr))
    return [(p, r) for p, r in zip(paths, reasons) if r is not None]


@dataclass
class CheckReport:
    """What a check found.

    Attributes:
        splits: the splits as training builds them (``train``, ``val``, ``test`` / ``query``,
            ``gallery``).
        problems: reasons the data is unusable (``overlaps`` included); the check fails when
            there is any.
        overlaps: pairs of splits that share classes but must not.
        notes: things worth knowing that do not stop training.
        unreadable: ``(path, reason)`` of every image that does not decode.
        images_verified: whether every image file was decoded.
        images_in_memory: the dataset holds arrays, not files: nothing to decode.
    """

    dataset: str
    splits: dict[str, Split]
    problems: list[str] = field(default_factory=list)
    overlaps: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    images_verified: bool = False
    images_in_memory: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems

    def counts(self) -> dict[str, dict[str, int]]:
        return {name: split.summary() for name, split in self.splits.items()}


def class_overlaps(splits: dict[str, Split]) -> list[str]:
    """Every pair of splits that must be class-disjoint but share classes.

    Query and gallery are the two sides of one evaluation and share their classes by design.
    """
    problems = []
    for a, b in combinations(splits, 2):
        if {a, b} == {"query", "gallery"}:
            continue
        shared = np.intersect1d(splits[a].classes, splits[b].classes)
        if len(shared):
            problems.append(
                f"splits '{a}' and '{b}' share {len(shared)} classes (e.g. {shared[:5].tolist()}):"
                " the zero-shot protocol needs them disjoint"
            )
    return problems


def evaluation_notes(source: DatasetSource, splits: dict[str, Split]) -> list[str]:
    """Queries that can never find a match, which lower Recall@K whatever the model."""
    notes = []
    if "query" in splits and "gallery" in splits:
        orphan = np.setdiff1d(splits["query"].classes, splits["gallery"].classes)
        if len(orphan):
            notes.append(f"{len(orphan)} query classes have no gallery image "
                         f"(e.g. {orphan[:5].tolist()})")
    for name in ("val", "test"):
        if name in splits and source.eval_protocol == "all_vs_all":
            singletons = int((np.bincount(splits[name].labels - splits[name].labels.min()) == 1)
                             .sum())
            if singletons:
                notes.append(f"{singletons} '{name}' classes have a single image (no positive "
                             "for it to retrieve)")
    return notes


def check_source(source: DatasetSource, verify_images: bool = True, workers: int = 2,
                 progress: bool = True) -> CheckReport:
    """Build ``source``'s splits and check them; see the module docstring.

    Raises:
        DatasetNotFoundError: files missing: there is nothing to report on.
    """
    problems = []
    try:
        splits = source.splits()
    except DatasetCountError as err:
        # Wrong counts are a finding, not the end of the check: build the splits as
        # DatasetSource.splits() does, minus the count check, and report what is there.
        problems.append(str(err))
        splits = source.load_splits()
        train, val = hold_out_classes(splits["train"], source.val_fraction, source.seed)
        splits = {**splits, "train": train, **({"val": val} if val is not None else {})}
    # Report in reading order: what is trained on, what selects, what is reported.
    order = ["train", "val", "test", "query", "gallery"]
    splits = dict(sorted(splits.items(), key=lambda kv: (
        order.index(kv[0]) if kv[0] in order else len(order))))
    report = CheckReport(source.name, splits, problems)
    report.overlaps = class_overlaps(splits)
    report.problems += report.overlaps
    report.notes += evaluation_notes(source, splits)
    report.images_in_memory = all(isinstance(s.items, np.ndarray) for s in splits.values())
    if not verify_images or report.images_in_memory:
        return report
    # Every file once, in index order (a file listed in two splits is still one file).
    files = list(dict.fromkeys(Path(p) for s in splits.values()
                               if not isinstance(s.items, np.ndarray) for p in s.items))
    report.unreadable = find_unreadable(files, workers, progress)
    report.images_verified = True
    if report.unreadable:
        first = report.unreadable[0][0]
        msg = f"{len(report.unreadable)} unreadable image(s) (first: {first})"
        if source.on_error == "fail":
            report.problems.append(msg + "; replace them, or set dataset.on_error=skip to train "
                                   "with a substitute image of the same class")
        else:
            report.notes.append(msg + "; dataset.on_error=skip: training substitutes them")
    return report


def format_report(report: CheckReport, source: DatasetSource) -> str:
    """The human-readable part of the output (the JSON line is printed separately)."""
    where = f" at {source.root}" if source.root is not None else ""
    lines = [f"{report.dataset}{where}  (protocol: {source.eval_protocol}, "
             f"Recall@K for K = {list(source.recall_ks)})"]
    for name, split in report.splits.items():
        lines.append(f"  {name:<8} {len(split):>7} images  {split.num_classes:>6} classes")
    groups = list(report.splits)
    if not report.overlaps:
        lines.append(f"  classes disjoint between {', '.join(groups)}"
                     + (" (query/gallery share theirs, as they should)"
                        if "query" in groups else ""))
    if report.images_verified:
        lines.append(f"  unreadable images: {len(report.unreadable)}")
        for path, reason in report.unreadable[:MAX_LISTED]:
            lines.append(f"    {path}: {reason}")
        if len(report.unreadable) > MAX_LISTED:
            lines.append(f"    ... and {len(report.unreadable) - MAX_LISTED} more")
    elif report.images_in_memory:
        lines.append("  images held in memory: no files to decode")
    else:
        lines.append("  images not decoded (check.verify_images=false)")
    lines += [f"  note: {n}" for n in report.notes]
    return "\n".join(lines)

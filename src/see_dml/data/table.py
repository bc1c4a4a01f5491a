"""A dataset of one's own, as a CSV file of images (``dataset=csv``).

One row per image, with the columns

    path    the image file, relative to dataset.root (or absolute)
    label   its class (any text or number: classes are numbered in sorted order)
    split   train | test (the test images search each other), or
            train | query | gallery (the queries search the gallery, as In-Shop)

Extra columns are ignored, so a table written for open-metric-learning (``path``, ``label``,
``split``; its ``is_query`` / ``is_gallery`` with ``split=validation`` are not read) needs
only its split column. The training and test (or query / gallery) classes must be disjoint,
as in the zero-shot protocol; a validation split is carved out of the training classes
(``dataset.val_fraction``), as for the official datasets.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from see_dml.data.base import DatasetSource, EvalProtocol, Split

COLUMNS = ("path", "label", "split")
SPLITS_ALL_VS_ALL = {"train", "test"}
SPLITS_QUERY_GALLERY = {"train", "query", "gallery"}


class CSVTable(DatasetSource):
    """Images listed in a CSV file; see the module docstring for its columns.

    Args:
        csv_path: the CSV file; relative: under ``root``.
    """

    name = "CSVTable"
    download_url = "(your own data: see docs/datasets.md, 'Your own data')"
    layout = """\
<root>/
  images.csv          path,label,split   (split: train | test, or train | query | gallery)
  <the image files the csv names, relative to <root>>
"""

    def __init__(self, root: str | Path | None = None, csv_path: str = "images.csv",
                 **kwargs) -> None:
        kwargs.setdefault("strict_counts", False)  # no official counts to insist on
        super().__init__(root, **kwargs)
        self.csv_path = str(csv_path)
        self.eval_protocol: EvalProtocol = "all_vs_all"  # set from the split column on load

    def load_splits(self) -> dict[str, Split]:
        root = self.root_dir()
        table = Path(self.csv_path).expanduser()
        table = table if table.is_absolute() else root / table
        if not table.is_file():
            raise self.not_found(root, [table])
        with table.open(newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{table}: no column {', '.join(missing)} (has: "
                                 f"{', '.join(reader.fieldnames or [])}; needs: "
                                 f"{', '.join(COLUMNS)})")
            rows = [(line_no, row) for line_no, row in enumerate(reader, 2)]
        if not rows:
            raise ValueError(f"{table}: no rows")
        for line_no, row in rows:
            if not row["path"] or row["label"] in (None, "") or not row["split"]:
                raise ValueError(f"{table}:{line_no}: empty path, label or split")
        names = {row["split"].strip() for _, row in rows}
        if names == SPLITS_ALL_VS_ALL:
            self.eval_protocol = "all_vs_all"
        elif names == SPLITS_QUERY_GALLERY:
            self.eval_protocol = "query_gallery"
        else:
            raise ValueError(
                f"{table}: the split column holds {sorted(names)}; it must hold exactly "
                "train and test, or train, query and gallery")
        classes = sorted({row["label"].strip() for _, row in rows}, key=_natural)
        index = {c: i for i, c in enumerate(classes)}
        splits = {}
        for name in sorted(names):
            chosen = [row for _, row in rows if row["split"].strip() == name]
            items = [_path(root, row["path"]) for row in chosen]
            labels = np.array([index[row["label"].strip()] for row in chosen], dtype=np.int64)
            splits[name] = Split(items, labels, name, {"class_names": classes})
        evaluated = [n for n in splits if n != "train"]
        for name in evaluated:
            shared = np.intersect1d(splits["train"].classes, splits[name].classes)
            if len(shared):
                raise ValueError(
                    f"{table}: {len(shared)} classes are in both 'train' and '{name}' (e.g. "
                    f"{[classes[i] for i in shared[:5]]}): the zero-shot protocol needs the "
                    "training and evaluation classes disjoint")
        for split in splits.values():
            self.spot_check(root, split)
        return splits


def _path(root: Path, value: str) -> Path:
    path = Path(value.strip()).expanduser()
    return path if path.is_absolute() else root / path


def _natural(label: str) -> tuple[int, float | str]:
    """Numbers in numeric order, then text: ``2 < 10 < "cat"``."""
    try:
        return (0, float(label))
    except ValueError:
        return (1, label)

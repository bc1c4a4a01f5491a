"""CUB-200-2011 under the zero-shot protocol: classes 1-100 train, 101-200 test.

The ``train_test_split.txt`` that ships with the dataset is the *classification* split (every
class on both sides) and is deliberately not read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from see_dml.data.base import DatasetSource, Split

#: the last training class; classes above it are the test classes.
LAST_TRAIN_CLASS = 100


def read_id_table(path: Path) -> dict[int, str]:
    """``<int id> <value>`` lines (CUB's ``images.txt`` and ``image_class_labels.txt``)."""
    table: dict[int, str] = {}
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            raise ValueError(f"{path}:{line_no}: expected '<id> <value>', got {line!r}")
        table[int(parts[0])] = parts[1].strip()
    return table


class CUB200(DatasetSource):
    """CUB-200-2011; ``root`` is the ``CUB_200_2011`` folder of the official archive."""

    name = "CUB-200-2011"
    eval_protocol = "all_vs_all"
    default_recall_ks = (1, 2, 4, 8, 16, 32)
    expected_counts = {
        "train": {"images": 5864, "classes": 100},
        "test": {"images": 5924, "classes": 100},
    }
    download_url = "https://data.caltech.edu/records/65de6-vp158"
    layout = """\
CUB_200_2011/
  images.txt                  <image id> <relative path>
  image_class_labels.txt      <image id> <class id 1..200>
  images/
    001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg
    ...
"""

    def load_splits(self) -> dict[str, Split]:
        root = self.root_dir()
        self.require(root, "images.txt", "image_class_labels.txt", "images")
        paths = read_id_table(root / "images.txt")
        classes = read_id_table(root / "image_class_labels.txt")
        unlabelled = sorted(set(paths) - set(classes))
        if unlabelled:
            raise ValueError(
                f"{root / 'image_class_labels.txt'} has no class for {len(unlabelled)} image "
                f"ids of images.txt (first: {unlabelled[:5]})"
            )
        ids = sorted(paths)
        items = [root / "images" / paths[i] for i in ids]
        labels = np.array([int(classes[i]) for i in ids], dtype=np.int64)
        full = Split(items, labels, "all")
        is_train = labels <= LAST_TRAIN_CLASS
        splits = {"train": full.subset(is_train, "train"), "test": full.subset(~is_train, "test")}
        for split in splits.values():
            self.spot_check(root, split)
        return splits

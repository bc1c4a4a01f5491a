"""Stanford Online Products: ``Ebay_train.txt`` (11,318 classes) / ``Ebay_test.txt`` (11,316)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from see_dml.data.base import DatasetSource, Split

HEADER = ["image_id", "class_id", "super_class_id", "path"]


def read_ebay_index(path: Path, root: Path) -> tuple[list[Path], np.ndarray]:
    """One ``Ebay_*.txt``: the header line, then ``image_id class_id super_class_id path``.

    Returns absolute image paths and the ``class_id`` column, in file order.
    """
    lines = path.read_text().splitlines()
    if not lines or lines[0].split() != HEADER:
        got = lines[0] if lines else "an empty file"
        raise ValueError(f"{path}: expected the header '{' '.join(HEADER)}', got {got!r}")
    items: list[Path] = []
    labels: list[int] = []
    for line_no, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 4:
            raise ValueError(f"{path}:{line_no}: expected 4 columns, got {line!r}")
        labels.append(int(parts[1]))
        items.append(root / parts[3])
    return items, np.array(labels, dtype=np.int64)


class StanfordOnlineProducts(DatasetSource):
    """SOP; ``root`` is the ``Stanford_Online_Products`` folder of the official archive."""

    name = "Stanford Online Products"
    eval_protocol = "all_vs_all"
    default_recall_ks = (1, 10, 100, 1000)
    expected_counts = {
        "train": {"images": 59551, "classes": 11318},
        "test": {"images": 60502, "classes": 11316},
    }
    download_url = "https://cvgl.stanford.edu/projects/lifted_struct/"
    layout = """\
Stanford_Online_Products/
  Ebay_train.txt              image_id class_id super_class_id path   (header, then rows)
  Ebay_test.txt
  bicycle_final/111085122871_0.JPG
  cabinet_final/ ... (12 <super class>_final/ folders)
"""

    def load_splits(self) -> dict[str, Split]:
        root = self.root_dir()
        self.require(root, "Ebay_train.txt", "Ebay_test.txt")
        splits = {}
        for split_name, index in (("train", "Ebay_train.txt"), ("test", "Ebay_test.txt")):
            items, labels = read_ebay_index(root / index, root)
            splits[split_name] = Split(items, labels, split_name)
        # The image folders are the 12 super classes: cheap to check all of them.
        folders = {p.parent for split in splits.values() for p in split.items}
        self.require(root, *sorted(str(f.relative_to(root)) for f in folders))
        for split in splits.values():
            self.spot_check(root, split)
        return splits

"""DeepFashion In-Shop Clothes Retrieval: 3,997 training items; 14,218 queries searched
against a 12,612-image gallery (3,985 items, the same on both sides)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from see_dml.data.base import DatasetSource, Split

PARTITION_FILE = "Eval/list_eval_partition.txt"
HEADER = ["image_name", "item_id", "evaluation_status"]
STATUSES = ("train", "query", "gallery")
_ITEM_ID = re.compile(r"^id_(\d+)$")


def item_label(item_id: str) -> int:
    """``id_00000001`` -> ``1``: one number per item, so query and gallery share labels."""
    match = _ITEM_ID.match(item_id)
    if match is None:
        raise ValueError(f"item id {item_id!r} is not of the form 'id_<digits>'")
    return int(match.group(1))


def read_partition(path: Path) -> dict[str, tuple[list[str], list[int]]]:
    """``list_eval_partition.txt``: a count line, a header line, then
    ``image_name item_id evaluation_status`` rows. Returns ``{status: (names, labels)}``."""
    lines = path.read_text().splitlines()
    if len(lines) < 2 or lines[1].split() != HEADER:
        got = lines[1] if len(lines) > 1 else "nothing"
        raise ValueError(f"{path}: line 2 should be the header '{' '.join(HEADER)}', got {got!r}")
    out: dict[str, tuple[list[str], list[int]]] = {s: ([], []) for s in STATUSES}
    for line_no, line in enumerate(lines[2:], 3):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 3 or parts[2] not in out:
            raise ValueError(
                f"{path}:{line_no}: expected '<image_name> <item_id> train|query|gallery', "
                f"got {line!r}"
            )
        names, labels = out[parts[2]]
        names.append(parts[0])
        labels.append(item_label(parts[1]))
    declared = lines[0].strip()
    n_rows = sum(len(names) for names, _ in out.values())
    if declared.isdigit() and int(declared) != n_rows:
        raise ValueError(f"{path}: line 1 declares {declared} images but {n_rows} rows follow")
    return out


class InShop(DatasetSource):
    """In-Shop; ``root`` is the ``In-shop Clothes Retrieval Benchmark`` folder.

    The image names of the partition file start with ``img/``; they are looked up under
    ``root`` and, failing that, under ``root/Img`` (where the official ``Img/img.zip``
    unpacks).
    """

    name = "In-Shop Clothes Retrieval"
    eval_protocol = "query_gallery"
    default_recall_ks = (1, 10, 20, 30, 40, 50)
    expected_counts = {
        "train": {"images": 25882, "classes": 3997},
        "query": {"images": 14218, "classes": 3985},
        "gallery": {"images": 12612, "classes": 3985},
    }
    download_url = "http://mmlab.ie.cuhk.edu.hk/projects/DeepFashion/InShopRetrieval.html"
    layout = """\
In-shop Clothes Retrieval Benchmark/
  Eval/list_eval_partition.txt    count line, header, then: image_name item_id train|query|gallery
  img/WOMEN/Blouses_Shirts/id_00000001/02_1_front.jpg ...   (or Img/img/..., as img.zip unpacks)
"""

    def load_splits(self) -> dict[str, Split]:
        root = self.root_dir()
        self.require(root, PARTITION_FILE)
        partition = read_partition(root / PARTITION_FILE)
        image_base = self._image_base(root, next(iter(partition["train"][0]), "img/"))
        splits = {
            status: Split([image_base / n for n in names], np.array(labels, dtype=np.int64),
                          status)
            for status, (names, labels) in partition.items()
        }
        for split in splits.values():
            self.spot_check(root, split)
        return splits

    def _image_base(self, root: Path, first_name: str) -> Path:
        """The folder the image names are relative to: ``root`` or ``root/Img``."""
        top = Path(first_name).parts[0]
        for base in (root, root / "Img"):
            if (base / top).is_dir():
                return base
        raise self.not_found(root, [root / top, root / "Img" / top],
                             "The image folder (from Img/img.zip) is in neither place.")

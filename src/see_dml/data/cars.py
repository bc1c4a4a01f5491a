"""Cars-196 under the zero-shot protocol: classes 1-98 train, 99-196 test.

Two on-disk layouts are read:

- the official one, ``cars_annos.mat`` + ``car_ims/`` (all 16,185 images in one index);
- torchvision's ``StanfordCars`` one (also the common Kaggle mirror), where the images are
  split into ``cars_train/`` and ``cars_test/`` with one annotation file each. The two halves
  are pooled before the class split.

Either way the ``test`` flag / train-test folders are the *classification* split (every class
on both sides) and play no part in the split made here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io

from see_dml.data.base import DatasetSource, Split

#: the last training class; classes above it are the test classes.
LAST_TRAIN_CLASS = 98

OFFICIAL_FILES = ("cars_annos.mat", "car_ims")
TORCHVISION_FILES = ("devkit/cars_train_annos.mat", "cars_train",
                     "cars_test_annos_withlabels.mat", "cars_test")


def read_annotations(path: Path, fields: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The ``annotations`` struct array of a Cars ``.mat`` file, one ``(N,)`` array per field."""
    mat = scipy.io.loadmat(path, squeeze_me=True)
    if "annotations" not in mat:
        raise ValueError(f"{path}: no 'annotations' struct (keys: {sorted(mat)})")
    annotations = np.atleast_1d(mat["annotations"])
    names = annotations.dtype.names or ()
    absent = [f for f in fields if f not in names]
    if absent:
        raise ValueError(f"{path}: 'annotations' lacks fields {absent} (has {list(names)})")
    return {f: np.atleast_1d(annotations[f]) for f in fields}


class Cars196(DatasetSource):
    """Cars-196 (Stanford Cars); ``root`` holds ``cars_annos.mat`` and ``car_ims/``.

    A torchvision ``StanfordCars`` folder (``devkit/``, ``cars_train/``, ``cars_test/``,
    ``cars_test_annos_withlabels.mat``) or its parent also works.
    """

    name = "Cars-196"
    eval_protocol = "all_vs_all"
    default_recall_ks = (1, 2, 4, 8, 16, 32)
    expected_counts = {
        "train": {"images": 8054, "classes": 98},
        "test": {"images": 8131, "classes": 98},
    }
    download_url = ("https://ai.stanford.edu/~jkrause/cars/car_dataset.html (original host "
                    "often down; mirrors carry the same car_ims.tgz + cars_annos.mat)")
    layout = """\
<root>/                       the official layout
  cars_annos.mat              struct 'annotations': relative_im_path, class (1..196), test, bbox
  car_ims/000001.jpg ...
or torchvision's StanfordCars layout:
<root>/
  devkit/cars_train_annos.mat
  cars_train/00001.jpg ...
  cars_test_annos_withlabels.mat
  cars_test/00001.jpg ...
"""

    def load_splits(self) -> dict[str, Split]:
        root = self.root_dir()
        base = self._torchvision_base(root)
        if base is not None and not (root / "cars_annos.mat").is_file():
            self.require(base, *TORCHVISION_FILES)
            items, labels = self._read_torchvision(base)
        else:
            self.require(root, *OFFICIAL_FILES)
            items, labels = self._read_official(root)
        full = Split(items, labels, "all")
        is_train = labels <= LAST_TRAIN_CLASS
        splits = {"train": full.subset(is_train, "train"), "test": full.subset(~is_train, "test")}
        for split in splits.values():
            self.spot_check(root, split)
        return splits

    @staticmethod
    def _torchvision_base(root: Path) -> Path | None:
        """``root`` or ``root/stanford_cars`` (what torchvision downloads into), if either has
        the devkit."""
        for base in (root, root / "stanford_cars"):
            if (base / "devkit").is_dir():
                return base
        return None

    @staticmethod
    def _read_official(root: Path) -> tuple[list[Path], np.ndarray]:
        ann = read_annotations(root / "cars_annos.mat", ("relative_im_path", "class"))
        items = [root / str(rel) for rel in ann["relative_im_path"]]
        return items, ann["class"].astype(np.int64)

    @staticmethod
    def _read_torchvision(base: Path) -> tuple[list[Path], np.ndarray]:
        items: list[Path] = []
        labels: list[np.ndarray] = []
        for mat, folder in (("devkit/cars_train_annos.mat", "cars_train"),
                            ("cars_test_annos_withlabels.mat", "cars_test")):
            ann = read_annotations(base / mat, ("fname", "class"))
            items += [base / folder / str(fname) for fname in ann["fname"]]
            labels.append(ann["class"].astype(np.int64))
        return items, np.concatenate(labels)

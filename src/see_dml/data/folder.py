"""A dataset of one's own, as a folder per class (``dataset=folder``).

Two layouts, told apart by what ``root`` holds:

- ``root/<class>/<image>``: the classes are split into training and test classes by
  ``test_fraction`` (the last classes in name order by default, as CUB and Cars split theirs;
  ``split_seed`` draws them at random instead);
- ``root/train/<class>/<image>`` and ``root/test/<class>/<image>``: the split is given; a class
  name in both is an error (the zero-shot protocol needs them disjoint).

Class folders are found with torchvision's ``ImageFolder`` rules (``find_classes``,
``make_dataset``, its image extensions); what torchvision lacks, and this adds, is the
class-disjoint split and the checks of the official loaders (missing root, empty classes,
the layout in every message).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from see_dml.data.base import DatasetSource, Split

#: image file suffixes, as torchvision's ImageFolder accepts them
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def class_folders(folder: Path) -> tuple[list[Path], list[str]]:
    """``(image paths, class names)`` of ``folder/<class>/<image>`` in a stable order (class
    name, then file name): torchvision's ``ImageFolder`` discovery."""
    from torchvision.datasets.folder import find_classes, make_dataset

    classes, class_to_idx = find_classes(str(folder))
    samples = make_dataset(str(folder), class_to_idx, extensions=IMG_EXTENSIONS,
                           allow_empty=True)
    return [Path(p) for p, _ in samples], [classes[i] for _, i in samples]


class ClassFolders(DatasetSource):
    """Images in a folder per class; see the module docstring for the two layouts.

    Args:
        test_fraction: share of the classes that are test classes (single-folder layout).
        split_seed: ``None``: the last classes in name order are the test classes; an int:
            drawn at random with this seed.
        eval_protocol: ``all_vs_all`` (the test images search each other).
    """

    name = "ClassFolders"
    download_url = "(your own data: see docs/datasets.md, 'Your own data')"
    layout = """\
<root>/                         either one folder per class (split by dataset.test_fraction)
  <class name>/<image>.jpg
  ...
<root>/                         or the split given
  train/<class name>/<image>.jpg
  test/<class name>/<image>.jpg
"""

    def __init__(self, root: str | Path | None = None, test_fraction: float = 0.5,
                 split_seed: int | None = None, **kwargs) -> None:
        kwargs.setdefault("strict_counts", False)  # no official counts to insist on
        super().__init__(root, **kwargs)
        if not 0.0 < float(test_fraction) < 1.0:
            raise ValueError(f"dataset.test_fraction must be in (0, 1), got {test_fraction}")
        self.test_fraction = float(test_fraction)
        self.split_seed = split_seed

    def load_splits(self) -> dict[str, Split]:
        root = self.root_dir()
        if (root / "train").is_dir() and (root / "test").is_dir():
            splits = {name: self._split(root / name, name) for name in ("train", "test")}
            shared = sorted(set(splits["train"].meta["class_names"])
                            & set(splits["test"].meta["class_names"]))
            if shared:
                raise ValueError(
                    f"{root}: classes {shared[:5]} are in both train/ and test/ "
                    f"({len(shared)} in all): the zero-shot protocol needs them disjoint")
            # one numbering across both: the test classes after the training ones
            offset = int(splits["train"].labels.max()) + 1
            test = splits["test"]
            splits["test"] = Split(test.items, test.labels + offset, "test", test.meta)
        else:
            full = self._split(root, "all")
            classes = full.classes
            n_test = int(round(len(classes) * self.test_fraction))
            if not 0 < n_test < len(classes):
                raise ValueError(
                    f"{root}: {len(classes)} classes cannot be split with "
                    f"dataset.test_fraction={self.test_fraction} (each side needs a class)")
            if self.split_seed is None:
                test_classes = classes[len(classes) - n_test:]
            else:
                rng = np.random.default_rng(int(self.split_seed))
                test_classes = rng.choice(classes, size=n_test, replace=False)
            is_test = np.isin(full.labels, test_classes)
            splits = {"train": full.subset(~is_test, "train"),
                      "test": full.subset(is_test, "test")}
        for split in splits.values():
            self.spot_check(root, split)
        return splits

    def _split(self, folder: Path, name: str) -> Split:
        try:
            paths, names = class_folders(folder)
        except FileNotFoundError as err:  # torchvision: no class folder at all
            raise self.not_found(folder, [folder / "<class name>/<image>"], str(err)) from err
        if not paths:
            raise self.not_found(folder, [folder / "<class name>/<image>"],
                                 f"No image ({', '.join(IMG_EXTENSIONS)}) in its class folders")
        class_names = sorted(set(names))
        index = {c: i for i, c in enumerate(class_names)}
        labels = np.array([index[c] for c in names], dtype=np.int64)
        return Split(paths, labels, name, {"class_names": class_names})

"""Tiny copies of CUB-200-2011, Cars-196, SOP and In-Shop in their official on-disk formats.

The real datasets cannot be downloaded on the test machines, so the loaders are tested on
these: the same index files, the same folder layout, real (32x32) JPEG files. Class ids span
both halves of the official ranges (CUB 1..n and 101..100+n, Cars 1..n and 99..98+n) so the
zero-shot split rule is exercised, and the classification-split flags that the DML protocol
ignores are written with mixed values.

Every ``make_*`` takes the folder that ``dataset.root`` points at and returns a
:class:`FixtureData` with what it wrote. :func:`make_fixture` writes one under the folder name
its ``conf/dataset/<name>.yaml`` expects, so a test can set ``paths.data_dir`` alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image


@dataclass
class FixtureData:
    """What a fixture wrote.

    Attributes:
        root: the folder to give as ``dataset.root``.
        images: split -> absolute image paths, in the order the loader returns them.
        labels: split -> original class ids, aligned with ``images``.
    """

    root: Path
    images: dict[str, list[Path]] = field(default_factory=dict)
    labels: dict[str, list[int]] = field(default_factory=dict)

    def add(self, split: str, path: Path, label: int) -> None:
        self.images.setdefault(split, []).append(path)
        self.labels.setdefault(split, []).append(label)

    @property
    def counts(self) -> dict[str, dict[str, int]]:
        """``{split: {"images": N, "classes": C}}``, the loader's splits before any ``val``."""
        return {s: {"images": len(self.labels[s]), "classes": len(set(self.labels[s]))}
                for s in self.labels}

    def all_images(self) -> list[Path]:
        return [p for paths in self.images.values() for p in paths]


def write_jpeg(path: Path, rng: np.random.Generator, size: int = 32,
               label: int | None = None) -> None:
    """A small JPEG: a flat random colour plus noise (so it compresses like a photo), or,
    with ``label``, four quadrant colours fixed by the class (a signal a model can learn)
    plus per-image noise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if label is None:
        base = rng.integers(0, 256, size=3)
    else:
        quads = np.random.default_rng(int(label) + 7919).integers(30, 226, size=(2, 2, 3))
        half = (np.arange(size) >= size // 2).astype(int)
        base = quads[half[:, None], half[None, :]]
    noise = rng.integers(-40, 41, size=(size, size, 3))
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG", quality=85)


def _counts(per_class: int | Sequence[int], n: int) -> list[int]:
    """Images of each of ``n`` classes: one number for all, or one per class."""
    if isinstance(per_class, int):
        return [per_class] * n
    if len(per_class) != n:
        raise ValueError(f"per_class lists {len(per_class)} counts for {n} classes")
    return [int(c) for c in per_class]


def corrupt_image(path: Path) -> Path:
    """Overwrite an image with bytes no decoder accepts (the file still exists)."""
    path.write_bytes(b"this is not an image\x00\xff" * 8)
    return path


def truncate_image(path: Path) -> Path:
    """Cut an image to half its bytes: it opens, but decoding runs out of data."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def make_cub(root: Path, n_classes: int = 4, per_class: int | Sequence[int] = 3,
             seed: int = 0, image_size: int = 32, class_signal: bool = False) -> FixtureData:
    """CUB_200_2011 with classes ``1..n_classes`` (train) and ``101..100+n_classes`` (test).

    ``per_class``: images of every class, or one count per class (train classes first);
    ``class_signal``: images coloured by class (:func:`write_jpeg`)."""
    rng = np.random.default_rng(seed)
    out = FixtureData(root)
    classes = [*range(1, n_classes + 1), *range(101, 101 + n_classes)]
    counts = _counts(per_class, len(classes))
    images_txt, labels_txt, split_txt = [], [], []
    image_id = 0
    for cls, n_images in zip(classes, counts, strict=True):
        folder = f"{cls:03d}.Bird_{cls}"
        for k in range(n_images):
            image_id += 1
            rel = f"{folder}/Bird_{cls}_{k:04d}_{image_id}.jpg"
            write_jpeg(root / "images" / rel, rng, image_size, cls if class_signal else None)
            images_txt.append(f"{image_id} {rel}")
            labels_txt.append(f"{image_id} {cls}")
            split_txt.append(f"{image_id} {k % 2}")  # classification split: ignored
            out.add("train" if cls <= 100 else "test", root / "images" / rel, cls)
    (root / "images.txt").write_text("\n".join(images_txt) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(labels_txt) + "\n")
    (root / "train_test_split.txt").write_text("\n".join(split_txt) + "\n")
    (root / "classes.txt").write_text(
        "\n".join(f"{i} {c:03d}.Bird_{c}" for i, c in enumerate(classes, 1)) + "\n"
    )
    return out


def _struct_array(rows: list[dict[str, object]]) -> np.ndarray:
    """A MATLAB struct array ``(1, N)`` as ``scipy.io.savemat`` writes it."""
    names = list(rows[0])
    arr = np.zeros((1, len(rows)), dtype=[(n, object) for n in names])
    for i, row in enumerate(rows):
        arr[0, i] = tuple(row[n] for n in names)
    return arr


def make_cars(root: Path, n_classes: int = 3, per_class: int | Sequence[int] = 4,
              seed: int = 0, layout: str = "official", image_size: int = 32,
              class_signal: bool = False) -> FixtureData:
    """Cars-196 with classes ``1..n_classes`` (train) and ``99..98+n_classes`` (test).

    ``layout="official"`` writes ``cars_annos.mat`` + ``car_ims/``; ``"torchvision"`` writes
    torchvision's ``StanfordCars`` folder (``devkit/``, ``cars_train/``, ``cars_test/``).
    Each class has images with ``test`` = 0 and 1, so a loader that used that flag (the
    classification split) would get other split sizes. ``per_class``, ``image_size`` and
    ``class_signal`` as :func:`make_cub`.
    """
    if layout not in ("official", "torchvision"):
        raise ValueError(f"layout must be 'official' or 'torchvision', got {layout!r}")
    rng = np.random.default_rng(seed)
    classes = [*range(1, n_classes + 1), *range(99, 99 + n_classes)]
    rows = []
    for cls, n_images in zip(classes, _counts(per_class, len(classes)), strict=True):
        for k in range(n_images):
            x1, y1 = (int(v) for v in rng.integers(0, 10, size=2))
            rows.append({"bbox_x1": np.uint16(x1), "bbox_y1": np.uint16(y1),
                         "bbox_x2": np.uint16(x1 + 20), "bbox_y2": np.uint16(y1 + 20),
                         "class": np.uint8(cls), "test": np.uint8(k % 2)})
    # The official index is not sorted by class: interleave to keep the loader honest.
    order = rng.permutation(len(rows))
    rows = [rows[i] for i in order]
    class_names = np.array([f"Car Model {c}" for c in range(1, 197)], dtype=object)
    out = FixtureData(root)
    root.mkdir(parents=True, exist_ok=True)
    if layout == "official":
        for i, row in enumerate(rows, 1):
            row["relative_im_path"] = f"car_ims/{i:06d}.jpg"
            write_jpeg(root / row["relative_im_path"], rng, image_size,
                       int(row["class"]) if class_signal else None)
        scipy.io.savemat(root / "cars_annos.mat",
                         {"annotations": _struct_array(rows), "class_names": class_names})
        for row in rows:
            cls = int(row["class"])
            out.add("train" if cls <= 98 else "test", root / row["relative_im_path"], cls)
        return out
    (root / "devkit").mkdir(exist_ok=True)
    scipy.io.savemat(root / "devkit" / "cars_meta.mat", {"class_names": class_names})
    for flag, mat, folder in ((0, "devkit/cars_train_annos.mat", "cars_train"),
                              (1, "cars_test_annos_withlabels.mat", "cars_test")):
        part = [{k: v for k, v in r.items() if k != "test"} for r in rows if r["test"] == flag]
        for i, row in enumerate(part, 1):
            row["fname"] = f"{i:05d}.jpg"
            write_jpeg(root / folder / row["fname"], rng, image_size,
                       int(row["class"]) if class_signal else None)
            cls = int(row["class"])
            out.add("train" if cls <= 98 else "test", root / folder / row["fname"], cls)
        scipy.io.savemat(root / mat, {"annotations": _struct_array(part)})
    return out


SOP_SUPER_CLASSES = ("bicycle", "cabinet", "chair")


def make_sop(root: Path, n_classes: int | tuple[int, int] = 4,
             per_class: int | Sequence[int] = 2, seed: int = 0, image_size: int = 32,
             class_signal: bool = False) -> FixtureData:
    """Stanford_Online_Products: ``n_classes`` products per split (or ``(train, test)``
    numbers), numbered as the official files do (train ``1..n``, test ``n+1..``), spread
    over a few ``<super>_final/`` folders. ``per_class``, ``image_size`` and
    ``class_signal`` as :func:`make_cub`."""
    rng = np.random.default_rng(seed)
    out = FixtureData(root)
    n_train, n_test = (n_classes, n_classes) if isinstance(n_classes, int) else n_classes
    counts = iter(_counts(per_class, n_train + n_test))
    image_id = 0
    for split, index, first, n in (("train", "Ebay_train.txt", 1, n_train),
                                   ("test", "Ebay_test.txt", n_train + 1, n_test)):
        lines = ["image_id class_id super_class_id path"]
        for cls in range(first, first + n):
            super_id = cls % len(SOP_SUPER_CLASSES)
            product = 111085122000 + cls
            for k in range(next(counts)):
                image_id += 1
                rel = f"{SOP_SUPER_CLASSES[super_id]}_final/{product}_{k}.JPG"
                write_jpeg(root / rel, rng, image_size, cls if class_signal else None)
                lines.append(f"{image_id} {cls} {super_id + 1} {rel}")
                out.add(split, root / rel, cls)
        (root / index).write_text("\n".join(lines) + "\n")
    return out


def make_inshop(root: Path, n_train: int = 4, n_test: int = 3, per_item: int = 4, seed: int = 0,
                under_img_folder: bool = False, counts: dict[str, Sequence[int]] | None = None,
                image_size: int = 32, class_signal: bool = False) -> FixtureData:
    """In-shop Clothes Retrieval Benchmark: ``n_train`` training items; ``n_test`` test items,
    each with query and gallery images (the first half of an item's images are queries).

    Item ids interleave train and test (as in the official file), so labels are not
    contiguous. ``under_img_folder`` puts the images under ``Img/`` (as ``Img/img.zip``
    unpacks) instead of directly under ``root``. ``counts`` (``{"train": [...], "query":
    [...], "gallery": [...]}``, images per item; query and gallery of equal length) replaces
    ``n_train``, ``n_test`` and ``per_item``; ``image_size`` and ``class_signal`` as
    :func:`make_cub`.
    """
    if counts is not None:
        n_train, n_test = len(counts["train"]), len(counts["query"])
    rng = np.random.default_rng(seed)
    out = FixtureData(root)
    image_base = root / "Img" if under_img_folder else root
    rows = []
    # Train items take the odd slots, test items the even ones, until one kind runs out.
    kinds = sorted([(2 * i, False) for i in range(n_train)] + [(2 * i + 1, True)
                                                                for i in range(n_test)])
    train_counts = iter(counts["train"] if counts else [per_item] * n_train)
    test_counts = iter(zip(counts["query"], counts["gallery"], strict=True) if counts
                       else [(per_item // 2, per_item - per_item // 2)] * n_test)
    for item, (_, is_test) in enumerate(kinds, 1):
        item_id = f"id_{item:08d}"
        gender, kind = ("WOMEN", "Dresses") if item % 3 else ("MEN", "Denim")
        n_query, n_gallery = next(test_counts) if is_test else (0, next(train_counts))
        for k in range(n_query + n_gallery):
            name = f"img/{gender}/{kind}/{item_id}/{k + 1:02d}_{k % 4 + 1}_front.jpg"
            write_jpeg(image_base / name, rng, image_size, item if class_signal else None)
            status = ("query" if k < n_query else "gallery") if is_test else "train"
            rows.append((name, item_id, status))
            out.add(status, image_base / name, item)
    (root / "Eval").mkdir(parents=True, exist_ok=True)
    # The official file pads its columns with runs of spaces.
    body = [f"{name:<56}{item_id:<16}{status}" for name, item_id, status in rows]
    text = "\n".join([str(len(rows)), "image_name item_id evaluation_status", *body]) + "\n"
    (root / "Eval" / "list_eval_partition.txt").write_text(text)
    return out


#: ``conf/dataset/<name>.yaml`` -> (fixture writer, folder name its ``root`` expects).
FIXTURES = {
    "cub": (make_cub, "CUB_200_2011"),
    "cars": (make_cars, "cars196"),
    "sop": (make_sop, "Stanford_Online_Products"),
    "inshop": (make_inshop, "In-shop Clothes Retrieval Benchmark"),
}


def make_fixture(name: str, data_dir: Path, **kwargs: object) -> FixtureData:
    """Write dataset ``name`` (a ``conf/dataset`` name) under ``data_dir`` where its config
    looks with ``paths.data_dir=data_dir``."""
    maker, folder = FIXTURES[name]
    return maker(Path(data_dir) / folder, **kwargs)

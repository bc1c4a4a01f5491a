"""The images a retrieval names: a split of the checkpoint's dataset, or image files.

``python -m see_dml.retrieve`` (``query=`` / ``gallery=``) and ``python -m see_dml.index``
(``gallery=``) resolve what they are given with :func:`image_files` (cheap, before the model
loads) and :func:`image_set`. Folders are searched recursively; an image inside a class
subfolder (``gallery/cat/001.jpg``) is labelled by its parent folder's name, an image
directly in the folder is unlabelled. Every image, split or file, gets the checkpoint's eval
transform (its dataset's ``image_kind`` / ``image_mode``, the backbone's normalisation).

An image file that cannot be decoded follows the tool's ``on_error`` key, as a dataset's
images follow ``dataset.on_error``: ``fail`` stops before the model loads, naming the file;
``skip`` leaves it out and lists it (:attr:`ImageFiles.unreadable`). A split's images follow
``dataset.on_error``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from see_dml.runtime.errors import ConfigError

if TYPE_CHECKING:
    from PIL import Image

    from see_dml.data.base import RetrievalDataset
    from see_dml.serving.inference import InferenceRun

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
#: The names a dataset's splits may have (``query=test`` means the test split; a folder that
#: is called like one is written ``./test``).
DATASET_SPLITS = ("train", "val", "test", "query", "gallery")

log = logging.getLogger(__name__)


@dataclass
class ImageSet:
    """Images to embed: a dataset split or image files.

    Attributes:
        source: what the user gave (``test``, ``/path/to/folder``).
        dataset: yields ``(image, label, index)`` with the checkpoint's eval transform.
        ids: ``(N,)`` how each image is named in the output: its path, or ``test[12]``.
        labels: ``(N,)`` class names as strings, None where unknown.
        positions: ``(N,)`` where each image is in ``dataset`` (None: ``0..N-1``); fewer
            than the dataset's images after :meth:`keep`.
    """

    source: str
    dataset: RetrievalDataset
    ids: list[str]
    labels: list[str | None]
    positions: list[int] | None = None

    def position(self, i: int) -> int:
        """Where image ``i`` of this set is in :attr:`dataset`."""
        return i if self.positions is None else self.positions[i]

    def keep(self, positions: list[int]) -> ImageSet:
        """The images of ``dataset`` at ``positions`` (what an embedding returned as its
        indices): a split's unreadable images that ``dataset.on_error=skip`` left out are
        not in them, and so not in the set's ids, labels or index rows."""
        if self.positions is None and positions == list(range(len(self.ids))):
            return self
        return ImageSet(self.source, self.dataset, [self.ids[i] for i in positions],
                        [self.labels[i] for i in positions],
                        [self.position(i) for i in positions])

    def display_image(self, i: int) -> Image.Image:
        """The raw image ``i`` (RGB, untransformed) for the grid."""
        from see_dml.evaluation.plots import split_image

        # an unreadable file follows the dataset's on_error, as embedding it did
        return split_image(self.dataset.split.items, self.position(i), "RGB",
                           self.dataset.on_error)

    def index_rows(self) -> list[dict[str, Any]]:
        """One row per image, in order, as a saved index's sidecar records it: ``item``,
        ``label``, and where to find the image again (``split`` and ``position`` for a
        dataset split, ``path`` for a file)."""
        import numpy as np

        is_split = self.source in DATASET_SPLITS
        files = self.dataset.split.items
        rows = []
        for i, (name, label) in enumerate(zip(self.ids, self.labels, strict=True)):
            row: dict[str, Any] = {"item": name, "label": label}
            at = self.position(i)
            if is_split:
                row.update(split=self.source, position=at)
            if not isinstance(files, np.ndarray):
                row["path"] = str(Path(files[at]).resolve())
            rows.append(row)
        return rows


def list_images(path: Path) -> tuple[list[Path], list[str | None]]:
    """Image files under ``path`` (a file or a folder, recursively) and their labels.

    Returns:
        ``(files, labels)``: sorted files; a file in a subfolder is labelled by its parent
        folder's name, a file at the top level (or ``path`` itself) by None.
    """
    if path.is_file():
        return [path], [None]
    files = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in
                   IMAGE_SUFFIXES)
    return files, [f.parent.name if f.parent != path else None for f in files]


def check_location(value: str, key: str) -> Path:
    """``value`` as a path; :class:`ConfigError` naming ``key`` if it is no split or path."""
    path = Path(value).expanduser()
    if value not in DATASET_SPLITS and not path.exists():
        raise ConfigError(f"{key}='{value}' is neither a split ({', '.join(DATASET_SPLITS)}) "
                          "nor an existing image file or folder")
    return path


#: What the ``on_error`` key of retrieve and index may be (as ``dataset.on_error``).
ON_ERROR = ("fail", "skip")


@dataclass
class ImageFiles:
    """The image files ``query=`` / ``gallery=`` names, as :func:`image_files` found them.

    Attributes:
        files: the readable images, sorted (see :func:`list_images`).
        labels: their labels (the class subfolder's name, or None).
        unreadable: ``[{"path": ..., "error": ...}]``, the files left out under
            ``on_error=skip`` (what ``retrieval.json`` and an index's sidecar record).
    """

    files: list[Path]
    labels: list[str | None]
    unreadable: list[dict[str, str]]


def decode_error(file: Path) -> str | None:
    """Why ``file`` cannot be decoded as embedding it would (``ExcType: message``), or None.

    Every pixel is decoded (``load``): ``verify`` reads only a JPEG's headers, so a truncated
    JPEG passed it and failed later, mid-embedding.
    """
    from PIL import Image

    try:
        with Image.open(file) as img:
            img.load()
    except Exception as err:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError...
        return f"{type(err).__name__}: {err}"
    return None


def image_files(value: str, key: str, on_error: str = "fail") -> ImageFiles | None:
    """The image files ``query=`` / ``gallery=`` names and their labels (see
    :func:`list_images`), each decoded once; None for a split name.

    Cheap (PIL, no torch): runs before the model loads, so a typo or a stray file costs
    seconds, and the error is one line naming ``key`` and the file. An unreadable file is a
    :class:`ConfigError` naming the first (and how many) with ``on_error="fail"``; with
    ``"skip"`` it is logged and left out (:attr:`ImageFiles.unreadable`).
    """
    if on_error not in ON_ERROR:
        raise ConfigError(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
    path = check_location(value, key)
    if value in DATASET_SPLITS:
        return None
    files, labels = list_images(path)
    if not files:
        raise ConfigError(f"{key}='{value}' holds no image file "
                          f"({', '.join(sorted(IMAGE_SUFFIXES))})")
    found = ImageFiles([], [], [])
    for file, label in zip(files, labels, strict=True):
        why = decode_error(file)
        if why is None:
            found.files.append(file)
            found.labels.append(label)
        else:
            found.unreadable.append({"path": str(file.resolve()), "error": why})
    if found.unreadable and on_error == "fail":
        first, more = found.unreadable[0], len(found.unreadable) - 1
        raise ConfigError(
            f"{key}: '{first['path']}' is not a readable image ({first['error']})"
            + (f", nor are {more} more of the {len(files)} files" if more else "")
            + ": replace or remove it, or set on_error=skip to leave such files out")
    for bad in found.unreadable:
        log.warning("%s: skipping unreadable image %s (%s), on_error=skip", key, bad["path"],
                    bad["error"])
    if not found.files:
        raise ConfigError(f"{key}='{value}': none of its {len(files)} image files is readable "
                          f"(the first: '{found.unreadable[0]['path']}')")
    return found


def skipped_line(unreadable: dict[str, list[dict[str, str]]], where: str) -> str | None:
    """The line a tool prints after its results when ``on_error=skip`` left files out
    (``unreadable``: ``{key: ImageFiles.unreadable}``), naming where they are listed."""
    counts = [f"{len(bad)} of {key}" for key, bad in unreadable.items() if bad]
    if not counts:
        return None
    return (f"Skipped unreadable images (on_error=skip): {', '.join(counts)}; "
            f"listed in {where}")


def image_set(value: str, key: str, run: InferenceRun,
              files: ImageFiles | None = None) -> ImageSet:
    """Resolve ``query=`` / ``gallery=``: a split name of the checkpoint's dataset, or a path.

    Every image, split or file, gets the checkpoint's eval transform (its dataset's image
    kind, the backbone's normalisation); split labels are the dataset's own class ids.
    ``files``: what :func:`image_files` found for ``value`` (default: look again, with
    ``on_error=fail``).

    Raises:
        ConfigError: naming ``key`` when ``value`` is neither a split nor image files.
    """
    import numpy as np

    from see_dml.data.base import RetrievalDataset, Split
    from see_dml.data.transforms import build_transforms

    value = str(value)
    dm = run.datamodule()
    _, eval_tf = build_transforms(dm.source.image_kind, dm.transform_cfg, dm.mean, dm.std)
    if value in DATASET_SPLITS:
        splits = dm.source.splits()
        if value not in splits:
            raise ConfigError(f"{key}={value}: {dm.source.name} has no '{value}' split "
                              f"(has: {', '.join(splits)}); for a folder write ./{value}")
        split = splits[value]
        ids = ([f"{value}[{i}]" for i in range(len(split))]
               if isinstance(split.items, np.ndarray) else [str(p) for p in split.items])
        dataset = RetrievalDataset(split, eval_tf, dm.source.image_mode, dm.source.on_error)
        return ImageSet(value, dataset, ids, [str(int(v)) for v in split.labels])

    found = files or image_files(value, key)
    if found is None:  # unreachable: a split name returned above
        raise ConfigError(f"{key}='{value}' names no image files")
    # every file decoded in image_files: one that fails now changed since, and is named
    split = Split(found.files, np.zeros(len(found.files), dtype=np.int64), name=key)
    dataset = RetrievalDataset(split, eval_tf, dm.source.image_mode, on_error="fail")
    return ImageSet(str(Path(value).expanduser()), dataset, [str(f) for f in found.files],
                    found.labels)

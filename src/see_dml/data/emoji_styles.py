"""Emoji-Styles as a dataset source: the build (:mod:`see_dml.data.emoji_build`) cached and
split into training and test classes.

Each class is one emoji, each image that emoji as one designer set draws it; classes with
fewer than ``min_styles`` images are dropped and the rest are split in half by a fixed seed,
train and test, the test half searched all-vs-all. How the build matches and filters the
icons: :mod:`see_dml.data.emoji_build`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tarfile
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from see_dml.data.base import DatasetSource, Split
from see_dml.data.cache import cached_arrays
from see_dml.data.emoji_build import (
    BUILD_VERSION,
    FLUENT_SETS,
    NPM_SCOPE,
    VERSION_PATTERN,
    IconSet,
    build_arrays,
    fetch_package,
)

log = logging.getLogger(__name__)


#: the arrays a usable cache file holds.
ARRAY_KEYS = ("images", "labels", "styles", "class_keys", "class_names", "set_names", "report")


class EmojiStyles(DatasetSource):
    """Emoji-Styles, built from ``@iconify-json`` packages on first use and cached.

    Args:
        root: folder of the cache (``emoji_styles_<size>px_<key>.npz``) and the downloaded
            packages (``packages/``); a prebuilt copy of either is used without npm.
        sets: designer set -> exact package version, e.g. ``{"noto": "1.2.9"}``; the order
            is the order of each class's images.
        image_size: rendered side in pixels (part of the cache key).
        min_styles: fewest images (sets) a class needs to be kept.
        split_seed: seed of the train/test class split, fixed apart from the run's ``seed``
            (which draws the validation classes) so that every run tests on the same classes.
    """

    name = "emoji_styles"
    image_kind = "icons"
    default_recall_ks = (1, 2, 4, 8)
    download_url = "the npm registry, by 'npm pack @iconify-json/<set>@<version>' (the build)"
    layout = """\
emoji_styles_<size>px_<key>.npz   the rendered build (a prebuilt copy needs nothing else)
packages/<set>-<version>.tgz      the npm packages it is built from
"""

    def __init__(self, root: str | Path | None, sets: Mapping[str, str], image_size: int = 64,
                 min_styles: int = 4, split_seed: int = 0, **kwargs) -> None:
        super().__init__(root=root, **kwargs)
        self.sets = {str(k): str(v) for k, v in dict(sets).items()}
        self.image_size = int(image_size)
        # eval / retrieve bring any image to the size the icons are rendered at
        self.native_size = (self.image_size, self.image_size)
        self.min_styles = int(min_styles)
        self.split_seed = int(split_seed)
        if self.root is None:
            raise ValueError("dataset.root is not set: the Emoji-Styles build downloads and "
                             "caches there (default ${paths.cache_dir}/emoji_styles)")
        for set_name, version in self.sets.items():
            if not VERSION_PATTERN.match(version):
                raise ValueError(f"dataset.sets.{set_name}={version!r}: give an exact version "
                                 "(x.y.z); the versions key the cache")
        if all(name in self.sets for name in FLUENT_SETS):
            raise ValueError("dataset.sets has both fluent-emoji and fluent-emoji-flat: they "
                             "are near-copies (cross-set R@1 0.95 on raw pixels); keep one")
        if not 2 <= self.min_styles <= len(self.sets):
            raise ValueError(f"dataset.min_styles={self.min_styles} must be between 2 and the "
                             f"{len(self.sets)} sets of dataset.sets")
        if self.image_size < 8:
            raise ValueError(f"dataset.image_size={self.image_size}: render at 8 px or more")
        self.class_keys = np.asarray([], dtype=str)
        self.class_names = np.asarray([], dtype=str)
        self.set_names = np.asarray([], dtype=str)

    @property
    def packages_dir(self) -> Path:
        assert self.root is not None
        return self.root / "packages"

    def cache_path(self) -> Path:
        assert self.root is not None
        key = json.dumps({"build": BUILD_VERSION, "sets": sorted(self.sets.items()),
                          "size": self.image_size})
        digest = hashlib.sha1(key.encode()).hexdigest()[:10]
        return self.root / f"emoji_styles_{self.image_size}px_{digest}.npz"

    def _missing_hint(self) -> str:
        packages = ", ".join(f"{NPM_SCOPE}/{n}@{v}" for n, v in self.sets.items())
        return (f"The build fetches {packages} with npm once. Either install Node.js with npm "
                "(Debian/Ubuntu: apt-get install npm), or point "
                f"dataset.root at a prebuilt copy: a folder holding {self.cache_path().name} "
                "(built with these sets and dataset.image_size), or holding "
                f"packages/<set>-<version>.tgz for each set. Looked in: {self.root}")

    def _icon_sets(self) -> dict[str, IconSet]:
        icon_sets = {}
        for set_name, version in self.sets.items():
            path = fetch_package(set_name, version, self.packages_dir, self._missing_hint())
            try:
                icon_sets[set_name] = IconSet.from_tgz(path)
            except (OSError, EOFError, zlib.error, tarfile.TarError, ValueError,
                    KeyError) as err:
                log.warning("package file %s is unreadable (%s: %s); fetching it again", path,
                            type(err).__name__, err)
                path.unlink(missing_ok=True)
                path = fetch_package(set_name, version, self.packages_dir, self._missing_hint())
                icon_sets[set_name] = IconSet.from_tgz(path)
        return icon_sets

    def _build(self) -> dict[str, np.ndarray]:
        labels = {n: f"{n}@{v}" for n, v in self.sets.items()}
        return build_arrays(self._icon_sets(), self.image_size, labels)

    def load_splits(self) -> dict[str, Split]:
        arrays = cached_arrays(self.cache_path(), self._build, ARRAY_KEYS)
        self.class_keys, self.class_names = arrays["class_keys"], arrays["class_names"]
        self.set_names = arrays["set_names"]
        images, labels = arrays["images"], arrays["labels"]
        per_class = np.bincount(labels, minlength=len(self.class_keys))
        kept = np.flatnonzero(per_class >= self.min_styles)
        if len(kept) < 4:
            raise ValueError(f"dataset.min_styles={self.min_styles} leaves {len(kept)} classes "
                             f"of {len(self.class_keys)}; lower it or add sets")
        order = np.random.default_rng(self.split_seed).permutation(kept)
        halves = {"train": order[:len(order) // 2], "test": order[len(order) // 2:]}
        splits = {}
        for name, classes in halves.items():
            mask = np.isin(labels, classes)
            splits[name] = Split(images[mask], labels[mask], name)
        log.info("Emoji-Styles: %d classes with >= %d of %d styles (%.2f images per class); "
                 "train %d classes, test %d", len(kept), self.min_styles, len(self.set_names),
                 per_class[kept].mean(), len(halves["train"]), len(halves["test"]))
        return splits

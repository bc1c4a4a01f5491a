"""CUB-200-2011, Cars-196, SOP and In-Shop at their official size and layout, with small
synthetic images that carry a class signal: the data of the rehearsal at real size
(``bench_scale.py``).

The official-format writers are the tests' (``tests/helpers/dataset_fixtures.py``: the same
index files and folder layout as the real downloads); this module only gives them the
official numbers of images and classes per split (the loaders' ``expected_counts``, so
``dataset.strict_counts=true`` passes), spread as evenly over the classes as the totals
allow. Each image is a ``size`` x ``size`` JPEG whose four quadrant colours are fixed by
its class, plus noise.

Usage::

    python benchmarks/scale_datasets.py DATA_DIR [--datasets cub cars sop inshop]
        [--size 32] [--fraction 1.0]

``--fraction`` keeps that share of every split's classes (and their images), for a
reduced but same-shaped copy (the slow test's SOP at 10 %); the counts are then no longer
the official ones (``dataset.strict_counts=false``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers.dataset_fixtures import FIXTURES, FixtureData  # noqa: E402

#: ``{dataset: {split: (images, classes)}}``, the official counts (as the loaders check).
OFFICIAL = {
    "cub": {"train": (5864, 100), "test": (5924, 100)},
    "cars": {"train": (8054, 98), "test": (8131, 98)},
    "sop": {"train": (59551, 11318), "test": (60502, 11316)},
    "inshop": {"train": (25882, 3997), "query": (14218, 3985), "gallery": (12612, 3985)},
}
DATASETS = tuple(OFFICIAL)


def spread(images: int, classes: int) -> list[int]:
    """``classes`` counts summing to ``images``, as even as possible (larger ones first)."""
    base, extra = divmod(images, classes)
    return [base + 1] * extra + [base] * (classes - extra)


def _scaled(images: int, classes: int, fraction: float) -> tuple[int, int]:
    kept = max(1, round(classes * fraction))
    return round(images * kept / classes), kept


def write_dataset(name: str, data_dir: Path, size: int = 32, fraction: float = 1.0,
                  seed: int = 0) -> FixtureData:
    """Write dataset ``name`` under ``data_dir`` where its config looks with
    ``paths.data_dir=data_dir``; returns what was written."""
    maker, folder = FIXTURES[name]
    root = Path(data_dir) / folder
    counts = {split: _scaled(n, c, fraction) for split, (n, c) in OFFICIAL[name].items()}
    common = {"image_size": size, "class_signal": True, "seed": seed}
    if name in ("cub", "cars"):
        # both makers take as many train as test classes; CUB and Cars have equal numbers
        (n_tr, c_tr), (n_te, c_te) = counts["train"], counts["test"]
        if c_tr != c_te:
            raise ValueError(f"{name}: train and test class counts differ ({c_tr}, {c_te})")
        return maker(root, n_classes=c_tr, per_class=spread(n_tr, c_tr) + spread(n_te, c_te),
                     **common)
    if name == "sop":
        (n_tr, c_tr), (n_te, c_te) = counts["train"], counts["test"]
        return maker(root, n_classes=(c_tr, c_te),
                     per_class=spread(n_tr, c_tr) + spread(n_te, c_te), **common)
    if name == "inshop":
        (n_tr, c_tr), (n_q, c_q), (n_g, _) = counts["train"], counts["query"], counts["gallery"]
        return maker(root, counts={"train": spread(n_tr, c_tr), "query": spread(n_q, c_q),
                                   "gallery": spread(n_g, c_q)}, **common)
    raise ValueError(f"unknown dataset {name!r}; expected one of {DATASETS}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--fraction", type=float, default=1.0)
    args = parser.parse_args()
    for name in args.datasets:
        start = time.perf_counter()
        out = write_dataset(name, args.data_dir, args.size, args.fraction)
        counts = {s: c["images"] for s, c in out.counts.items()}
        print(f"{name}: {counts} in {time.perf_counter() - start:.0f} s", flush=True)
        del out


if __name__ == "__main__":
    main()

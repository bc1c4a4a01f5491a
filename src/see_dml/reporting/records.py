"""A sweep's records without its checkpoints: what a table, a geometry report or a reader needs
of each finished run, small enough to commit beside the results it produced.

``python -m see_dml.reporting records <folders> --out DIR`` copies, for every finished run
below the folders (a ``metrics.json`` beside a ``config.yaml``), its text records (the
config, the Hydra overrides, ``metrics.json``, the CSV logger's per-epoch metrics,
``geometry.csv``, ``train.log``) to the same relative path under ``DIR``. Checkpoints,
embeddings and plots stay behind. ``python -m see_dml.reporting table DIR`` and
``geometry DIR`` then give what they gave on the sweep itself.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from see_dml.reporting import finished_runs

#: the suffixes of a run's text records; everything else (checkpoints, embeddings, images)
#: is left behind
RECORD_SUFFIXES = frozenset({".json", ".yaml", ".csv", ".log", ".md", ".txt"})
#: a record larger than this is left behind and named (a text file that large is not a record)
MAX_RECORD_BYTES = 5 * 2**20


def keep_records(folders: Sequence[Path], out: Path) -> tuple[list[Path], list[Path]]:
    """Copy the records of every finished run below ``folders`` to ``out``, each at its path
    relative to its folder. Runs already kept are copied again (a rerun's records replace
    the old ones).

    Returns:
        ``(runs, left)``: the run directories kept, and the record-like files left behind for
        their size.

    Raises:
        ValueError: two folders hold a run at the same relative path (they would overwrite
            each other under ``out``), or ``out`` lies inside a run directory.
    """
    out = out.resolve()
    sources: dict[Path, Path] = {}
    for folder in folders:
        for run in finished_runs(folder):
            rel = run.relative_to(folder)
            if rel in sources:
                raise ValueError(f"two runs would be kept at {out / rel}: {sources[rel]} and "
                                 f"{run}; keep the folders' records in separate places")
            if out.is_relative_to(run.resolve()):
                raise ValueError(f"--out {out} lies inside the run directory {run}")
            sources[rel] = run
    left: list[Path] = []
    for rel, run in sorted(sources.items()):
        for file in sorted(run.rglob("*")):
            inner = file.relative_to(run)
            if not file.is_file() or file.suffix not in RECORD_SUFFIXES:
                continue
            if "checkpoints" in inner.parts or file.name.startswith(".see_dml.lock"):
                continue
            if file.stat().st_size > MAX_RECORD_BYTES:
                left.append(file)
                continue
            target = out / rel / inner
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file, target)
    return list(sources.values()), left


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m see_dml.reporting records",
        description="Copy every finished run's text records (config, overrides, metrics, "
        "per-epoch CSVs, geometry, log) below the folders to --out, without checkpoints, "
        "embeddings or plots: a sweep's results small enough to commit.")
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="where the records go")
    args = parser.parse_args(argv)
    for folder in args.folders:
        if not folder.is_dir():
            parser.error(f"no such folder: {folder}")
    try:
        runs, left = keep_records(args.folders, args.out)
    except ValueError as err:
        parser.error(str(err))
    if not runs:
        parser.error(f"no finished runs (metrics.json + config.yaml) under "
                     f"{', '.join(map(str, args.folders))}")
    print(f"kept the records of {len(runs)} finished run(s) in {args.out}")
    for file in left:
        print(f"left behind (over {MAX_RECORD_BYTES // 2**20} MiB): {file}", file=sys.stderr)
    return 0

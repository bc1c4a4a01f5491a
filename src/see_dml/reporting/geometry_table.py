"""The geometry measures of a sweep (:mod:`see_dml.callbacks.geometry_monitor` writes them into each
run's ``geometry.csv``) as a data frame, a last-epoch summary with paired differences, and a
plot per measure against the epoch with both arms on it.

``python -m see_dml.reporting geometry <folders> [--out DIR]`` writes
``geometry_summary.md`` / ``.csv`` and ``geometry.png``.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from see_dml.reporting import format_interval, markdown_table, paired_interval, synthesis_name

#: the geometry monitor's columns, and how the summaries and plots name them
GEOMETRY_MEASURES = {
    "geometry/proxy_drift_deg": "proxy drift (deg / epoch)",
    "geometry/proxy_class_cos": "cos(proxy, class mean)",
    "geometry/class_spread_deg": "angle to own proxy (deg)",
    "geometry/uniformity": "uniformity (lower: more uniform)",
    "geometry/train_recall@1": "train-subset R@1",
    "geometry/train_val_gap@1": "train - val R@1",
    "val/recall@1": "val R@1",
}


def _run_dirs(folders: Sequence[Path]) -> list[Path]:
    return sorted({p.parent for folder in folders for p in Path(folder).rglob("geometry.csv")
                   if (p.parent / "config.yaml").exists()})


def geometry_frame(folders: Sequence[Path | str]) -> pd.DataFrame:
    """One row per run and epoch: ``run, task, arm, dim, seed, epoch``, the geometry measures and
    ``val/recall@1`` (from the CSV logger), for every run below ``folders`` with a
    ``geometry.csv``. Unfinished runs are kept (their epochs so far) and flagged in
    ``finished``."""
    frames = []
    for run in _run_dirs([Path(f) for f in folders]):
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        geo = pd.read_csv(run / "geometry.csv")
        log_file = run / "csv" / "metrics.csv"
        if log_file.exists():
            logged = pd.read_csv(log_file)
            if "val/recall@1" in logged:
                val = (logged.dropna(subset=["val/recall@1"])
                       .groupby("epoch", as_index=False)["val/recall@1"].last())
                geo = geo.merge(val, on="epoch", how="left")
        geo.insert(0, "run", str(run))
        geo.insert(1, "task", cfg.get("task_name", ""))
        geo.insert(2, "arm", synthesis_name(cfg))
        geo.insert(3, "dim", int(cfg["model"]["embed_dim"]))
        geo.insert(4, "seed", int(cfg["seed"]))
        geo["finished"] = (run / "metrics.json").exists()
        frames.append(geo)
    if not frames:
        raise FileNotFoundError(f"no run with a geometry.csv below {', '.join(map(str, folders))}")
    return pd.concat(frames, ignore_index=True)


def geometry_summary(frame: pd.DataFrame, baseline: str = "none") -> pd.DataFrame:
    """At each finished run's last epoch: mean ± std over seeds of every measure per
    ``(task, dim, arm)``, and for every other arm the paired difference to ``baseline``
    (same task, dim and seed) with its 95 % interval. The ``task`` column (the runs'
    ``task_name``) is dropped when all runs share one."""
    done = frame[frame["finished"]]
    last = done.loc[done.groupby("run")["epoch"].idxmax()]
    measures = [m for m in GEOMETRY_MEASURES if m in last]
    rows = []
    for (task, dim, arm), cell in last.groupby(["task", "dim", "arm"]):
        row: dict[str, Any] = {"task": task, "dim": dim, "arm": arm, "seeds": len(cell),
                               "epoch": int(cell["epoch"].max()) + 1}
        base = last[(last["task"] == task) & (last["dim"] == dim)
                    & (last["arm"] == baseline)].set_index("seed")
        ours = cell.set_index("seed")
        paired = ours.index.intersection(base.index)
        for m in measures:
            row[GEOMETRY_MEASURES[m]] = f"{ours[m].mean():.3f} ± {ours[m].std():.3f}"
            if arm != baseline and len(paired):
                diff = (ours.loc[paired, m] - base.loc[paired, m]).to_numpy()
                row[f"Δ {GEOMETRY_MEASURES[m]}"] = format_interval(*paired_interval(diff),
                                                                   digits=3)
        rows.append(row)
    table = pd.DataFrame(rows)
    if len(table) and table["task"].nunique() == 1:
        table = table.drop(columns="task")
    return table


def plot_geometry(frame: pd.DataFrame, path: Path | str) -> None:
    """One panel per measure against the epoch; a line per (task, embedding size, arm), the
    mean over seeds with a band of ± one std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measures = [m for m in GEOMETRY_MEASURES if m in frame and frame[m].notna().any()]
    cols = 4
    rows = math.ceil(len(measures) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    styles = {arm: style for arm, style in zip(sorted(frame["arm"].unique()),
                                               ["-", "--", ":", "-."] * 4)}
    colours = {key: f"C{i}" for i, key in
               enumerate(sorted(set(zip(frame["task"], frame["dim"]))))}
    tasks = frame["task"].nunique() > 1
    for ax, m in zip(axes.flat, measures):
        for (task, dim, arm), cell in frame.groupby(["task", "dim", "arm"]):
            stats = cell.groupby("epoch")[m].agg(["mean", "std", "count"]).dropna(
                subset=["mean"])
            n = int(cell["seed"].nunique())
            ax.plot(stats.index, stats["mean"], styles[arm], color=colours[(task, dim)],
                    label=(f"{task}: " if tasks else "") + f"d={dim} {arm} (n={n})")
            ax.fill_between(stats.index, stats["mean"] - stats["std"].fillna(0),
                            stats["mean"] + stats["std"].fillna(0), color=colours[(task, dim)],
                            alpha=0.12)
        ax.set_title(GEOMETRY_MEASURES[m], fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(measures):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8,
               bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    geo = argparse.ArgumentParser(prog="python -m see_dml.reporting geometry",
                                  description="Per-epoch geometry measures of a sweep: "
                                  "geometry_summary.md/.csv and geometry.png.")
    geo.add_argument("folders", nargs="+", type=Path)
    geo.add_argument("--out", type=Path, default=None,
                     help="where the files go (default: the first folder)")
    geo.add_argument("--baseline", default="none", help="the arm the Δ columns compare to")
    args = geo.parse_args(argv)
    parser = geo
    for folder in args.folders:
        if not folder.is_dir():
            parser.error(f"no such folder: {folder}")
    try:
        frame = geometry_frame(args.folders)
    except FileNotFoundError as err:
        parser.error(str(err))
    out = args.out or args.folders[0]
    out.mkdir(parents=True, exist_ok=True)
    summary = geometry_summary(frame, args.baseline)
    text = markdown_table(summary) if len(summary) else "(no finished run yet)"
    (out / "geometry_summary.md").write_text(text + "\n")
    summary.to_csv(out / "geometry_summary.csv", index=False)
    plot_geometry(frame, out / "geometry.png")
    print(text)
    running = frame.loc[~frame["finished"], "run"].unique()
    if len(running):
        print(f"\n{len(running)} unfinished run(s) are in the plot (their epochs so far), not "
              "in the table", file=sys.stderr)
    return 0



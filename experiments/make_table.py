"""Turn training runs into the paper-style table: mean ± std over seeds.

    python experiments/make_table.py outputs/see_effect/multiruns/<sweep dir> [more dirs]

Every run directory below the given folders (a ``metrics.json`` beside a ``config.yaml``)
is one row of data; runs that differ only in ``seed`` are pooled. Writes ``results.md``,
``results.csv`` and ``results.png`` into the first folder and prints the Markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

METRICS = [("test/recall@1", "R@1"), ("test/map@r", "MAP@R"), ("test/r_precision", "RP"),
           ("test_final/recall@1", "R@1 final"), ("test_final/map@r", "MAP@R final")]


def synthesis_name(cfg: dict[str, Any]) -> str:
    if cfg.get("see", {}).get("enabled"):
        return "SEE"
    synthesis = cfg.get("synthesis")
    return synthesis["name"] if synthesis else "-"


def run_key(cfg: dict[str, Any]) -> tuple[str, ...]:
    dataset = cfg["dataset"]["_target_"].rsplit(".", 1)[-1]
    return (dataset, cfg["model"]["backbone"]["name"], str(cfg["model"]["embed_dim"]),
            cfg["loss"]["name"], synthesis_name(cfg), str(cfg["trainer"]["max_epochs"]))


KEY_NAMES = ("dataset", "backbone", "dim", "loss", "synthesis", "epochs")


def collect(folders: list[Path]) -> dict[tuple[str, ...], list[dict[str, float]]]:
    """``{key: [metrics of each seed]}`` for every finished run under ``folders``."""
    groups: dict[tuple[str, ...], list[dict[str, float]]] = defaultdict(list)
    for folder in folders:
        for metrics_file in sorted(folder.rglob("metrics.json")):
            config_file = metrics_file.with_name("config.yaml")
            if not config_file.exists():
                continue
            cfg = yaml.safe_load(config_file.read_text())
            groups[run_key(cfg)].append(json.loads(metrics_file.read_text()))
    return dict(groups)


def summarise(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


def table_rows(groups: dict[tuple[str, ...], list[dict[str, float]]]) -> list[dict[str, Any]]:
    rows = []
    for key in sorted(groups, key=lambda k: (k[0], k[1], int(k[2]), k[3], k[4], int(k[5]))):
        runs = groups[key]
        row: dict[str, Any] = dict(zip(KEY_NAMES, key))
        row["seeds"] = len(runs)
        for metric, name in METRICS:
            values = [r[metric] * 100 for r in runs if metric in r]
            row[name] = summarise(values) if values else (math.nan, math.nan)
        rows.append(row)
    return rows


def to_markdown(rows: list[dict[str, Any]]) -> str:
    cols = [*KEY_NAMES, "seeds", *(name for _, name in METRICS)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        cells = []
        for c in cols:
            v = row[c]
            cells.append(f"{v[0]:.2f} ± {v[1]:.2f}" if isinstance(v, tuple) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def to_csv(rows: list[dict[str, Any]]) -> str:
    names = [name for _, name in METRICS]
    header = [*KEY_NAMES, "seeds", *(f"{n} {s}" for n in names for s in ("mean", "std"))]
    lines = [",".join(header)]
    for row in rows:
        vals = [str(row[k]) for k in (*KEY_NAMES, "seeds")]
        vals += [f"{row[n][i]:.4f}" for n in names for i in (0, 1)]
        lines.append(",".join(vals))
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path, metric: str = "MAP@R") -> None:
    """MAP@R against embedding size, one line per (loss, synthesis), error bars = std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    # one line per (loss, synthesis, epochs): an untrained baseline is not a point of a curve
    lines: dict[tuple[str, str, str], list[tuple[int, float, float]]] = defaultdict(list)
    for row in rows:
        lines[(row["loss"], row["synthesis"], row["epochs"])].append((int(row["dim"]),
                                                                      *row[metric]))
    several_epochs = len({key[2] for key in lines}) > 1
    for (loss, synthesis, epochs), points in sorted(lines.items()):
        points.sort()
        dims, means, stds = zip(*points)
        label = f"{loss} + {synthesis}" if synthesis != "-" else loss
        if several_epochs:
            label += f" ({epochs} epochs)"
        ax.errorbar(dims, means, yerr=stds, marker="o", capsize=3, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("embedding size")
    ax.set_ylabel(f"test {metric} (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="+", type=Path)
    args = parser.parse_args(argv)
    for folder in args.folders:
        if not folder.is_dir():
            parser.error(f"no such folder: {folder}")
    rows = table_rows(collect(args.folders))
    if not rows:
        parser.error(f"no finished runs (metrics.json + config.yaml) under {args.folders}")
    out = args.folders[0]
    markdown = to_markdown(rows)
    (out / "results.md").write_text(markdown + "\n")
    (out / "results.csv").write_text(to_csv(rows) + "\n")
    plot(rows, out / "results.png")
    print(markdown)
    return markdown


if __name__ == "__main__":
    main()

"""The results tables' pictures: a metric against the embedding size per setting (long
layout) and R@1 bars per dataset with the published R@1 marked (paper layout).
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from see_dml.reporting.layouts import DATASETS
from see_dml.reporting.published import PUBLISHED


def paper_plot(table: dict[str, Any], path: Path) -> None:
    """The paper table's R@1 as a picture: a panel per dataset, a group of bars per backbone /
    size, a bar per method (mean over seeds, std as error bar), and the published R@1 as a
    red diamond on the bar it is compared with."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def method(labels: dict[str, Any]) -> str:
        return " ".join(str(v) for k, v in labels.items() if k != "backbone / dim" and v != "")

    groups = list(dict.fromkeys(labels["backbone / dim"] for labels, _ in table["lines"]))
    methods = list(dict.fromkeys(method(labels) for labels, _ in table["lines"]))
    width = 0.8 / len(methods)
    fig, axes = plt.subplots(1, len(table["datasets"]), squeeze=False, sharey=True,
                             figsize=(1 + max(2.5, 0.9 * len(groups)) * len(table["datasets"]),
                                      4))
    for ax, dataset in zip(axes[0], table["datasets"]):
        ticks = False
        for j, name in enumerate(methods):
            bars = [(groups.index(labels["backbone / dim"]) + (j - (len(methods) - 1) / 2)
                     * width, cells[dataset]) for labels, cells in table["lines"]
                    if method(labels) == name and dataset in cells]
            if not bars:
                continue
            xs = [x for x, _ in bars]
            means = [row["R@1"][0] for _, row in bars]
            stds = [0.0 if math.isnan(row["R@1"][1]) else row["R@1"][1] for _, row in bars]
            ax.bar(xs, means, width, yerr=stds, capsize=2, label=name)
            published = [(x, row["R@1"][0] - row[PUBLISHED[1]]) for x, row in bars
                         if row.get(PUBLISHED[1]) is not None]
            if published:
                ax.scatter(*zip(*published), marker="D", s=22, color="crimson", zorder=3,
                           label=None if ticks else "published R@1")
                ticks = True
        ax.set_xticks(range(len(groups)), groups, rotation=30, ha="right", fontsize=7)
        ax.set_title(DATASETS.get(dataset, dataset))
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("test R@1 (%)")
    handles = {label: handle for ax in axes[0] for handle, label in
               zip(*ax.get_legend_handles_labels())}
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=len(handles),
               fontsize=8, bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot(rows: list[dict[str, Any]], path: Path, metrics: tuple[str, ...] = ("MAP@R",)
         ) -> None:
    """Each metric against embedding size, one panel per metric, one line per (dataset,
    backbone, loss, synthesis), error bars = std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        _plot_metric(ax, rows, metric)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_metric(ax: Any, rows: list[dict[str, Any]], metric: str) -> None:
    # one line per (dataset, backbone, loss, synthesis, epochs, other): another dataset, an
    # untrained baseline or another setting is not a point of the same curve
    lines: dict[tuple[str, ...], list[tuple[int, float, float]]] = defaultdict(list)
    for row in rows:
        lines[(row["dataset"], row["backbone"], row["loss"], row["synthesis"], row["epochs"],
               row["other"])].append((int(row["dim"]), *row[metric]))
    several = [len({key[i] for key in lines}) > 1 for i in range(6)]
    for (dataset, backbone, loss, synthesis, epochs, other), points in sorted(lines.items()):
        points.sort()
        dims, means, stds = zip(*points)
        label = f"{loss} + {synthesis}" if synthesis != "none" else loss
        if several[0] or several[1]:
            label = " ".join(v for v, many in ((dataset, several[0]), (backbone, several[1]))
                             if many) + f": {label}"
        if len({k[4] for k in lines if k[:2] == (dataset, backbone)}) > 1:
            label += f" ({epochs} epochs)"  # (each dataset's recipe has its own length)
        if other:
            label += f" [{other}]"
        ax.errorbar(dims, means, yerr=stds, marker="o", capsize=3, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("embedding size")
    ax.set_ylabel(f"test {metric} (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)

"""Turn training runs into the paper-style table: mean ± std over seeds, and the paired
difference of each synthesiser to the plain loss, seed by seed, with a 95% interval.

    python experiments/make_table.py outputs/synthesis_compare/multiruns/<dir> [more dirs]
        [--baseline none] [--published experiments/published.yaml | none]

Every run directory below the given folders (a ``metrics.json`` beside a ``config.yaml``)
is one row of data. Runs are pooled only when their whole resolved config is the same
except the seed (``seed`` and any ``*.seed`` equal to it) and paths (``paths.*``,
``ckpt_path``, ``resume``, values inside the run directory): runs that differ in
``see.n_points`` or a learning rate are never averaged together. Where two rows agree in the
named columns, an ``other`` column says what else tells them apart.

``Δ`` columns: for each row, the baseline row (``--baseline``, default ``none``: no
synthesiser) with the same config apart from the synthesiser (``see.*``, ``synthesis.*``);
for each seed that both ran, the difference of the metric; then the mean difference and
its 95% Student-t interval over those seeds. An interval that contains 0 does not tell an
effect from none. ``R@1 paper``: the authors' published Recall@1 for the row's setting
(``--published``, default ``experiments/published.yaml``: dataset, backbone, embedding size,
loss and synthesis must match; a published row of another backbone that the file names as the
closest is shown with that backbone in brackets), and ``ΔR@1 paper``, our mean minus it; the
sources follow the table. Writes ``results.md``, ``results.csv`` and ``results.png`` into the first
folder and prints the Markdown table.
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

from see_dml.config import flatten

METRICS = [("test/recall@1", "R@1"), ("test/map@r", "MAP@R"), ("test/r_precision", "RP"),
           ("test_final/recall@1", "R@1 final"), ("test_final/map@r", "MAP@R final")]
#: metrics whose paired difference to the baseline is reported
DELTAS = [("test/map@r", "ΔMAP@R"), ("test/recall@1", "ΔR@1")]
#: the published R@1 (a string: the number, and another backbone's name when it stands in) and
#: our mean R@1 minus it, inserted after our R@1
PUBLISHED = ("R@1 paper", "ΔR@1 paper")
PUBLISHED_FILE = Path(__file__).with_name("published.yaml")
KEY_NAMES = ("dataset", "backbone", "dim", "loss", "synthesis", "epochs")
PATH_KEYS = ("paths", "ckpt_path", "resume")
SYNTHESIS_KEYS = ("see", "synthesis")

Run = tuple[dict[str, Any], dict[str, float]]  # (flattened config, metrics)


def synthesis_name(cfg: dict[str, Any]) -> str:
    """``SEE``, the baseline synthesiser's ``name``, or ``none``."""
    if (cfg.get("see") or {}).get("enabled"):
        return "SEE"
    synthesis = cfg.get("synthesis")
    return synthesis.get("name", "?") if synthesis else "none"


def config_key(cfg: dict[str, Any]) -> dict[str, Any]:
    """The resolved config less seed and paths: runs with equal keys are seeds of one cell."""
    seed = cfg.get("seed")
    run_dir = str((cfg.get("paths") or {}).get("run_dir") or "\0")
    flat = flatten(cfg)
    key = {}
    for name, value in flat.items():
        if name.split(".")[0] in PATH_KEYS:
            continue
        if name.split(".")[-1] == "seed" and value == seed:
            continue
        if isinstance(value, str) and run_dir in value:
            continue
        key[name] = value
    key["synthesis"] = synthesis_name(cfg)  # the label, so it is always part of the key
    return key


def named_columns(cfg: dict[str, Any]) -> tuple[str, ...]:
    dataset = cfg["dataset"]["_target_"].rsplit(".", 1)[-1]
    model = cfg["model"]
    backbone = model.get("backbone")
    if isinstance(backbone, dict):  # a backbone node (timm name or small_cnn)
        backbone = backbone.get("name", "?")
    return (dataset, str(backbone), str(model["embed_dim"]), cfg["loss"]["name"],
            synthesis_name(cfg), str(cfg["trainer"]["max_epochs"]))


def collect(folders: list[Path]) -> dict[tuple, dict[str, Any]]:
    """``{cell key: {"cfg": a config, "key": flattened key, "runs": {seed: metrics}}}``."""
    cells: dict[tuple, dict[str, Any]] = {}
    for folder in folders:
        for metrics_file in sorted(folder.rglob("metrics.json")):
            config_file = metrics_file.with_name("config.yaml")
            if not config_file.exists():
                continue
            cfg = yaml.safe_load(config_file.read_text())
            key = config_key(cfg)
            frozen = tuple(sorted((k, repr(v)) for k, v in key.items()))
            cell = cells.setdefault(frozen, {"cfg": cfg, "key": key, "runs": {}})
            seed = cfg.get("seed")
            if seed in cell["runs"]:
                raise SystemExit(f"two runs of one config with seed {seed}: {metrics_file.parent}"
                                 " and another; give each sweep its own folder")
            cell["runs"][seed] = json.loads(metrics_file.read_text())
    return cells


def summarise(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


def paired_interval(differences: list[float], level: float = 0.95
                    ) -> tuple[float, float, float]:
    """Mean of the per-seed differences and its two-sided Student-t interval.

    ``(mean, low, high)``; with one seed the interval is unknown (``nan``).
    """
    from scipy.stats import t

    n = len(differences)
    mean = statistics.fmean(differences)
    if n < 2:
        return mean, math.nan, math.nan
    half = t.ppf(0.5 + level / 2, n - 1) * statistics.stdev(differences) / math.sqrt(n)
    return mean, mean - half, mean + half


def _context(key: dict[str, Any]) -> tuple:
    """A cell's config without its synthesiser: cells with equal contexts are compared."""
    return tuple(sorted((k, repr(v)) for k, v in key.items()
                        if k.split(".")[0] not in SYNTHESIS_KEYS))


def _other_columns(cells: list[dict[str, Any]]) -> list[str]:
    """For each cell, the config keys that set it apart from cells with the same named
    columns (``""`` when the named columns already do)."""
    by_name: dict[tuple, list[int]] = defaultdict(list)
    for i, cell in enumerate(cells):
        by_name[named_columns(cell["cfg"])].append(i)
    other = [""] * len(cells)
    for members in by_name.values():
        if len(members) < 2:
            continue
        keys = set().union(*(cells[i]["key"] for i in members))
        varying = sorted(k for k in keys
                         if len({repr(cells[i]["key"].get(k)) for i in members}) > 1)
        for i in members:
            other[i] = " ".join(f"{k}={cells[i]['key'].get(k)}" for k in varying)
    return other


def table_rows(cells: dict[tuple, dict[str, Any]], baseline: str = "none"
               ) -> list[dict[str, Any]]:
    ordered = sorted(cells.values(), key=lambda c: (
        *named_columns(c["cfg"])[:2], int(named_columns(c["cfg"])[2]),
        *named_columns(c["cfg"])[3:5], int(named_columns(c["cfg"])[5]),
        repr(sorted(c["key"].items()))))
    baselines = {_context(c["key"]): c for c in ordered if c["key"]["synthesis"] == baseline}
    other = _other_columns(ordered)
    rows = []
    for cell, extra in zip(ordered, other):
        runs = cell["runs"]
        row: dict[str, Any] = dict(zip(KEY_NAMES, named_columns(cell["cfg"])))
        row["other"] = extra
        row["seeds"] = len(runs)
        for metric, name in METRICS:
            values = [r[metric] * 100 for r in runs.values() if metric in r]
            row[name] = summarise(values) if values else (math.nan, math.nan)
        base = baselines.get(_context(cell["key"]))
        for metric, name in DELTAS:
            row[name] = None
            if base is None or base is cell:
                continue
            diffs = [(runs[s][metric] - base["runs"][s][metric]) * 100
                     for s in sorted(runs) if s in base["runs"]
                     and metric in runs[s] and metric in base["runs"][s]]
            if diffs:
                row[name] = (*paired_interval(diffs), len(diffs))
        rows.append(row)
    return rows


def load_published(path: Path) -> dict[str, Any]:
    """``experiments/published.yaml``: ``{"sources": {name: {...}}, "results": [entry]}``."""
    published = yaml.safe_load(path.read_text())
    for entry in published["results"]:
        if entry["source"] not in published["sources"]:
            raise SystemExit(f"{path}: source '{entry['source']}' is not under sources:")
    return published


def _published_entry(row: dict[str, Any], published: dict[str, Any]
                     ) -> tuple[dict[str, Any], bool] | None:
    """The published entry for a row's setting and whether it is that very setting; else one
    that names the setting in ``closest_for``; else ``None``."""
    def same(entry: dict[str, Any], exact: bool) -> bool:
        settings = [entry] if exact else entry.get("closest_for", [])
        return (row["dataset"] in entry["recall@1"] and entry["loss"] == row["loss"]
                and entry["synthesis"] == row["synthesis"]
                and any(s["backbone"] == row["backbone"] and str(s["dim"]) == row["dim"]
                        for s in settings))
    for exact in (True, False):
        for entry in published["results"]:
            if same(entry, exact):
                return entry, exact
    return None


def add_published(rows: list[dict[str, Any]], published: dict[str, Any]) -> list[str]:
    """Fill the ``PUBLISHED`` columns of each row; returns the notes on the sources used."""
    used: dict[str, None] = {}
    for row in rows:
        row[PUBLISHED[0]] = row[PUBLISHED[1]] = None
        match = _published_entry(row, published)
        if match is None:
            continue
        entry, exact = match
        value = entry["recall@1"][row["dataset"]]
        row[PUBLISHED[0]] = f"{value:.1f}" + ("" if exact else f" ({entry['backbone']})")
        row[PUBLISHED[1]] = row["R@1"][0] - value
        used[entry["source"]] = None
    notes = []
    for name in used:
        source = published["sources"][name]
        where = f"DOI {source['doi']}" if "doi" in source else source.get("url", "")
        notes.append(f"R@1 paper: {source['cite']}, {where} ({source['protocol']}; ours: "
                     "the checkpoint selected on validation classes).")
    return notes


def _format(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:+.2f}"
    if isinstance(value, tuple) and len(value) == 2:
        return f"{value[0]:.2f} ± {value[1]:.2f}"
    if isinstance(value, tuple):  # (mean, low, high, pairs)
        mean, low, high, _ = value
        if math.isnan(low):
            return f"{mean:+.2f}"
        return f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]"
    return str(value)


def columns(rows: list[dict[str, Any]]) -> list[str]:
    cols = list(KEY_NAMES)
    if any(row["other"] for row in rows):
        cols.append("other")
    cols += ["seeds", *(name for _, name in METRICS)]
    if any(row.get(PUBLISHED[0]) is not None for row in rows):
        at = cols.index("R@1") + 1
        cols[at:at] = PUBLISHED
    if any(row[name] is not None for row in rows for _, name in DELTAS):
        cols += [name for _, name in DELTAS]
    return cols


def to_markdown(rows: list[dict[str, Any]]) -> str:
    cols = columns(rows)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        lines.append("| " + " | ".join(_format(row[c]) for c in cols) + " |")
    return "\n".join(lines)


def to_csv(rows: list[dict[str, Any]]) -> str:
    names = [name for _, name in METRICS]
    deltas = [name for _, name in DELTAS]
    header = [*KEY_NAMES, "other", "seeds",
              *(f"{n} {s}" for n in names for s in ("mean", "std")),
              *(f"{n} {s}" for n in deltas for s in ("mean", "low95", "high95", "pairs")),
              *PUBLISHED]
    lines = [",".join(header)]
    for row in rows:
        vals = [str(row[k]) for k in KEY_NAMES] + [json.dumps(row["other"]), str(row["seeds"])]
        vals += [f"{row[n][i]:.4f}" for n in names for i in (0, 1)]
        for n in deltas:
            vals += ([f"{v:.4f}" for v in row[n][:3]] + [str(row[n][3])] if row[n]
                     else ["", "", "", ""])
        paper, difference = (row.get(n) for n in PUBLISHED)
        vals += [json.dumps(paper) if paper else "",
                 f"{difference:.4f}" if difference is not None else ""]
        lines.append(",".join(vals))
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path, metrics: tuple[str, ...] = ("MAP@R",)
         ) -> None:
    """Each metric against embedding size, one panel per metric, one line per (loss,
    synthesis), error bars = std."""
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
    # one line per (loss, synthesis, epochs, other): an untrained baseline or another
    # setting is not a point of the same curve
    lines: dict[tuple[str, ...], list[tuple[int, float, float]]] = defaultdict(list)
    for row in rows:
        lines[(row["loss"], row["synthesis"], row["epochs"], row["other"])].append(
            (int(row["dim"]), *row[metric]))
    several_epochs = len({key[2] for key in lines}) > 1
    for (loss, synthesis, epochs, other), points in sorted(lines.items()):
        points.sort()
        dims, means, stds = zip(*points)
        label = f"{loss} + {synthesis}" if synthesis != "none" else loss
        if several_epochs:
            label += f" ({epochs} epochs)"
        if other:
            label += f" [{other}]"
        ax.errorbar(dims, means, yerr=stds, marker="o", capsize=3, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("embedding size")
    ax.set_ylabel(f"test {metric} (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--baseline", default="none",
                        help="synthesis label of the rows the Δ columns compare to")
    parser.add_argument("--plot-metrics", nargs="+", default=["MAP@R"],
                        choices=[name for _, name in METRICS],
                        help="metrics plotted against embedding size, one panel each")
    parser.add_argument("--published", default=str(PUBLISHED_FILE),
                        help="YAML of published R@1 shown beside ours ('none': no column)")
    args = parser.parse_args(argv)
    for folder in args.folders:
        if not folder.is_dir():
            parser.error(f"no such folder: {folder}")
    rows = table_rows(collect(args.folders), args.baseline)
    if not rows:
        parser.error(f"no finished runs (metrics.json + config.yaml) under {args.folders}")
    notes = ([] if args.published == "none"
             else add_published(rows, load_published(Path(args.published))))
    out = args.folders[0]
    markdown = "\n\n".join([to_markdown(rows), *notes])
    (out / "results.md").write_text(markdown + "\n")
    (out / "results.csv").write_text(to_csv(rows) + "\n")
    plot(rows, out / "results.png", tuple(args.plot_metrics))
    print(markdown)
    return markdown


if __name__ == "__main__":
    main()

"""The two layouts of a results table, as Markdown and CSV: the long one (a row per dataset
and setting) and the paper's (one line per method x backbone / size, datasets side by side).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from see_dml.metrics.metric_set import HEADLINE, display_name, shown_metrics
from see_dml.reporting import markdown_table
from see_dml.reporting.pooling import CHECKPOINTS, KEY_NAMES
from see_dml.reporting.published import PUBLISHED
from see_dml.runtime.errors import TableError

#: the final epoch's prefix in metrics.json: its headline metrics get columns of their own
FINAL = "test_final/"


def metric_columns(runs: Iterable[Mapping[str, Any]], prefix: str) -> list[tuple[str, str]]:
    """The long table's metric columns, ``(metric, header)``, from what the runs'
    ``metrics.json`` hold: a metric without ``/`` is read under the checkpoint's ``prefix``,
    one with a prefix as it is.

    Every metric the runs hold under ``prefix``, in :func:`see_dml.metrics.shown_metrics`'
    order under :func:`see_dml.metrics.display_name`'s names (Recall@K at its smallest K
    only: the paper layout shows the Ks), then the final epoch's :data:`~see_dml.metrics.
    HEADLINE` metrics (``R@1 final``, ``MAP@R final``) unless the checkpoint is the final
    epoch. The default metric set gives R@1, MAP@R, RP, R@1 final, MAP@R final.
    """
    held = {key[len(prefix):] for run in runs for key in run if key.startswith(prefix)}
    shown = shown_metrics(held)
    recall = [m for m in shown if m.startswith("recall@")][:1]
    cols = [(m, display_name(m)) for m in shown if not m.startswith("recall@") or m in recall]
    if prefix != FINAL:
        cols += [(FINAL + m, f"{display_name(m)} final") for m in HEADLINE if m in dict(cols)]
    return cols


#: metrics (under the ``--checkpoint`` prefix) whose paired difference to the baseline is
#: reported
DELTAS = [(metric, "Δ" + display_name(metric)) for metric in ("map@r", "recall@1")]


def _format(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:+.2f}"
    if isinstance(value, tuple) and len(value) == 2:
        if math.isnan(value[1]):
            return "–" if math.isnan(value[0]) else f"{value[0]:.2f}"
        return f"{value[0]:.2f} ± {value[1]:.2f}"
    if isinstance(value, tuple):  # (mean, low, high, pairs)
        mean, low, high, _ = value
        if math.isnan(low):
            return f"{mean:+.2f}"
        return f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]"
    return str(value)


def columns(rows: list[dict[str, Any]], checkpoint: str = "val") -> list[str]:
    cols = list(KEY_NAMES)
    if any(row["other"] for row in rows):
        cols.append("other")
    # table_rows' metric_columns: what the runs hold (no final-epoch columns for the final
    # epoch's checkpoint, which would repeat R@1 and MAP@R)
    cols += ["seeds", *(rows[0]["metrics"] if rows else [])]
    if any(row.get(PUBLISHED[0]) is not None for row in rows):
        at = cols.index("R@1") + 1 if "R@1" in cols else len(cols)
        cols[at:at] = PUBLISHED
    if any(row[name] is not None for row in rows for _, name in DELTAS):
        cols += [name for _, name in DELTAS]
    return cols


def to_markdown(rows: list[dict[str, Any]], checkpoint: str = "val") -> str:
    cols = columns(rows, checkpoint)
    return markdown_table([[_format(row[c]) for c in cols] for row in rows], cols)


def to_csv(rows: list[dict[str, Any]]) -> str:
    """The long table's numbers, one column each (``R@1 mean``, ``R@1 std``, ``ΔR@1 mean``,
    ``low95``, ``high95``, ``pairs``, ...); text is quoted where it needs to be."""
    records = []
    for row in rows:
        record: dict[str, Any] = {k: row[k] for k in (*KEY_NAMES, "other", "seeds")}
        for name in row["metrics"]:
            record[f"{name} mean"], record[f"{name} std"] = row[name]
        for _, name in DELTAS:
            value = row[name] or (None, None, None, None)
            for part, v in zip(("mean", "low95", "high95", "pairs"), value):
                record[f"{name} {part}"] = v
        record[PUBLISHED[0]] = row.get(PUBLISHED[0])
        record[PUBLISHED[1]] = row.get(PUBLISHED[1])
        records.append(record)
    frame = pd.DataFrame(records)
    for _, name in DELTAS:
        frame[f"{name} pairs"] = frame[f"{name} pairs"].astype("Int64")
    return frame.to_csv(index=False, float_format="%.4f", lineterminator="\n").rstrip("\n")


#: the SEE paper's order of datasets (any other follows, alphabetically) and their names
DATASETS = {"CUB200": "CUB", "Cars196": "Cars", "StanfordOnlineProducts": "SOP",
            "InShop": "In-Shop"}


#: Recall@K columns a dataset gets: the first Ks its runs report
PAPER_KS = 4


LAYOUTS = ("paper", "long", "auto")


def _dataset_order(dataset: str) -> tuple[int, str]:
    return (list(DATASETS).index(dataset), "") if dataset in DATASETS else (len(DATASETS),
                                                                            dataset)


def paper_table(rows: list[dict[str, Any]], baseline: str = "none") -> dict[str, Any]:
    """``table_rows``' rows as the SEE paper lays them out: one line per setting (method =
    synthesiser, the loss where runs differ in it, backbone / embedding size, and ``other``
    where set), one group of columns per dataset.

    ``{"datasets": [dataset], "ks": {dataset: [K]}, "labels": [label column],
    "lines": [({label column: value}, {dataset: row})], "uniform_seeds": bool}``. Training
    length is a label only where it must be (a setting run for two lengths on one dataset):
    the recipes train each dataset for its own number of epochs, which is no reason for a
    line of its own.
    """
    datasets = sorted({row["dataset"] for row in rows}, key=_dataset_order)
    ks = {dataset: sorted({int(metric.split("@")[1]) for row in rows
                           if row["dataset"] == dataset for metric in row["at"]
                           if metric.startswith("recall@")})[:PAPER_KS]
          for dataset in datasets}

    def setting(row: dict[str, Any]) -> tuple:
        return (row["backbone"], int(row["dim"]), row["loss"], row["synthesis"] != baseline,
                row["synthesis"], row["other"])

    per_dataset = Counter((setting(row), row["dataset"]) for row in rows)
    # a setting run for two lengths on one dataset: a line per length, for that setting only
    by_epochs = {key for (key, _), count in per_dataset.items() if count > 1}
    lines: dict[tuple, dict[str, dict[str, Any]]] = defaultdict(dict)
    for row in rows:
        key = setting(row)
        cells = lines[(*key, int(row["epochs"]) if key in by_epochs else 0)]
        if row["dataset"] in cells:
            raise TableError("two rows of one setting and dataset that the paper layout cannot "
                             "tell apart: use --layout long")
        cells[row["dataset"]] = row
    labels = ["method", *(["loss"] if len({row["loss"] for row in rows}) > 1 else []),
              "backbone / dim", *(["other"] if any(row["other"] for row in rows) else []),
              *(["epochs"] if by_epochs else [])]
    out = []
    for key in sorted(lines):
        row = next(iter(lines[key].values()))
        values = {"method": row["synthesis"], "loss": row["loss"], "other": row["other"],
                  "backbone / dim": f"{row['backbone']} / {row['dim']}",
                  "epochs": row["epochs"] if key[:-1] in by_epochs else ""}
        out.append(({label: values[label] for label in labels}, lines[key]))
    return {"datasets": datasets, "ks": ks, "labels": labels, "lines": out,
            "uniform_seeds": len({row["seeds"] for row in rows}) == 1}


def _paper_columns(table: dict[str, Any], dataset: str) -> list[tuple[str, str]]:
    """A dataset's columns: ``(header, what)``, ``what`` a metric of ``row["at"]``, ``seeds``,
    a ``PUBLISHED`` column or ``ΔR@1``."""
    rows = [row for _, cells in table["lines"] for row in cells.values()]
    name = DATASETS.get(dataset, dataset)
    # the paper's columns: Recall@K at the first Ks, and MAP@R
    shown = [*(f"recall@{k}" for k in table["ks"][dataset]), "map@r"]
    cols = [(f"{name} {display_name(metric)}", metric) for metric in shown]
    if not table["uniform_seeds"]:
        cols.append((f"{name} n", "seeds"))
    if any(row.get(PUBLISHED[0]) is not None for row in rows):
        cols += [(f"{name} {column}", column) for column in PUBLISHED]
    if any(row["ΔR@1"] is not None for row in rows):
        cols.append((f"{name} ΔR@1", "ΔR@1"))
    return cols


def _paper_value(row: dict[str, Any] | None, what: str) -> Any:
    if row is None:
        return None
    if what.startswith(("recall@", "map@r")):
        return row["at"].get(what)
    return row.get(what)


def paper_heading(table: dict[str, Any], checkpoint: str) -> str:
    """The line above the paper table: which checkpoint, over how many seeds."""
    prefix, what = CHECKPOINTS[checkpoint]
    rows = [row for _, cells in table["lines"] for row in cells.values()]
    n = rows[0]["seeds"]
    seeds = (f"over {n} seed{'s' if n != 1 else ''}" if table["uniform_seeds"]
             else "over the n seeds of each dataset's n column")
    return (f"Checkpoint: {what} (`--checkpoint {checkpoint}`, `{prefix}*` in metrics.json). "
            f"Recall@K and MAP@R in %, mean ± std {seeds}.")


def paper_legend(table: dict[str, Any], baseline: str) -> list[str]:
    """What the Δ columns of the paper table are, for those it has."""
    heads = {what for dataset in table["datasets"]
             for _, what in _paper_columns(table, dataset)}
    legend = []
    if "ΔR@1" in heads:
        legend.append(f"ΔR@1: R@1 minus that of the {baseline} line of the same setting and "
                      "dataset, seed by seed: the mean difference [its 95% Student-t "
                      "interval]; an interval that contains 0 does not tell an effect from "
                      "none.")
    if PUBLISHED[1] in heads:
        legend.append(f"{PUBLISHED[1]}: our mean R@1 minus {PUBLISHED[0]}.")
    return legend


def to_paper_markdown(table: dict[str, Any]) -> str:
    groups = [_paper_columns(table, dataset) for dataset in table["datasets"]]
    header = [*table["labels"], *(head for group in groups for head, _ in group)]
    lines = []
    for labels, cells in table["lines"]:
        values = [str(labels[label]) for label in table["labels"]]
        values += [_format(_paper_value(cells.get(dataset), what))
                   for dataset, group in zip(table["datasets"], groups) for _, what in group]
        lines.append(values)
    return markdown_table(lines, header)


def to_paper_csv(table: dict[str, Any]) -> str:
    """The paper table's numbers, one column each: ``<dataset> R@K mean``, ``... std``,
    ``<dataset> ΔR@1 mean``, ``low95``, ``high95``, ``pairs``."""
    groups = [_paper_columns(table, dataset) for dataset in table["datasets"]]
    parts = {"ΔR@1": ("mean", "low95", "high95", "pairs"), "seeds": ("",),
             **{column: ("",) for column in PUBLISHED}}
    records = []
    for labels, cells in table["lines"]:
        record: dict[str, Any] = {label: str(labels[label]) for label in table["labels"]}
        for dataset, group in zip(table["datasets"], groups):
            for head, what in group:
                value = _paper_value(cells.get(dataset), what)
                names = [f"{head} {part}".strip() for part in parts.get(what, ("mean", "std"))]
                values = (value if isinstance(value, tuple) else (value,)) if value is not None \
                    else (None,) * len(names)
                record.update(zip(names, values))
        records.append(record)
    frame = pd.DataFrame(records)
    for column in frame.columns:
        if column.endswith((" pairs", " n")):
            frame[column] = frame[column].astype("Int64")
    return frame.to_csv(index=False, float_format="%.4f", lineterminator="\n").rstrip("\n")

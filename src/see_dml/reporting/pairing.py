"""A results table's rows: each cell's mean ± std over its seeds, and the paired difference
to its baseline cell (the same config but the synthesiser), seed by seed, with its 95 %
Student-t interval.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from see_dml.metrics.metric_set import metric_rank
from see_dml.reporting import paired_interval
from see_dml.reporting.layouts import DELTAS, metric_columns
from see_dml.reporting.pooling import (
    CHECKPOINTS,
    KEY_NAMES,
    SYNTHESIS_KEYS,
    UNKNOWN,
    _other_columns,
    cell_name,
    named_columns,
)
from see_dml.reporting.published import run_protocol
from see_dml.runtime.errors import AmbiguousBaselineError


def summarise(values: list[float]) -> tuple[float, float]:
    """``(mean, std)``; one value has no spread: std ``nan``, printed as the mean alone."""
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else math.nan


def _context(key: dict[str, Any], tuned: tuple[str, ...] = ()) -> tuple:
    """A cell's config without its synthesiser, and without the ``tuned`` keys (and the keys
    under them): cells with equal contexts are compared. ``tuned``: the keys each arm of a
    tuned comparison chose for itself (``python -m see_dml.tune``), so that each arm's best
    configuration is paired, seed by seed, with the baseline's."""
    return tuple(sorted((k, repr(v)) for k, v in key.items()
                        if k.split(".")[0] not in SYNTHESIS_KEYS
                        and not any(k == t or k.startswith(t + ".") for t in tuned)))


def table_rows(cells: dict[tuple, dict[str, Any]], baseline: str = "none",
               checkpoint: str = "val", tuned: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """One row per cell: the named columns, mean ± std (in %) of each metric column
    (:func:`~see_dml.reporting.layouts.metric_columns` of all the runs: what they hold; their
    headers in ``metrics``, the same list in every row) and the paired ``DELTAS`` (relative
    keys read under the ``checkpoint``'s prefix), and ``at``: ``{metric: (mean, std)}`` of
    every metric of that checkpoint (all Recall@K), which the paper layout shows. ``tuned``:
    keys a row and its baseline may differ in (:func:`_context`)."""
    prefix = CHECKPOINTS[checkpoint][0]
    columns = metric_columns((run for cell in cells.values() for run in cell["runs"].values()),
                             prefix)
    ordered = sorted(cells.values(), key=lambda c: (
        *named_columns(c["cfg"])[:2], int(named_columns(c["cfg"])[2]),
        *named_columns(c["cfg"])[3:5], int(named_columns(c["cfg"])[5]),
        repr(sorted(c["key"].items()))))
    baselines: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for c in ordered:
        if c["key"]["synthesis"] == baseline:
            baselines[_context(c["key"], tuned)].append(c)
    other = _other_columns(ordered)
    names = {id(cell): cell_name(cell["cfg"], extra) for cell, extra in zip(ordered, other)}
    rows = []
    for cell, extra in zip(ordered, other):
        runs = cell["runs"]
        row: dict[str, Any] = dict(zip(KEY_NAMES, named_columns(cell["cfg"])))
        row["protocol"] = run_protocol(cell["cfg"])
        row["other"] = extra
        row["seeds"] = len(runs)
        row["name"] = names[id(cell)]
        row["missing"] = _missing_metrics(cell, prefix, columns)
        row["metrics"] = [name for _, name in columns]
        for metric, name in columns:
            metric = metric if "/" in metric else prefix + metric
            values = [r[metric] * 100 for r in runs.values() if metric in r]
            row[name] = summarise(values) if values else (math.nan, math.nan)
        at: dict[str, list[float]] = defaultdict(list)
        for r in runs.values():
            for metric, value in r.items():
                if metric.startswith(prefix) and metric_rank(metric[len(prefix):]) is not None:
                    at[metric[len(prefix):]].append(value * 100)
        row["at"] = {metric: summarise(values) for metric, values in at.items()}
        base = (None if cell["key"]["synthesis"] == baseline else
                _baseline_of(cell, baselines.get(_context(cell["key"], tuned), []), names))
        for metric, name in DELTAS:
            metric = prefix + metric
            row[name] = None
            if base is None:
                continue
            diffs = [(runs[s][metric] - base["runs"][s][metric]) * 100
                     for s in sorted(runs) if s in base["runs"]
                     and metric in runs[s] and metric in base["runs"][s]]
            if diffs:
                row[name] = (*paired_interval(diffs), len(diffs))
        rows.append(row)
    return rows


def _baseline_of(cell: dict[str, Any], candidates: list[dict[str, Any]],
                 names: dict[int, str]) -> dict[str, Any] | None:
    """The baseline cell a row is paired with: the one of its context, or of several (baseline
    runs that differ in ``see.*`` / ``synthesis.*`` values, which the context leaves out) the
    one that has the row's values of the keys they differ in. Keeping one of several silently
    would pair the row with whichever sorted last."""
    if len(candidates) < 2:
        return candidates[0] if candidates else None
    keys = sorted(set().union(*(c["key"] for c in candidates)))
    varying = [k for k in keys if len({repr(c["key"].get(k, UNKNOWN)) for c in candidates}) > 1]
    chosen = [c for c in candidates
              if all(k in cell["key"] and repr(c["key"].get(k)) == repr(cell["key"][k])
                     for k in varying)]
    if len(chosen) == 1:
        return chosen[0]
    found = "\n  ".join(f"{names[id(c)]}: " + " ".join(f"{k}={c['key'].get(k)}" for k in varying)
                        + f" ({len(c['runs'])} runs, e.g. {min(map(str, c['dirs'].values()))})"
                        for c in candidates)
    own = " ".join(f"{k}={cell['key'].get(k, '(not set)')}" for k in varying)
    raise AmbiguousBaselineError(
        f"{names[id(cell)]} ({own}): {len(candidates)} baseline cells of its config match it, "
        f"and its {', '.join(varying)} picks {'none' if not chosen else 'several'} of them:\n  "
        f"{found}\n(table those baseline runs from separate folders, or give them the row's "
        "values of these keys)")


def _missing_metrics(cell: dict[str, Any], prefix: str, columns: list[tuple[str, str]]
                     ) -> dict[str, list[tuple[Any, Path]]]:
    """``{metric: [(seed, run directory)]}``: the metrics of the table (its ``columns`` and
    the checkpoint's metrics) that some seeds of the cell have and these lack; their means
    are over fewer seeds than the row's ``seeds``."""
    runs = cell["runs"]
    wanted = {metric if "/" in metric else prefix + metric for metric, _ in columns}
    wanted |= {k for r in runs.values() for k in r
               if k.startswith(prefix) and metric_rank(k[len(prefix):]) is not None}
    missing = {}
    for metric in sorted(wanted):
        lacking = sorted((s for s in runs if metric not in runs[s]), key=repr)
        if 0 < len(lacking) < len(runs):
            missing[metric] = [(s, cell["dirs"][s]) for s in lacking]
    return missing


def missing_notes(rows: list[dict[str, Any]]) -> list[str]:
    """One note per row whose seeds do not all have its metrics, naming the row, the metrics
    and the seeds (with their run directories) that lack them."""
    notes = []
    for row in rows:
        by_runs: dict[tuple, list[str]] = defaultdict(list)
        for metric, lacking in row["missing"].items():
            by_runs[tuple(lacking)].append(metric)
        if not by_runs:
            continue
        parts = [", ".join(f"`{m}`" for m in metrics) + " missing from "
                 + ", ".join(f"seed {seed} ({run_dir})" for seed, run_dir in lacking)
                 for lacking, metrics in by_runs.items()]
        notes.append(f"Missing metrics: {row['name']}: " + "; ".join(parts)
                     + f"; those means are over fewer than its {row['seeds']} seeds.")
    return notes

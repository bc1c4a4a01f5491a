"""Runs into tables and pictures, on pandas and scipy.

A *run* is a run directory: ``config.yaml`` (the resolved config), ``metrics.json`` when it
finished, ``csv/metrics.csv`` (the CSV logger) and, with the geometry monitor,
``geometry.csv`` (:mod:`see_dml.callbacks.geometry_monitor`).

- here: :func:`synthesis_name` (the arm of a run: ``SEE``, a baseline's name, ``none``),
  :func:`paired_interval` (the mean of paired differences and its Student-t interval, from
  ``scipy.stats.ttest_rel(...).confidence_interval``) and :func:`markdown_table`, which
  writes every Markdown table of the project;
- the paper-style results table of a sweep: which runs pool into a cell
  (:mod:`~see_dml.reporting.pooling`), their means and paired differences to the baseline
  (:mod:`~see_dml.reporting.pairing`), the published numbers
  (:mod:`~see_dml.reporting.published`), the long and the paper layout
  (:mod:`~see_dml.reporting.layouts`), their plots (:mod:`~see_dml.reporting.figures`) and
  the command line (:mod:`~see_dml.reporting.tables`, ``experiments/make_table.py``);
- :mod:`see_dml.reporting.folds`: the K fold models on the test classes, apart and
  concatenated; :mod:`see_dml.reporting.records`: a sweep's text records, to commit;
- :mod:`see_dml.reporting.geometry_table`: the per-epoch geometry measures of a sweep, both arms
  on one plot per measure.

``python -m see_dml.reporting table|geometry <folders> ...`` runs either.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def finished_runs(folder: Path) -> list[Path]:
    """The run directories below ``folder`` that finished: a ``metrics.json`` beside a
    ``config.yaml`` (Hydra's own ``.hydra/config.yaml`` does not count)."""
    return sorted(m.parent for m in folder.rglob("metrics.json")
                  if (m.parent / "config.yaml").is_file() and ".hydra" not in m.parts)


def synthesis_name(cfg: dict[str, Any]) -> str:
    """``SEE``, the baseline synthesiser's ``name``, or ``none``."""
    if (cfg.get("see") or {}).get("enabled"):
        return "SEE"
    synthesis = cfg.get("synthesis")
    return synthesis.get("name", "?") if synthesis else "none"


def paired_interval(differences: Sequence[float], level: float = 0.95
                    ) -> tuple[float, float, float]:
    """Mean of paired differences and its two-sided Student-t interval ``(mean, low, high)``
    (``nan`` bounds with fewer than two pairs)."""
    from scipy.stats import ttest_rel

    diffs = np.asarray(differences, dtype=float)
    mean = float(diffs.mean())
    if len(diffs) < 2:
        return mean, math.nan, math.nan
    if np.all(diffs == diffs[0]):  # no spread: the interval is the point (scipy gives nan)
        return mean, mean, mean
    ci = ttest_rel(diffs, np.zeros_like(diffs)).confidence_interval(level)
    return mean, float(ci.low), float(ci.high)


def markdown_table(frame: pd.DataFrame | Sequence[Sequence[Any]],
                   headers: Sequence[str] | None = None, floatfmt: str = ".2f") -> str:
    """A Markdown pipe table: of a data frame (its index left out), or of rows with
    ``headers``. Strings are written as they are (``+0.30`` keeps its sign), floats with
    ``floatfmt``, missing values as ``–``."""
    if not isinstance(frame, pd.DataFrame):
        frame = pd.DataFrame([list(r) for r in frame], columns=list(headers or []))

    def cell(value: Any) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "–"
        if isinstance(value, float | np.floating):
            return f"{value:{floatfmt}}"
        return str(value)

    # Written here rather than by DataFrame.to_markdown (tabulate), which pads every cell to
    # its column's width: compact rows keep the committed tables' diffs to what changed.
    rows = [[str(c) for c in frame.columns]] + [[cell(v) for v in r] for r in
                                                 frame.itertuples(index=False)]
    lines = ["| " + " | ".join(row) + " |" for row in rows]
    lines.insert(1, "|" + "---|" * len(frame.columns))
    return "\n".join(lines)


def format_interval(mean: float, low: float, high: float, digits: int = 2) -> str:
    """``+0.32 [+0.07, +0.57]``; the mean alone when the interval is unknown."""
    if math.isnan(low):
        return f"{mean:+.{digits}f}"
    return f"{mean:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"

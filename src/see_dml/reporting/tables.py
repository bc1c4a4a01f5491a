"""Turn training runs into the paper-style table: mean ± std over seeds, and the paired
difference of each synthesiser to the plain loss, seed by seed, with a 95% interval.

    python experiments/make_table.py outputs/synthesis_compare/multiruns/<dir> [more dirs]
        [--baseline none] [--published <published.yaml> | none]
        [--checkpoint val | final | best_on_test] [--layout auto | paper | long]

Every run directory below the given folders (a ``metrics.json`` beside a ``config.yaml``)
is one row of data. Runs are pooled only when their whole resolved config is the same
except the seed (``seed`` and any ``*.seed`` equal to it) and paths (``paths.*``,
``ckpt_path``, ``resume``, values inside the run directory) and the keys that only change
what is reported or logged (``REPORT_KEYS``: ``test_every_epoch``, ``logger``, ...): runs
that differ in ``see.n_points`` or a learning rate are never averaged together. Where two
rows agree in the named columns, an ``other`` column says what else tells them apart.

``--checkpoint``: which test metrics of each run: ``val`` (default; ``test/*``: the
checkpoint with the best ``val/map@r`` on held-out training classes), ``final``
(``test_final/*``: the last epoch) or ``best_on_test`` (``best_on_test/*``: the best epoch on
the test classes, the papers' protocol, for comparison with published numbers only). A run
without the chosen metrics is an error that names it. Both layouts read that checkpoint; the
long one names it above the table unless it is ``val``.

``Δ`` columns: for each row, the baseline row (``--baseline``, default ``none``: no
synthesiser) with the same config apart from the synthesiser (``see.*``, ``synthesis.*``);
for each seed that both ran, the difference of the metric; then the mean difference and
its 95% Student-t interval over those seeds. An interval that contains 0 does not tell an
effect from none. ``R@1 paper``: the authors' published Recall@1 for the row's setting
(``--published``, default the ``published.yaml`` shipped beside this module: dataset,
backbone, embedding size, loss and synthesis must match; a published row of another backbone
that the file names as the closest is shown with that backbone in brackets), and
``ΔR@1 paper``, our mean minus it; the sources follow the table.

``--layout long``: one row per dataset and setting; writes ``results.md``, ``results.csv`` and
``results.png`` into the first folder. ``--layout paper``: the SEE paper's layout, built from
the same rows: one line per method (synthesiser; the loss too where runs differ in it) x
backbone / embedding size, one group of columns per dataset (CUB200, Cars196,
StanfordOnlineProducts, InShop, then others alphabetically) with R@K for the first four Ks the
runs report, MAP@R, ``n`` (seeds, where they differ between cells), ``R@1 paper``, ``ΔR@1
paper`` and the paired ``ΔR@1``; a line above it names the checkpoint; writes
``results_paper.md``, ``results_paper.csv`` and ``results_paper.png`` (R@1 bars per dataset,
the published R@1 marked). ``--layout auto`` (default): paper when the
runs cover more than one dataset, long otherwise. Prints the Markdown table either way.

Provenance (``provenance/*`` in metrics.json, :mod:`see_dml.provenance`): the seeds of a
cell must also agree in every recorded library version (torch, Lightning, timm,
pytorch-metric-learning), the device kind and count, and the code version (commit, dirty
flag); a cell whose runs differ is an error that lists the runs and the values, because its
spread would mix the code or setup with the seeds. ``--pool-commits`` pools across code
versions only (libraries and devices stay strict) and names the commits under the table. A
value that is ``unknown``, or a run from before provenance was recorded, agrees with any:
such runs pool, and a note under the table counts the runs without provenance.

Notes under the table also name every cell where some seeds lack a metric that others have
(its mean is over fewer seeds than the ``seeds`` column says). A row whose context has
several baseline cells (baseline runs that differ only in ``see.*`` / ``synthesis.*``
values) is paired with the one that agrees with it on the keys those cells differ in; when
none or several do, that is an error naming the candidates.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from see_dml.cli import exit_with_error
from see_dml.config import ADDED_KEYS, class_name, flatten
from see_dml.errors import AmbiguousBaselineError, ProvenanceMismatchError, TableError
from see_dml.reporting import finished_runs, markdown_table, paired_interval, synthesis_name

#: ``--checkpoint``: the prefix of its metrics in metrics.json, and what it is
CHECKPOINTS = {
    "val": ("test/", "validation-selected: best val/map@r on held-out training classes"),
    "final": ("test_final/", "final epoch"),
    "best_on_test": ("best_on_test/", "best epoch on the test classes: the papers' protocol, "
                     "for comparison with published numbers only"),
}
#: the long table's metric columns: a key without ``/`` is read under the ``--checkpoint``
#: prefix, one with a prefix as it is
METRICS = [("recall@1", "R@1"), ("map@r", "MAP@R"), ("r_precision", "RP"),
           ("test_final/recall@1", "R@1 final"), ("test_final/map@r", "MAP@R final")]
#: metrics (under the ``--checkpoint`` prefix) whose paired difference to the baseline is
#: reported
DELTAS = [("map@r", "ΔMAP@R"), ("recall@1", "ΔR@1")]
#: metrics of a checkpoint that are fractions, shown in percent (``row["at"]``)
PERCENT = re.compile(r"^(recall@\d+|map@r|r_precision|precision@1)$")
#: the published R@1 (a string: the number, and another backbone's name when it stands in) and
#: our mean R@1 minus it, inserted after our R@1
PUBLISHED = ("R@1 paper", "ΔR@1 paper")
PUBLISHED_FILE = Path(__file__).with_name("published.yaml")
KEY_NAMES = ("dataset", "backbone", "dim", "loss", "synthesis", "epochs")
PATH_KEYS = ("paths", "ckpt_path", "resume")
#: keys that change what is evaluated, reported or logged after training, never the weights
#: (``test_every_epoch`` leaves them bit-identical: tests/test_best_on_test.py): runs that
#: differ only in these, or that predate one of them, are seeds of one cell
REPORT_KEYS = ("test_every_epoch", "test_epochs", "test_final", "nmi", "knn_backend",
               "logger", "tags", "trainer.enable_progress_bar", "callbacks.embedding_export",
               "callbacks.lr_monitor", "data.eval_batch_size", "objective",
               # torch's CPU threads change the last bits of the weights, not the experiment
               # (provenance/threads records them); runs from before the key pool with it
               "threads")
SYNTHESIS_KEYS = ("see", "synthesis")
#: the ``provenance/*`` keys of metrics.json (see_dml.provenance, not imported: it loads torch)
#: that the seeds of one cell must agree in: the code version (``--pool-commits`` lets it
#: differ), then the libraries and devices, which stay strict
CODE_KEYS = ("provenance/commit", "provenance/dirty")
SETUP_KEYS = ("provenance/torch", "provenance/lightning", "provenance/timm",
              "provenance/pytorch_metric_learning", "provenance/device",
              "provenance/device_count")
#: ``provenance/*`` keys recorded but not compared: the CPU threads and vector instructions
#: change the last bits of a run's numbers, not its experiment (seeds may differ in them)
RECORDED_KEYS = ("provenance/threads", "provenance/cpu_capability")
#: a provenance value that tells nothing (see_dml.provenance.UNKNOWN): it agrees with any
UNKNOWN = "unknown"

Run = tuple[dict[str, Any], dict[str, float]]  # (flattened config, metrics)


def config_key(cfg: dict[str, Any]) -> dict[str, Any]:
    """The resolved config less the seeds, paths and ``REPORT_KEYS``: runs with equal keys
    are seeds of one cell.

    Every ``*.seed`` key is a seed: ``dataset.seed: ${seed}`` resolves to the run's seed, and
    a fixed one (``callbacks.geometry.seed: 0``) equals the run's seed in one run and not in
    the others, which would split a cell by seed. A key added to the config after a run was
    made (:data:`see_dml.config.ADDED_KEYS`) counts with the value that did what that run's
    code did.
    """
    run_dir = str((cfg.get("paths") or {}).get("run_dir") or "\0")
    flat = {**ADDED_KEYS, **flatten(cfg)}
    key = {}
    for name, value in flat.items():
        if name.split(".")[0] in PATH_KEYS:
            continue
        if any(name == k or name.startswith(k + ".") for k in REPORT_KEYS):
            continue
        if name.split(".")[-1] == "seed":
            continue
        if isinstance(value, str) and run_dir in value:
            continue
        key[name] = value
    key["synthesis"] = synthesis_name(cfg)  # the label, so it is always part of the key
    return key


def named_columns(cfg: dict[str, Any]) -> tuple[str, ...]:
    dataset = class_name(cfg["dataset"]["_target_"])
    model = cfg["model"]
    backbone = model.get("backbone")
    if isinstance(backbone, dict):  # a backbone node (timm name or small_cnn)
        backbone = backbone.get("name", "?")
    return (dataset, str(backbone), str(model["embed_dim"]), cfg["loss"]["name"],
            synthesis_name(cfg), str(cfg["trainer"]["max_epochs"]))


def unfinished(folders: list[Path]) -> list[Path]:
    """Run directories (a ``config.yaml`` written at the start of training) that have no
    ``metrics.json``: still running, failed or stopped; the table leaves them out."""
    return [c.parent for folder in folders for c in sorted(folder.rglob("config.yaml"))
            if not (c.parent / "metrics.json").exists() and ".hydra" not in c.parts]


def collect(folders: list[Path]) -> dict[tuple, dict[str, Any]]:
    """``{cell key: {"cfg": a config, "key": flattened key, "runs": {seed: metrics},
    "dirs": {seed: run directory}}}``."""
    cells: dict[tuple, dict[str, Any]] = {}
    for folder in folders:
        for run in finished_runs(folder):
            metrics_file = run / "metrics.json"
            cfg = yaml.safe_load((run / "config.yaml").read_text())
            key = config_key(cfg)
            frozen = tuple(sorted((k, repr(v)) for k, v in key.items()))
            cell = cells.setdefault(frozen, {"cfg": cfg, "key": key, "runs": {}, "dirs": {}})
            seed = cfg.get("seed")
            if seed in cell["runs"]:
                raise TableError(f"two runs of one config with seed {seed}: {metrics_file.parent}"
                                 " and another; give each sweep its own folder")
            cell["runs"][seed] = json.loads(metrics_file.read_text())
            cell["dirs"][seed] = metrics_file.parent
    return cells


def listing(paths: list[Any], limit: int = 10) -> str:
    """The first ``limit`` of ``paths``, one indented line each, then how many more."""
    more = f"\n  ... and {len(paths) - limit} more" if len(paths) > limit else ""
    return "\n  ".join(str(p) for p in paths[:limit]) + more


def check_checkpoint(cells: dict[tuple, dict[str, Any]], checkpoint: str) -> None:
    """Every run must have metrics of the ``--checkpoint`` chosen: a run without them would
    leave its seed out of every mean (or the table empty) without a word."""
    prefix = CHECKPOINTS[checkpoint][0]
    runs = [(cell["dirs"][seed], metrics) for cell in cells.values()
            for seed, metrics in cell["runs"].items()]
    missing = sorted(str(run_dir) for run_dir, metrics in runs
                     if not any(k.startswith(prefix) for k in metrics))
    if missing:
        others = " or ".join(c for c in CHECKPOINTS if c != checkpoint)
        raise TableError(f"--checkpoint {checkpoint}: {len(missing)} of {len(runs)} runs "
                         f"have no '{prefix}*' metrics in metrics.json:\n  {listing(missing)}\n"
                         f"(runs from before these were recorded, or that did not record "
                         f"them: rerun them, or choose --checkpoint {others})")


def _known(value: Any) -> bool:
    return value is not None and value != UNKNOWN


def cell_name(cfg: dict[str, Any], other: str = "") -> str:
    """A cell as messages and notes name it: its named columns, and ``other`` when set."""
    named = " ".join(f"{k}={v}" for k, v in zip(KEY_NAMES, named_columns(cfg)))
    return f"{named} {other}".strip()


def check_provenance(cells: dict[tuple, dict[str, Any]], pool_commits: bool = False
                     ) -> list[str]:
    """Refuse to pool the seeds of a cell that differ in a known provenance value (the code
    version too unless ``pool_commits``): one :class:`ProvenanceMismatchError` listing every
    such cell, its runs and their values. Returns the notes for under the table: how many runs
    record no provenance, and with ``pool_commits`` which code versions were pooled."""
    strict = SETUP_KEYS if pool_commits else (*CODE_KEYS, *SETUP_KEYS)
    ordered = list(cells.values())
    problems, mixed = [], []
    for cell, other in zip(ordered, _other_columns(ordered)):
        runs = sorted(cell["runs"].items(), key=lambda item: str(cell["dirs"][item[0]]))
        differ = [k for k in strict
                  if len({repr(m[k]) for _, m in runs if _known(m.get(k))}) > 1]
        if differ:
            lines = [f"{cell['dirs'][seed]}: " + " ".join(f"{k}={_shown(m.get(k))}"
                                                          for k in differ)
                     for seed, m in runs]
            problems.append(f"{cell_name(cell['cfg'], other)}: differ in "
                            f"{', '.join(differ)}:\n    " + "\n    ".join(lines))
        if pool_commits and len({_code_version(m) for _, m in runs
                                 if _known(m.get(CODE_KEYS[0]))}) > 1:
            mixed.append(cell)
    if problems:
        what = "library versions, devices" + ("" if pool_commits else " or code versions")
        hint = ("" if pool_commits else "; --pool-commits pools across code versions "
                "(commit, dirty) only")
        raise ProvenanceMismatchError(
            f"runs of one config differ in their {what} (provenance/* in metrics.json), so "
            f"their seeds are not pooled:\n  " + "\n  ".join(problems) + "\n(rerun them with "
            f"one setup, or table them from separate folders{hint})")
    return _provenance_notes(ordered, mixed)


def _shown(value: Any) -> str:
    """A provenance value as metrics.json writes it (``true``, ``1``, ``2.4.0``)."""
    if value is None:
        return UNKNOWN
    return value if isinstance(value, str) else json.dumps(value)


def _code_version(metrics: dict[str, Any]) -> str:
    """A run's commit (its first 12 digits), ``+dirty`` when its checkout had changes."""
    commit = metrics.get(CODE_KEYS[0])
    if not _known(commit):
        return UNKNOWN
    return str(commit)[:12] + ("+dirty" if metrics.get(CODE_KEYS[1]) is True else "")


def _provenance_notes(cells: list[dict[str, Any]], mixed: list[dict[str, Any]]) -> list[str]:
    notes = []
    runs = [m for cell in cells for m in cell["runs"].values()]
    bare = sum(not any(k.startswith("provenance/") for k in m) for m in runs)
    if bare:
        notes.append(f"Provenance: {bare} of {len(runs)} runs record none (from before "
                     "`provenance/*` was written to metrics.json): they are pooled on their "
                     "config alone, whatever code, libraries or devices made them.")
    if mixed:
        versions = Counter(_code_version(m) for cell in mixed for m in cell["runs"].values())
        dirty = " (+dirty: the checkout had uncommitted changes)" if any(
            v.endswith("+dirty") for v in versions) else ""
        notes.append(f"Code versions pooled (`--pool-commits`) in {len(mixed)} of {len(cells)} "
                     "cells, from the commits " + ", ".join(
                         f"{v} ({n} run{'s' if n != 1 else ''})" for v, n in sorted(
                             versions.items())) + f"{dirty}.")
    return notes


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


def table_rows(cells: dict[tuple, dict[str, Any]], baseline: str = "none",
               checkpoint: str = "val", tuned: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """One row per cell: the named columns, mean ± std of each metric of ``METRICS`` and the
    paired ``DELTAS`` (relative keys read under the ``checkpoint``'s prefix), and ``at``:
    ``{metric: (mean, std)}`` of every percent metric of that checkpoint (all Recall@K),
    which the paper layout shows. ``tuned``: keys a row and its baseline may differ in
    (:func:`_context`)."""
    prefix = CHECKPOINTS[checkpoint][0]
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
        row["missing"] = _missing_metrics(cell, prefix)
        for metric, name in METRICS:
            metric = metric if "/" in metric else prefix + metric
            values = [r[metric] * 100 for r in runs.values() if metric in r]
            row[name] = summarise(values) if values else (math.nan, math.nan)
        at: dict[str, list[float]] = defaultdict(list)
        for r in runs.values():
            for metric, value in r.items():
                if metric.startswith(prefix) and PERCENT.match(metric[len(prefix):]):
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


def _missing_metrics(cell: dict[str, Any], prefix: str) -> dict[str, list[tuple[Any, Path]]]:
    """``{metric: [(seed, run directory)]}``: the metrics of the table (``METRICS`` and the
    checkpoint's percent metrics) that some seeds of the cell have and these lack; their means
    are over fewer seeds than the row's ``seeds``."""
    runs = cell["runs"]
    wanted = {metric if "/" in metric else prefix + metric for metric, _ in METRICS}
    wanted |= {k for r in runs.values() for k in r
               if k.startswith(prefix) and PERCENT.match(k[len(prefix):])}
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


def load_published(path: Path) -> dict[str, Any]:
    """``published.yaml``: ``{"sources": {name: {...}}, "results": [entry]}``."""
    published = yaml.safe_load(path.read_text())
    for entry in published["results"]:
        if entry["source"] not in published["sources"]:
            raise TableError(f"{path}: source '{entry['source']}' is not under sources:")
    return published


def published_entry(row: dict[str, Any], published: dict[str, Any]
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


#: the two protocols (conf/protocol/): what each is, for the line above every table
PROTOCOLS = {
    "authors": "the authors' (every training class trains; the test split is scored in the "
               "epochs their scripts evaluate)",
    "held_out": "ours (held-out validation classes choose the checkpoint; the test classes "
                "are read once)",
}


def run_protocol(cfg: dict[str, Any]) -> str:
    """A run's protocol: its ``protocol`` key, or for runs from before that key, ``authors``
    when it had no validation classes and scored the test split every epoch."""
    if cfg.get("protocol"):
        return str(cfg["protocol"])
    val_fraction = (cfg.get("dataset") or {}).get("val_fraction")
    return "authors" if val_fraction == 0 and cfg.get("test_every_epoch") else "held_out"


def protocol_line(rows: list[dict[str, Any]]) -> str:
    """Which protocol the table's runs follow (a column when they differ)."""
    names = sorted({row["protocol"] for row in rows})
    if len(names) == 1:
        return f"Protocol: {PROTOCOLS.get(names[0], names[0])} (`protocol={names[0]}`)."
    return ("Protocols differ between rows (the protocol column): " + "; ".join(
        f"`{n}`: {PROTOCOLS.get(n, n)}" for n in names) + ".")


def add_published(rows: list[dict[str, Any]], published: dict[str, Any],
                  checkpoint: str = "val") -> list[str]:
    """Fill the ``PUBLISHED`` columns of each row; returns the notes on the sources used.

    A published number is set only beside a run of the authors' protocol read at their
    checkpoint (``--checkpoint best_on_test``): the authors trained on every training class
    and reported the best epoch on test, and a number of the other protocol is not that
    number. Rows that have a published number but not that protocol and checkpoint get a
    note saying why the column is empty."""
    used: dict[str, None] = {}
    refused = 0
    for row in rows:
        row[PUBLISHED[0]] = row[PUBLISHED[1]] = None
        match = published_entry(row, published)
        if match is None:
            continue
        if row["protocol"] != "authors" or checkpoint != "best_on_test":
            refused += 1
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
        notes.append(f"R@1 paper: {source['cite']}, {where} ({source['protocol']}; ours: the "
                     "authors' protocol, best epoch on the test classes).")
    if refused:
        notes.append(f"R@1 paper: not shown beside {refused} row(s) with a published number: "
                     "it is shown only beside runs of the authors' protocol "
                     "(`protocol=authors`) read with `--checkpoint best_on_test`, as the "
                     "authors report it.")
    return notes


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
    prefix = CHECKPOINTS[checkpoint][0]
    # the final epoch's columns repeat R@1 and MAP@R when those are the final epoch's too
    cols += ["seeds", *(name for metric, name in METRICS if not metric.startswith(prefix))]
    if any(row.get(PUBLISHED[0]) is not None for row in rows):
        at = cols.index("R@1") + 1
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
        for _, name in METRICS:
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


# --- the paper layout: the long table's rows pivoted, datasets side by side ---

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
    cols = [(f"{name} R@{k}", f"recall@{k}") for k in table["ks"][dataset]]
    cols.append((f"{name} MAP@R", "map@r"))
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


def _write_tables(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    """The tables, plot and CSV of ``main``'s arguments; returns the Markdown printed."""
    cells = collect(args.folders)
    if not cells:
        parser.error(f"no finished runs (metrics.json + config.yaml) under {args.folders}")
    check_checkpoint(cells, args.checkpoint)
    provenance_notes = check_provenance(cells, args.pool_commits)
    rows = table_rows(cells, args.baseline, args.checkpoint, tuple(args.tuned))
    notes = ([] if args.published == "none"
             else add_published(rows, load_published(Path(args.published)), args.checkpoint))
    notes += [*missing_notes(rows), *provenance_notes]
    layout = args.layout
    if layout == "auto":
        layout = "paper" if len({row["dataset"] for row in rows}) > 1 else "long"
    out = args.folders[0]
    if layout == "paper":
        table = paper_table(rows, args.baseline)
        markdown = "\n\n".join([paper_heading(table, args.checkpoint), to_paper_markdown(table),
                                 protocol_line(rows), *paper_legend(table, args.baseline),
                                 *notes])
        (out / "results_paper.md").write_text(markdown + "\n")
        (out / "results_paper.csv").write_text(to_paper_csv(table) + "\n")
        paper_plot(table, out / "results_paper.png")
    else:
        prefix, what = CHECKPOINTS[args.checkpoint]
        heading = ([] if args.checkpoint == "val" else
                   [f"Checkpoint: {what} (`--checkpoint {args.checkpoint}`, `{prefix}*` in "
                    "metrics.json)."])
        markdown = "\n\n".join([*heading, to_markdown(rows, args.checkpoint),
                                 protocol_line(rows), *notes])
        (out / "results.md").write_text(markdown + "\n")
        (out / "results.csv").write_text(to_csv(rows) + "\n")
        plot(rows, out / "results.png", tuple(args.plot_metrics))
    return markdown


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--baseline", default="none",
                        help="synthesis label of the rows the Δ columns compare to")
    parser.add_argument("--checkpoint", choices=list(CHECKPOINTS), default="val",
                        help="which checkpoint's test metrics: " + "; ".join(
                            f"{name}: {what} ({prefix}*)"
                            for name, (prefix, what) in CHECKPOINTS.items()))
    parser.add_argument("--layout", choices=LAYOUTS, default="auto",
                        help="paper: datasets side by side (results_paper.md/.csv); long: one "
                             "row per dataset and setting (results.md/.csv/.png); auto: paper "
                             "when the runs cover more than one dataset")
    parser.add_argument("--plot-metrics", nargs="+", default=["MAP@R"],
                        choices=[name for _, name in METRICS],
                        help="metrics plotted against embedding size, one panel each (long "
                             "layout)")
    parser.add_argument("--published", default=str(PUBLISHED_FILE),
                        help="YAML of published R@1 shown beside ours ('none': no column)")
    parser.add_argument("--pool-commits", action="store_true",
                        help="pool the seeds of a config across code versions "
                             "(provenance/commit, provenance/dirty), naming the commits under "
                             "the table; library versions and devices must still agree")
    parser.add_argument("--tuned", nargs="+", default=[], metavar="KEY",
                        help="config keys each arm tuned for itself (python -m see_dml.tune): "
                             "a row is paired with the baseline that differs in these keys "
                             "(and the keys under them), seed by seed")
    args = parser.parse_args(argv)
    for folder in args.folders:
        if not folder.is_dir():
            parser.error(f"no such folder: {folder}")
    try:
        markdown = _write_tables(args, parser)
    except TableError as err:
        exit_with_error(str(err))
    print(markdown)
    missing = unfinished(args.folders)
    if missing:  # said where it is seen, not written into the results files
        print(f"\nNot in the table: {len(missing)} run(s) without metrics.json (still "
              f"running, failed or stopped; see each train.log):\n  {listing(missing)}",
              file=sys.stderr)
    return markdown


def cli() -> None:
    """The ``see-dml-table`` console script: :func:`main`, exit status 0 (a console script's
    return value would be its exit status, and the Markdown is no status)."""
    main()

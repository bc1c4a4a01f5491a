"""Which runs pool into one cell of a results table.

Runs pool only when their whole resolved config is the same except the seed (``seed`` and
any ``*.seed`` equal to it), the paths and :data:`REPORT_KEYS`; the seeds of a cell must also
agree in their provenance (library versions, devices, code version). How
``experiments/make_table.py`` uses it: ``experiments/README.md``.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import yaml

from see_dml.reporting import finished_runs, synthesis_name
from see_dml.runtime.config import ADDED_KEYS, class_name, flatten
from see_dml.runtime.errors import ProvenanceMismatchError, TableError

#: ``--checkpoint``: the prefix of its metrics in metrics.json, and what it is
CHECKPOINTS = {
    "val": ("test/", "validation-selected: best val/map@r on held-out training classes"),
    "final": ("test_final/", "final epoch"),
    "best_on_test": ("best_on_test/", "best epoch on the test classes: the papers' protocol, "
                     "for comparison with published numbers only"),
}


KEY_NAMES = ("dataset", "backbone", "dim", "loss", "synthesis", "epochs")


PATH_KEYS = ("paths", "ckpt_path", "resume")


#: keys that change what is evaluated, reported or logged after training, never the weights
#: (``test_every_epoch`` leaves them bit-identical: tests/test_best_on_test.py): runs that
#: differ only in these, or that predate one of them, are seeds of one cell
REPORT_KEYS = ("test_every_epoch", "test_epochs", "test_final", "nmi", "metrics",
               "knn_backend", "logger", "tags", "trainer.enable_progress_bar",
               "callbacks.embedding_export", "callbacks.lr_monitor", "data.eval_batch_size",
               "objective",
               # torch's CPU threads change the last bits of the weights, not the experiment
               # (provenance/threads records them); runs from before the key pool with it
               "threads")


SYNTHESIS_KEYS = ("see", "synthesis")


#: the ``provenance/*`` keys of metrics.json (see_dml.runtime.provenance, not imported: it
#: loads torch) that the seeds of one cell must agree in: the code version
#: (``--pool-commits`` lets it differ), then the libraries and devices, which stay strict
CODE_KEYS = ("provenance/commit", "provenance/dirty")


SETUP_KEYS = ("provenance/torch", "provenance/lightning", "provenance/timm",
              "provenance/pytorch_metric_learning", "provenance/device",
              "provenance/device_count")


#: ``provenance/*`` keys recorded but not compared: the CPU threads and vector instructions
#: change the last bits of a run's numbers, not its experiment (seeds may differ in them)
RECORDED_KEYS = ("provenance/threads", "provenance/cpu_capability")


#: a provenance value that tells nothing (see_dml.runtime.provenance.UNKNOWN): it agrees with any
UNKNOWN = "unknown"


Run = tuple[dict[str, Any], dict[str, float]]  # (flattened config, metrics)


def config_key(cfg: dict[str, Any]) -> dict[str, Any]:
    """The resolved config less the seeds, paths and ``REPORT_KEYS``: runs with equal keys
    are seeds of one cell.

    Every ``*.seed`` key is a seed: ``dataset.seed: ${seed}`` resolves to the run's seed, and
    a fixed one (``callbacks.geometry.seed: 0``) equals the run's seed in one run and not in
    the others, which would split a cell by seed. A key added to the config after a run was
    made (:data:`see_dml.runtime.config.ADDED_KEYS`) counts with the value that did what that run's
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

"""The K models of a class-disjoint k-fold validation on the test classes, as "A Metric
Learning Reality Check" (Musgrave et al., ECCV 2020) reports them:
``python -m see_dml.reporting folds <run dirs> [--out FILE.md]``.

Each run is one fold's model (``dataset.folds=K dataset.fold=i``, docs/tuning.md); its
``embeddings_test.npz`` (or ``embeddings_query.npz`` and ``embeddings_gallery.npz``) are the
test embeddings of its checkpoint chosen on its validation fold, which training writes
(``callbacks.embedding_export``). Reported:

- **separately**: every metric of each model, their mean ± sample std over the K models;
- **concatenated**: per test image the K models' embeddings, each L2-normalised, concatenated
  into one ``K·d`` vector and L2-normalised again, then the same metrics (one model of K
  heads: how the Reality Check reports a k-fold result).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from see_dml.runtime.errors import ConfigError

if TYPE_CHECKING:
    from see_dml.metrics import MetricSet
    from see_dml.metrics.knn import Backend


def _l2(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def concatenate(embeddings: Sequence[np.ndarray]) -> np.ndarray:
    """``(N, sum d_k)``: the models' ``(N, d_k)`` embeddings of the same N images (rows in the
    same order), each L2-normalised, side by side, and the whole row L2-normalised."""
    if not embeddings:
        raise ValueError("no embeddings to concatenate")
    n = {len(e) for e in embeddings}
    if len(n) != 1:
        raise ValueError(f"the models embedded different numbers of images: {sorted(n)}")
    return _l2(np.concatenate([_l2(np.asarray(e, dtype=np.float32)) for e in embeddings],
                              axis=1)).astype(np.float32)


def fold_metrics(models: Sequence[dict[str, tuple[np.ndarray, np.ndarray]]],
                 ks: Sequence[int] = (1, 2, 4, 8), backend: Backend = "faiss",
                 metric_set: MetricSet | None = None) -> dict[str, Any]:
    """The metrics of each model and of their concatenation.

    Args:
        models: per model ``{split: (embeddings (N, d), labels (N,))}``, with split ``test``
            (all-vs-all) or ``query`` and ``gallery``; every model's rows are the same images
            in the same order (the same labels).
        ks: the K of Recall@K where the metric set leaves them to the data.
        metric_set: what to compute (default :class:`see_dml.metrics.MetricSet`); ``main``
            takes the runs' own (their config's ``metrics``).

    Returns:
        ``{"separate": [metrics of each model], "mean": {...}, "std": {...} (sample std, 0
        for one model), "concatenated": {...}}``.
    """
    from see_dml.metrics import retrieval_metrics

    if not models:
        raise ValueError("no fold models")
    names = list(models[0])
    for i, model in enumerate(models[1:], 1):
        if list(model) != names:
            raise ValueError(f"model {i} has splits {list(model)}, model 0 {names}")
        for name in names:
            if not np.array_equal(model[name][1], models[0][name][1]):
                raise ValueError(f"model {i}'s '{name}' rows are other images (labels differ "
                                 "from model 0's): every model must embed the same test set")

    def metrics(parts: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
        if "test" in parts:
            emb, lab = parts["test"]
            return retrieval_metrics(emb, lab, ks=ks, metric_set=metric_set, backend=backend)
        (q, ql), (g, gl) = parts["query"], parts["gallery"]
        return retrieval_metrics(q, ql, g, gl, ks=ks, metric_set=metric_set, backend=backend)

    separate = [metrics(m) for m in models]
    joined = {name: (concatenate([m[name][0] for m in models]), models[0][name][1])
              for name in names}
    keys = list(separate[0])
    values = {k: np.array([s[k] for s in separate], dtype=np.float64) for k in keys}
    return {
        "separate": separate,
        "mean": {k: float(v.mean()) for k, v in values.items()},
        "std": {k: float(v.std(ddof=1)) if len(v) > 1 else 0.0 for k, v in values.items()},
        "concatenated": metrics(joined),
    }


def load_run(run_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A fold run's exported test embeddings, rows in split order."""
    names = ["test"] if (run_dir / "embeddings_test.npz").is_file() else ["query", "gallery"]
    out = {}
    for name in names:
        path = run_dir / f"embeddings_{name}.npz"
        if not path.is_file():
            raise ConfigError(
                f"{run_dir}: no embeddings_test.npz (nor embeddings_query/gallery.npz): train "
                "the fold with the embedding export on (callbacks.embedding_export, the "
                "default), or write them with python -m see_dml.evaluate "
                f"ckpt_path=<its checkpoint> export.enabled=true output={run_dir}")
        with np.load(path, allow_pickle=False) as data:
            order = np.argsort(data["indices"], kind="stable")
            out[name] = (data["embeddings"][order], data["labels"][order])
    return out


def _ks(run_dir: Path) -> tuple[int, ...]:
    """The K of Recall@K the run reported (its metrics.json), else 1, 2, 4, 8."""
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return (1, 2, 4, 8)
    ks = sorted(int(k.split("@")[1]) for k in metrics if k.startswith("test/recall@"))
    return tuple(ks) or (1, 2, 4, 8)


def _metric_set(run_dir: Path) -> MetricSet:
    """The metric set the run was trained with (its ``config.yaml``'s ``metrics``; the
    defaults for a run from before that group)."""
    from see_dml.metrics import MetricSet

    try:
        import yaml

        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, ValueError):
        cfg = None
    try:
        return MetricSet.from_config(cfg if isinstance(cfg, dict) else None)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{run_dir / 'config.yaml'}: metrics.{err}") from err


def _fold_of(run_dir: Path) -> str:
    try:
        import yaml

        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
        folds, fold = cfg["dataset"].get("folds"), cfg["dataset"].get("fold")
        return f"{fold} of {folds}" if folds else "–"
    except (OSError, KeyError, TypeError, AttributeError, ValueError):
        return "?"


def format_table(result: dict[str, Any], runs: Sequence[Path]) -> str:
    """The table of :func:`fold_metrics`' result: a column per metric it holds, ordered and
    named by :func:`see_dml.metrics.shown_metrics` and :func:`see_dml.metrics.display_name`."""
    from see_dml.metrics.metric_set import display_name, shown_metrics

    shown = shown_metrics(result["mean"])
    head = "| | " + " | ".join(display_name(k) for k in shown) + " |"
    lines = [head, "|" + "---|" * (len(shown) + 1)]
    for run, metrics in zip(runs, result["separate"], strict=True):
        lines.append(f"| fold {_fold_of(run)} ({run.name}) | "
                     + " | ".join(f"{100 * metrics[k]:.2f}" for k in shown) + " |")
    lines.append(f"| **{len(runs)} models, mean ± std** | " + " | ".join(
        f"{100 * result['mean'][k]:.2f} ± {100 * result['std'][k]:.2f}" for k in shown) + " |")
    lines.append(f"| **concatenated ({len(runs)} × d)** | " + " | ".join(
        f"{100 * result['concatenated'][k]:.2f}" for k in shown) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m see_dml.reporting folds",
        description="The K fold models of a k-fold validation on the test classes: each, "
                    "their mean ± std, and their concatenated embedding (docs/tuning.md)")
    parser.add_argument("runs", nargs="+", type=Path, help="the K fold run directories")
    parser.add_argument("--out", type=Path, help="also write the table (.md) and the numbers "
                        "(.json beside it)")
    args = parser.parse_args(argv)
    from see_dml.runtime.cli import exit_with_error

    runs = [Path(r) for r in args.runs]
    missing = [r for r in runs if not r.is_dir()]
    if missing:
        exit_with_error(f"{missing[0]} is not a run directory")
    try:
        models = [load_run(r) for r in runs]
        result = fold_metrics(models, _ks(runs[0]), metric_set=_metric_set(runs[0]))
    except (ConfigError, ValueError) as err:
        exit_with_error(str(err))
    table = format_table(result, runs)
    print(table)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(table + "\n")
        args.out.with_suffix(".json").write_text(json.dumps(
            {"runs": [str(r) for r in runs], **result}, indent=2) + "\n")
    return 0

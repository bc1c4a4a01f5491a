"""Evaluate a checkpoint: ``python -m see_dml.evaluate ckpt_path=... [key=value ...]``.

The model is rebuilt from the run config stored in the checkpoint
(``checkpoint["see_dml_config"]``), so no training config has to be given again. The test
split (or query + gallery for In-Shop) is embedded with a plain loop, then evaluated and
reported exactly as training's test is (:mod:`see_dml.evaluation.report`: one kNN search, one
report): the metric set of ``metrics`` (``conf/metrics/default.yaml``: Recall@K at the
dataset's Ks, Precision@1, MAP@R and R-Precision; ``metrics.precision_at=[10]`` adds
Precision@10) is printed as a Markdown table and written to ``metrics.json`` /
``metrics.md`` in the output directory (``${paths.output_dir}/evaluate/runs/<time>_<id>``);
the last line printed names it.

Which dataset (see ``conf/evaluate.yaml``):

- nothing given: the checkpoint's dataset, exactly as it was trained (same splits, seed,
  transforms);
- ``dataset.root=/elsewhere`` (also ``dataset.strict_counts``, ``dataset.on_error``, or any
  other key with ``+dataset.<key>=...``): the checkpoint's dataset with those keys changed —
  every non-null key under ``dataset`` replaces the checkpoint's;
- ``dataset=<name>`` (a ``conf/dataset`` option, plus its own ``dataset.<key>=...``):
  another dataset, composed from its config file. Its image kind and Recall@K Ks then
  follow that dataset (transform sizes and batch size stay the checkpoint's); ``${seed}``
  in it is the checkpoint's seed.

Options: ``split=test|val`` (val: the held-out training classes), ``export.enabled=true``
(``embeddings_<split>.npz``, plus ``.parquet`` with ``export.format=parquet``),
``plots.enabled=true`` (``projection_<query split>.png``, ``recall_at_k.png``,
``retrieval_grid_<query split>.png``), ``device=auto|cpu|cuda``,
``batch_size=...``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from see_dml.checkpoints.read import check_ckpt_path
from see_dml.evaluation.embedding_files import EXPORT_FORMATS
from see_dml.runtime.config import hydra_main, warn_ignored_keys
from see_dml.runtime.errors import ConfigError
from see_dml.runtime.extras import check_config as check_config_extras
from see_dml.runtime.schema import check_schema
from see_dml.serving.inference import (
    EVAL_SPLITS,
    InferenceRun,
    embed_split,
    eval_split_names,
    torch_threads,
)
from see_dml.training.config_checks import check_knn_backend, check_metric_set


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt_path`` as ``cfg`` says; return what ``metrics.json`` holds."""
    warn_ignored_keys(cfg, "evaluate")
    check_config_extras(cfg)  # export.format=parquet without pyarrow: one line, before the work
    split = str(cfg.split)
    if split not in EVAL_SPLITS:  # before seconds of loading
        raise ConfigError(f"split must be one of {', '.join(EVAL_SPLITS)}; got '{split}'")
    if cfg.export.format not in EXPORT_FORMATS:
        raise ConfigError(f"export.format must be {' or '.join(EXPORT_FORMATS)}, got "
                          f"'{cfg.export.format}'")
    check_knn_backend(cfg)
    check_schema(cfg, keys=("metrics",))  # a misspelt metrics.<key>: one line, like train's
    check_metric_set(cfg)
    check_ckpt_path(None if OmegaConf.is_missing(cfg, "ckpt_path") else cfg.ckpt_path)
    from see_dml.serving.inference import open_checkpoint

    run = open_checkpoint(cfg)
    # the CPU threads the run was trained and tested with: the same embeddings, bit for bit,
    # as train's test, whatever this machine's default
    with torch_threads(run.config.get("threads")):
        return _evaluate(cfg, run, split)


def _evaluate(cfg: DictConfig, run: InferenceRun, split: str) -> dict[str, Any]:
    from see_dml.evaluation.report import ReportOptions, evaluate_embeddings, report, write_metrics
    from see_dml.metrics.metric_set import MetricSet

    dm = run.datamodule(setup=True)
    names = eval_split_names(dm, split)
    out_dir = Path(cfg.paths.run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    # The embeddings stay where the model ran; the search that train's test runs
    # (see_dml.evaluation.report.evaluate_embeddings), so the numbers agree.
    embedded = {name: embed_split(run.module, dm.eval_dataset(name), dm.eval_batch_size,
                                  run.device, dm.num_workers, progress=cfg.get("progress", True),
                                  desc=f"embedding {name}")
                for name in names}
    # images dataset.on_error=skip left out: counted, not scored
    skipped = {name: len(dm.eval_dataset(name)) - len(embedded[name][2]) for name in names}
    result = evaluate_embeddings(split, embedded, dm.source.recall_ks,
                                 metric_set=MetricSet.from_config(cfg),
                                 knn_backend=cfg.get("knn_backend", "auto"), skipped=skipped,
                                 keep_queries=int(cfg.plots.grid_queries))
    sizes = {s.name: len(s.indices) for s in result.splits}
    query = result.query
    title = (f"{dm.source.name} {split}: " + (
        f"{sizes[names[0]]} query vs {sizes[names[1]]} gallery images" if result.gallery else
        f"{sizes[names[0]]} images, {len(set(query.labels.tolist()))} classes, all vs all"))
    summary = {**result.prefixed_metrics(), "ckpt_path": str(run.path.resolve()),
               "dataset": dm.source.name, "split": split, "num_images": sizes}
    # before any export or plot: nothing there costs them
    write_metrics(out_dir, summary, run.device)
    done = report(result, dm, out_dir, ReportOptions(
        export=bool(cfg.export.enabled), format=cfg.export.format,
        plots=bool(cfg.plots.enabled), projection=cfg.plots.projection,
        grid_queries=cfg.plots.grid_queries, grid_k=cfg.plots.grid_k), row_name=run.path.name)
    (out_dir / "metrics.md").write_text(f"# {title}\n\n{done.table}\n")
    print(f"\n{title}\n{done.table}")
    print(f"Output directory: {out_dir.resolve()}")
    return summary


@hydra_main("evaluate")
def main(cfg: DictConfig) -> float | None:
    from see_dml.runtime.cli import run_cli

    return run_cli(evaluate, cfg).get(f"{cfg.split}/map@r")


if __name__ == "__main__":
    main()

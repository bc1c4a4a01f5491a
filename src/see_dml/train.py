"""Train an embedding: ``python -m see_dml.train [group=option ...] [key=value ...]``.

Builds everything from the composed Hydra config, fits with checkpoint selection on the
validation classes, then evaluates the selected checkpoint (``test/...``) and the final
weights (``test_final/...``) on the test classes. The run directory gets the resolved
``config.yaml``, ``metrics.json``, checkpoints and logs; the last line printed names it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from see_dml.config import CONFIG_DIR, validate_config
from see_dml.data.base import DatasetSource
from see_dml.data.datamodule import RetrievalDataModule
from see_dml.evaluation import format_results, write_metrics
from see_dml.losses import build_metric_loss
from see_dml.models import Backbone
from see_dml.module import DMLModule

log = logging.getLogger(__name__)


def build_backbone(cfg: DictConfig, image_mode: str = "RGB") -> Backbone:
    """``cfg.model.backbone``; ``in_chans: auto`` follows the dataset's image mode."""
    node = cfg.model.backbone
    in_chans = node.in_chans if node.in_chans != "auto" else (1 if image_mode == "L" else 3)
    return instantiate(node, in_chans=in_chans)


def build_model(cfg: DictConfig, num_classes: int, backbone: Backbone | None = None,
                source: DatasetSource | None = None) -> DMLModule:
    """The LightningModule described by ``cfg`` for ``num_classes`` training classes: the
    ``model.backbone`` and ``model.head`` nodes, the ``loss`` node (see
    :func:`see_dml.losses.build_metric_loss`), the optimiser and scheduler factories."""
    m = cfg.model
    source = source or instantiate(cfg.dataset)
    backbone = backbone or build_backbone(cfg, source.image_mode)
    head = instantiate(m.head, in_features=backbone.num_features,
                       num_prefix_tokens=backbone.num_prefix_tokens)
    criterion = build_metric_loss(cfg.loss, num_classes, m.embed_dim)
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    return DMLModule(
        backbone, head, criterion, optimizer=instantiate(cfg.optimizer), scheduler=scheduler,
        backbone_lr_mult=m.backbone_lr_mult, head_lr_mult=m.head_lr_mult,
        warmup_epochs=m.warmup_epochs, freeze_bn=m.freeze_bn,
        recall_ks=source.recall_ks, knn_backend=cfg.get("knn_backend", "auto"),
        compute_nmi=bool(cfg.get("nmi", False)),
        config=OmegaConf.to_container(cfg, resolve=True),
    )


def build_datamodule(cfg: DictConfig, backbone: Backbone | None = None,
                     source: DatasetSource | None = None) -> RetrievalDataModule:
    """Dataset source + DataModule, set up (so a broken dataset fails before training)."""
    source = source or instantiate(cfg.dataset)
    dm: RetrievalDataModule = instantiate(cfg.data, source=source, _convert_="all")
    if backbone is not None:
        dm.set_normalization(backbone.mean, backbone.std)
    dm.setup("fit")
    dm.validate()
    return dm


def build_callbacks(cfg: DictConfig) -> list[Callback]:
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()
                 if c is not None and "_target_" in c]
    from see_dml.callbacks.synthesis import build_synthesis_callback

    synthesis = build_synthesis_callback(cfg)
    if synthesis is not None:
        callbacks.append(synthesis)
    return callbacks


def build_loggers(cfg: DictConfig) -> list[Any]:
    return [instantiate(c) for c in (cfg.get("logger") or {}).values()
            if c is not None and "_target_" in c]


def _checkpoint_callback(trainer: L.Trainer) -> ModelCheckpoint | None:
    return next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)


def _last_checkpoint_file(callbacks: list[Any]) -> Path | None:
    """Where ``callbacks.last_checkpoint`` writes the final epoch every epoch
    (``<dirpath>/last.ckpt``): ``ckpt_path=auto`` resumes from it, ``test_final`` tests it.
    None without such a callback."""
    for cb in callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.filename == "last" and cb.dirpath:
            return Path(cb.dirpath) / f"last{cb.FILE_EXTENSION}"
    return None


def _epochs_run(trainer: L.Trainer, ckpt_cb: ModelCheckpoint | None, last: Path | None) -> int:
    """Epochs run. Under ``ddp_spawn`` the fit runs in worker processes that hand back only
    ``best_model_path`` (this process's trainer stays at step 0): the best score and the epoch
    count are then read from ``last.ckpt``."""
    if trainer.global_step > 0 or ckpt_cb is None or last is None:
        return trainer.current_epoch
    state = torch.load(last, map_location="cpu", weights_only=False)
    if ckpt_cb.best_model_score is None:
        ckpt_cb.best_model_score = state.get("callbacks", {}).get(ckpt_cb.state_key, {}).get(
            "best_model_score")
    return int(state["epoch"]) + 1


def _resolve_ckpt_path(ckpt_path: str | None, last: Path | None) -> str | None:
    if ckpt_path != "auto":
        return ckpt_path
    return str(last) if last is not None and last.exists() else None


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit and test as configured; return the flat metrics written to ``metrics.json``."""
    validate_config(cfg)
    L.seed_everything(cfg.seed, workers=True)
    if cfg.get("matmul_precision"):
        torch.set_float32_matmul_precision(cfg.matmul_precision)
    run_dir = Path(cfg.paths.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))

    source: DatasetSource = instantiate(cfg.dataset)
    backbone = build_backbone(cfg, source.image_mode)
    dm = build_datamodule(cfg, backbone, source)
    log.info("data: %s", dm.describe())
    model = build_model(cfg, dm.num_classes, backbone, source)

    callbacks = build_callbacks(cfg)
    trainer_kwargs: dict[str, Any] = {}
    if not dm.has_val:
        # No validation classes (val_fraction=0, the papers' protocol): keep the last epoch.
        trainer_kwargs["limit_val_batches"] = 0
        for cb in callbacks:
            if isinstance(cb, ModelCheckpoint):
                cb.monitor, cb.save_top_k = None, 1
    loggers = build_loggers(cfg)
    if not loggers:  # logger=none: LearningRateMonitor refuses to run without a logger
        callbacks = [cb for cb in callbacks if not isinstance(cb, LearningRateMonitor)]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks,
                                     logger=loggers or False, **trainer_kwargs)
    last_file = _last_checkpoint_file(callbacks)
    trainer.fit(model, datamodule=dm,
                ckpt_path=_resolve_ckpt_path(cfg.get("ckpt_path"), last_file))

    metrics: dict[str, Any] = {}
    ckpt_cb = _checkpoint_callback(trainer)
    last = last_file if last_file is not None and last_file.exists() else None
    epochs = _epochs_run(trainer, ckpt_cb, last)
    best = ckpt_cb.best_model_path if ckpt_cb and ckpt_cb.best_model_path else None
    runs = [("test", best)]
    if cfg.get("test_final", True) and best and last and Path(best) != Path(last):
        runs.append(("test_final", last))
    for prefix, ckpt in runs:
        with model.test_metrics_prefix(prefix):
            trainer.test(model, datamodule=dm, ckpt_path=ckpt, weights_only=False)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()
                        if k.startswith(prefix + "/")})
    if best and ckpt_cb is not None and ckpt_cb.best_model_score is not None:
        metrics[f"best/{ckpt_cb.monitor}"] = float(ckpt_cb.best_model_score)
    metrics["best_checkpoint"] = best
    metrics["epochs"] = epochs
    if "test_final/recall@1" not in metrics:  # selected == final weights
        metrics.update({k.replace("test/", "test_final/"): v for k, v in metrics.items()
                        if k.startswith("test/")})
    write_metrics(run_dir, metrics)

    if trainer.is_global_zero:
        print(f"\nResults on {source.name} test classes ({dm.describe()}):")
        print(format_results(metrics))
        print(f"Run directory: {run_dir.resolve()}")
    return metrics


@hydra.main(config_path=str(CONFIG_DIR), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    # the sweeper's objective (e.g. for optuna): validation-selected test MAP@R
    return metrics.get("test/map@r")


if __name__ == "__main__":
    main()

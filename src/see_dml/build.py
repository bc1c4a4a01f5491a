"""The objects a composed run config describes: backbone, model, data, callbacks, loggers.

``see_dml.train`` builds a run from these; :mod:`see_dml.inference` rebuilds a trained model
with :func:`build_model`. Each reads only its nodes of the config (``model``, ``loss``,
``optimizer``, ``scheduler``, ``dataset``, ``data``, ``callbacks``, ``synthesis``,
``logger``) and instantiates them with Hydra.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from see_dml.config import to_dict

if TYPE_CHECKING:
    from lightning.pytorch.callbacks import Callback

    from see_dml.data.base import DatasetSource
    from see_dml.data.datamodule import RetrievalDataModule
    from see_dml.models import Backbone
    from see_dml.module import DMLModule


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
    from see_dml.losses import build_metric_loss
    from see_dml.module import DMLModule

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
        compute_nmi=bool(cfg.get("nmi", False)), compile=bool(m.get("compile", False)),
        config=to_dict(cfg),
    )


def build_datamodule(cfg: DictConfig, backbone: Backbone | None = None,
                     source: DatasetSource | None = None) -> RetrievalDataModule:
    """Dataset source + DataModule, set up (so a broken dataset fails before training)."""
    source = source or instantiate(cfg.dataset)
    # test_every_epoch: the validation loop scores the test split(s) too (only passed when
    # asked, so a DataModule of one's own needs the argument only to use the option)
    extra: dict[str, Any] = {}
    if cfg.get("test_every_epoch", False):
        epochs = cfg.get("test_epochs") or {}
        extra = {"test_every_epoch": True,
                 "test_epochs": (int(epochs.get("start", 0)), int(epochs.get("every", 1)))}
    dm: RetrievalDataModule = instantiate(cfg.data, source=source, _convert_="all", **extra)
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

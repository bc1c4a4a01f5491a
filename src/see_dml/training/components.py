"""The objects of a run besides its model, as the composed config describes them: the
DataModule, the callbacks (synthesis included) and the loggers.

``see_dml.train`` builds a run from these and the model from
:meth:`see_dml.module.DMLModule.from_config` (which every tool also rebuilds a checkpoint's
model with). Each reads only its nodes of the config (``dataset``, ``data``, ``callbacks``,
``synthesis``, ``logger``) and instantiates them with Hydra.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hydra.utils import instantiate
from omegaconf import DictConfig

if TYPE_CHECKING:
    from lightning.pytorch.callbacks import Callback

    from see_dml.data.base import DatasetSource
    from see_dml.data.datamodule import RetrievalDataModule
    from see_dml.models import Backbone


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
    nodes = [c for c in (cfg.get("logger") or {}).values() if c is not None and "_target_" in c]
    if any(str(c._target_).endswith("WandbLogger") for c in nodes):
        from see_dml.runtime.extras import require

        require("wandb", "wandb", asked_by="logger=wandb")  # one line naming the extra
    return [instantiate(c) for c in nodes]

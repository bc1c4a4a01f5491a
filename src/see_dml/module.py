"""The LightningModule: backbone -> head -> unit embeddings -> metric loss (+ synthesis hooks).

The module is deliberately thin. It does not know which synthesiser is active: a synthesis
callback registers an *embedding hook* (:meth:`DMLModule.add_embedding_hook`) that receives
the (DDP-gathered) batch embeddings and labels and returns extra loss terms and statistics.

:meth:`DMLModule.from_config` builds the module a composed run config describes;
:func:`load_module_from_checkpoint` (and Lightning's usual ``DMLModule.load_from_checkpoint``)
rebuilds a trained one from the config its checkpoint stores. Both live here, below every
tool that uses them, so that no import runs upwards (``make lint`` checks it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol, cast

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from see_dml.checkpoints.read import (
    check_config_layout,
    num_classes_from_state_dict,
    read_checkpoint,
    resolve_device,
)
from see_dml.data.base import skipped_rows
from see_dml.losses import MetricLoss, build_metric_loss
from see_dml.metrics.metric_set import HEADLINE, MetricSet
from see_dml.models import Backbone, EmbeddingHead
from see_dml.runtime.cli import one_lightning_console
from see_dml.runtime.config import to_dict
from see_dml.runtime.errors import CheckpointError

if TYPE_CHECKING:
    from pathlib import Path

    from see_dml.data.base import DatasetSource
    from see_dml.evaluation.report import EvaluationResult
    from see_dml.metrics.knn import Backend

log = logging.getLogger(__name__)

#: What the test split(s) scored in the validation loop are logged under
#: (``test_every_epoch``): ``test_epoch/recall@1``, ... every epoch.
TEST_EPOCH_PREFIX = "test_epoch"


class EmbeddingHook(Protocol):
    """Called in every training step with the global batch; returns named tensors.

    Keys starting with ``loss/`` are added to the training loss; all are logged. A hook
    that returns ``loss/metric`` replaces the plain metric loss (which is then not computed).
    """

    def __call__(self, module: DMLModule, embeddings: torch.Tensor,
                 labels: torch.Tensor) -> dict[str, torch.Tensor]: ...


def rng_states() -> dict[str, Any]:
    """The process's random states (torch, CUDA, numpy, Python) in checkpoint-safe types.

    Lightning restores model, optimiser, loop and callback state on resume but not these
    (its own helpers are private), so a resumed epoch would draw other augmentations.
    """
    # numpy's stub gives a call without arguments its legacy=False overload (a dict), but
    # the default is legacy=True: this tuple, for the global MT19937 state
    state = cast("tuple[str, np.ndarray, int, int, float]", np.random.get_state())
    kind, keys, pos, has_gauss, gauss = state
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                  "has_gauss": has_gauss, "gauss": gauss},
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` saved (CUDA only onto as many devices as were saved)."""
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    cuda = states.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


class DMLModule(L.LightningModule):
    """Deep metric learning on unit embeddings.

    Args:
        backbone: feature extractor.
        head: pooling + projection + L2 normalisation.
        criterion: the metric loss (its parameters are the proxies, if any).
        optimizer: factory ``params -> Optimizer`` (a ``_partial_`` config).
        scheduler: optional factory ``optimizer -> LRScheduler`` (stepped per epoch).
        backbone_lr_mult, head_lr_mult: learning-rate multipliers of those groups; the loss's
            parameters use ``criterion.lr_multiplier``.
        warmup_epochs: epochs with a frozen backbone (head and proxies train alone).
        freeze_bn: keep every BatchNorm of the backbone in eval mode with frozen affine.
        recall_ks: the dataset's Ks of Recall@K, where the metric set leaves them to the
            data.
        knn_backend: kNN search of the val/test metrics: ``auto`` (torch on the GPU when the
            model runs on one, else faiss), ``faiss`` or ``torch``.
        metric_set: what every evaluation computes (the config group ``metrics``; default
            :class:`~see_dml.metrics.MetricSet`); its NMI (a k-means clustering, query and
            gallery together for In-Shop) is scored on the test split only, as ``test/nmi``.
        compile: ``torch.compile`` the backbone and the head (in place, so checkpoints keep
            their keys); off by default, which runs the eager modules unchanged.
        config: the resolved run config, stored in checkpoints so any tool can rebuild
            the model from a checkpoint alone.

    Every evaluation ends in one :class:`~see_dml.evaluation.report.EvaluationResult` (one kNN
    search); the last test's stays in :attr:`test_result` for the export callback, and its
    metrics are logged as ``<prefix>/...``, the prefix ``test`` unless a test runs inside
    :meth:`test_metrics_prefix`.

    When the datamodule hands the test split(s) to the validation loop too (its
    ``val_split_names``; ``test_every_epoch``), every validation epoch also scores them, logs
    ``test_epoch/...`` and keeps the metrics in :attr:`test_history` (``{epoch: {metric:
    value}}``, saved in and restored from checkpoints), from which ``train`` reports the
    papers' best-on-test number. Nothing selects on them: checkpoints monitor ``val/...``.
    """

    def __init__(self, backbone: Backbone, head: EmbeddingHead, criterion: MetricLoss,
                 optimizer: Callable[..., torch.optim.Optimizer],
                 scheduler: Callable[..., Any] | None = None, backbone_lr_mult: float = 1.0,
                 head_lr_mult: float = 1.0, warmup_epochs: int = 0, freeze_bn: bool = False,
                 recall_ks: Iterable[int] = (1, 2, 4, 8), knn_backend: Backend = "auto",
                 metric_set: MetricSet | None = None, compile: bool = False,
                 config: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.criterion = criterion
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.backbone_lr_mult = backbone_lr_mult
        self.head_lr_mult = head_lr_mult
        self.warmup_epochs = warmup_epochs
        self.freeze_bn = freeze_bn
        #: what every evaluation computes, its Recall@K resolved (:attr:`recall_ks`)
        self.metric_set = (metric_set or MetricSet()).resolved(tuple(recall_ks))
        self.recall_ks: tuple[int, ...] = self.metric_set.recall_at or ()
        self.knn_backend = knn_backend
        #: queries whose neighbour lists an evaluation keeps (the retrieval grid's rows);
        #: None: see_dml.metrics.KEPT_QUERIES. The export callback sets its grid_queries.
        self.keep_queries: int | None = None
        self.config = config
        self.embedding_hooks: list[EmbeddingHook] = []
        self.test_result: EvaluationResult | None = None
        self._test_prefix = "test"
        self._eval_buffers: dict[int, list[tuple[torch.Tensor, ...]]] = {}
        self.test_history: dict[int, dict[str, float]] = {}
        #: per evaluated split, the images its last evaluation left out (dataset.on_error=skip)
        self.skipped_images: dict[str, int] = {}
        if freeze_bn:
            self._freeze_bn_params()
        if compile:
            self.backbone.compile()
            self.head.compile()

    # -- model ----------------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: DictConfig, num_classes: int, backbone: Backbone | None = None,
                    source: DatasetSource | None = None) -> DMLModule:
        """The module ``cfg`` describes for ``num_classes`` training classes: the
        ``model.backbone`` and ``model.head`` nodes, the ``loss`` node (see
        :func:`see_dml.losses.build_metric_loss`), the optimiser and scheduler factories.
        ``backbone`` and ``source`` (the dataset source, for its image mode and Recall@K's
        Ks) are built from ``cfg`` when not given."""
        m = cfg.model
        source = source or instantiate(cfg.dataset)
        backbone = backbone or build_backbone(cfg, source.image_mode)
        head = instantiate(m.head, in_features=backbone.num_features,
                           num_prefix_tokens=backbone.num_prefix_tokens)
        criterion = build_metric_loss(cfg.loss, num_classes, m.embed_dim)
        scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
        return cls(
            backbone, head, criterion, optimizer=instantiate(cfg.optimizer),
            scheduler=scheduler, backbone_lr_mult=m.backbone_lr_mult,
            head_lr_mult=m.head_lr_mult, warmup_epochs=m.warmup_epochs, freeze_bn=m.freeze_bn,
            recall_ks=source.recall_ks, knn_backend=cfg.get("knn_backend", "auto"),
            metric_set=MetricSet.from_config(cfg), compile=bool(m.get("compile", False)),
            config=to_dict(cfg),
        )

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, map_location: Any = None,
                             hparams_file: Any = None, strict: bool | None = None,
                             weights_only: bool | None = None, **kwargs: Any) -> DMLModule:
        """Lightning's usual call, ``DMLModule.load_from_checkpoint(path)``: the module its
        checkpoint describes (backbone, head and loss rebuilt from the config the checkpoint
        stores, see :func:`load_module_from_checkpoint`), in eval mode, on
        ``map_location`` (a device; default the CPU). Lightning's own version calls
        ``__init__`` with the saved hyperparameters, which this module does not save (its
        arguments are built modules). The file is loaded with ``weights_only=True``
        (:func:`see_dml.checkpoints.read.load_checkpoint_file`): nothing in it runs."""
        refused = dict(kwargs)
        # a parameter because Lightning's signature has it: the checkpoint is read as every
        # tool reads it (see_dml.checkpoints.read.read_checkpoint), weights only, so a file
        # someone sent runs no code; weights_only=False is refused like the rest
        if weights_only is not None and weights_only is not True:
            refused["weights_only"] = weights_only
        if hparams_file is not None or refused:
            given = ["hparams_file"] * (hparams_file is not None) + sorted(refused)
            raise TypeError("DMLModule.load_from_checkpoint rebuilds the model from the config "
                            "the checkpoint stores: it takes no hparams_file or __init__ "
                            f"arguments (got {', '.join(given)})")
        device = map_location if isinstance(map_location, (str, torch.device)) else "cpu"
        module, _ = load_module_from_checkpoint(checkpoint_path, device)
        return module

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` images -> ``(B, embed_dim)`` unit embeddings."""
        features = self.backbone(images)
        if self.head.pooling == "model":
            features = self.backbone.timm_pool(features)
        return self.head(features)

    def add_embedding_hook(self, hook: EmbeddingHook) -> None:
        if hook not in self.embedding_hooks:
            self.embedding_hooks.append(hook)

    def _bn_layers(self) -> list[nn.Module]:
        bn_types = nn.modules.batchnorm._BatchNorm
        return [m for m in self.backbone.modules() if isinstance(m, bn_types)]

    def _freeze_bn_params(self) -> None:
        for bn in self._bn_layers():
            for p in bn.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> DMLModule:
        super().train(mode)
        if mode and (self.freeze_bn or self._backbone_frozen()):
            layers = self.backbone.modules() if self._backbone_frozen() else self._bn_layers()
            for m in layers:
                m.eval()
        return self

    def _backbone_frozen(self) -> bool:
        trainer = self._trainer
        return trainer is not None and self.current_epoch < self.warmup_epochs

    def on_train_epoch_start(self) -> None:
        frozen = self._backbone_frozen()
        bn_ids = ({id(p) for bn in self._bn_layers() for p in bn.parameters()}
                  if self.freeze_bn else set())
        # stages left out by model.backbone.trainable_stages stay frozen after the warm-up
        fixed_ids = {id(p) for p in self.backbone.frozen_parameters()}
        for p in self.backbone.parameters():
            p.requires_grad_(not frozen and id(p) not in bn_ids and id(p) not in fixed_ids)
        # Lightning never calls train() during fit: apply the modes of train() here, so the
        # frozen backbone / BatchNorm stay in eval and the backbone trains after the warm-up
        self.train()
        # Lightning sets the epoch of samplers but not of batch samplers (the class-balanced
        # one): without this every epoch would draw the same batches
        batch_sampler = getattr(self.trainer.train_dataloader, "batch_sampler", None)
        set_epoch = getattr(batch_sampler, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(self.current_epoch)
        self.log("train/backbone_frozen", float(frozen), on_epoch=True, on_step=False)

    # -- training -------------------------------------------------------------------------
    def _gather(self, embeddings: torch.Tensor, labels: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """All ranks' batches, so the loss and synthesis see the global batch (DDP)."""
        if self.trainer.world_size <= 1:
            return embeddings, labels
        emb = self._all_gather_tensor(embeddings, sync_grads=True).flatten(0, 1)
        lab = self._all_gather_tensor(labels).flatten(0, 1)
        return emb, lab

    def _all_gather_tensor(self, tensor: torch.Tensor, sync_grads: bool = False
                           ) -> torch.Tensor:
        """:meth:`all_gather` of one tensor: ``(world, *shape)``. Lightning types the result
        as any collection it gathers (tensor, dict, list, tuple); a tensor gathers to one."""
        return cast(torch.Tensor, self.all_gather(tensor, sync_grads=sync_grads))

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        images, labels = batch[0], batch[1]
        embeddings, labels = self._gather(self(images), labels)
        terms: dict[str, torch.Tensor] = {}
        stats: dict[str, torch.Tensor] = {}
        for hook in self.embedding_hooks:
            for key, value in hook(self, embeddings, labels).items():
                (terms if key.startswith("loss/") else stats)[key] = value
        if "loss/metric" not in terms:  # a synthesiser whose loss is the loss (EE, PS) sets it
            terms = {"loss/metric": self.criterion(embeddings, labels), **terms}
        loss = torch.stack([t.float() for t in terms.values()]).sum()
        batch_size = embeddings.shape[0]
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True,
                 batch_size=batch_size)
        self.log_dict({f"train/{k}": v.detach().float() for k, v in {**terms, **stats}.items()},
                      on_step=True, on_epoch=True, batch_size=batch_size)
        return loss

    def configure_optimizers(self) -> Any:
        groups = [
            {"params": list(self.backbone.parameters()), "lr_mult": self.backbone_lr_mult,
             "name": "backbone"},
            {"params": list(self.head.parameters()), "lr_mult": self.head_lr_mult,
             "name": "head"},
            {"params": list(self.criterion.parameters()), "lr_mult":
             self.criterion.lr_multiplier, "name": "loss"},
        ]
        groups = [g for g in groups if g["params"]]
        optimizer = self.optimizer_factory(params=groups)
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] * group.pop("lr_mult")
            group["initial_lr"] = group["lr"]
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.config is not None:
            checkpoint["see_dml_config"] = self.config
        checkpoint["see_dml_num_classes"] = self.criterion.num_classes
        checkpoint["see_dml_rng"] = rng_states()
        if self.test_history:  # test_every_epoch: a resumed run reports the best of all epochs
            checkpoint["see_dml_test_history"] = {
                int(epoch): dict(metrics) for epoch, metrics in self.test_history.items()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # A resumed fit continues the random streams of the run it resumes (augmentations,
        # DataLoader worker seeds): the next epoch draws what it would have drawn unbroken.
        if "see_dml_rng" in checkpoint:
            set_rng_states(checkpoint["see_dml_rng"])
        self.test_history = {int(epoch): dict(metrics) for epoch, metrics in
                             checkpoint.get("see_dml_test_history", {}).items()}

    # -- evaluation -----------------------------------------------------------------------
    def _eval_step(self, batch: tuple[torch.Tensor, ...], dataloader_idx: int) -> None:
        images, labels, index = batch
        emb = self(images).float()
        self._eval_buffers.setdefault(dataloader_idx, []).append((emb, labels, index))

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int,
                        dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx)

    def test_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int,
                  dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx)

    def collect_embeddings(self, dataloader_idx: int, split: str, expected: int | None
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Gathered ``(embeddings (N, d), labels (N,), indices (N,))`` sorted by index.

        Under DDP the distributed sampler pads with repeats; duplicates are dropped by
        sample index. The count must equal the split's size, or the metrics would silently
        describe a different set of images.
        """
        parts = self._eval_buffers.pop(dataloader_idx, [])
        if parts:
            emb, lab, idx = (torch.cat(t) for t in zip(*parts))
        else:
            emb = torch.empty(0, self.head.proj.out_features, device=self.device)
            lab = idx = torch.empty(0, dtype=torch.long, device=self.device)
        if self.trainer.world_size > 1:
            emb, lab, idx = (self._all_gather_tensor(t).flatten(0, 1) for t in (emb, lab, idx))
        order = torch.argsort(idx, stable=True)
        emb, lab, idx = emb[order], lab[order], idx[order]
        keep = torch.ones_like(idx, dtype=torch.bool)
        keep[1:] = idx[1:] != idx[:-1]
        emb, lab, idx = emb[keep], lab[keep], idx[keep]
        # images dataset.on_error=skip dropped (index -1 - i): counted, never scored
        dropped = skipped_rows(idx)
        self.skipped_images[split] = int(dropped.sum())
        seen = len(idx)
        emb, lab, idx = emb[~dropped], lab[~dropped], idx[~dropped]
        if expected is not None and seen != expected:
            # an int limit is a number of batches (1 is one batch); only the float 1.0 is all
            limited = (any(isinstance(v, int) or v != 1.0 for v in
                           (self.trainer.limit_val_batches, self.trainer.limit_test_batches))
                       # set on the Trainer by Lightning's debugging set-up, not declared
                       or self.trainer.fast_dev_run)  # type: ignore[attr-defined]
            msg = (f"evaluation of '{split}' saw {seen} of {expected} images"
                   + (" (limit_*_batches / fast_dev_run is set)" if limited else
                      "; likely cause: a sampler or drop_last on the eval loader"))
            if not limited:
                raise RuntimeError(msg)
            log.debug(msg)
        return emb, lab, idx

    def _split_size(self, name: str) -> int | None:
        dm = getattr(self.trainer, "datamodule", None)
        return len(dm.eval_dataset(name)) if dm is not None else None

    def _evaluate(self, prefix: str, names: list[str], with_nmi: bool = False,
                  first_index: int = 0) -> EvaluationResult | None:
        """The result of the splits ``names`` (one, or query and gallery) embedded in this
        epoch by the dataloaders ``first_index, first_index + 1, ...``; None when nothing
        was (``limit_val_batches=0``). The NMI of the metric set only ``with_nmi``."""
        from see_dml.evaluation.report import evaluate_embeddings

        splits = {name: self.collect_embeddings(first_index + i, name, self._split_size(name))
                  for i, name in enumerate(names)}
        if any(len(emb) == 0 for emb, _, _ in splits.values()):
            return None
        # Embeddings are searched where they are: knn_backend=auto picks the torch search
        # for a model on a GPU (see_dml.metrics.knn.resolve_backend).
        metric_set = self.metric_set if with_nmi else dataclasses.replace(self.metric_set,
                                                                          nmi=False)
        return evaluate_embeddings(prefix, splits, self.recall_ks, metric_set=metric_set,
                                   knn_backend=self.knn_backend, keep_queries=self.keep_queries,
                                   skipped={n: self.skipped_images.get(n, 0) for n in names})

    def _validation_splits(self) -> tuple[list[str], list[str]]:
        """``(validation splits, test splits)`` of the validation loop's dataloaders, in
        dataloader order: ``["val"]`` (or none: ``val_fraction=0``), then the test split(s)
        when the datamodule hands them over too (``test_every_epoch``)."""
        dm = getattr(self.trainer, "datamodule", None)
        names = list(getattr(dm, "val_split_names", ["val"]))
        val = names[:1] if names[:1] == ["val"] else []
        return val, names[len(val):]

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self._eval_buffers.clear()
            return
        val, tests = self._validation_splits()
        result = self._evaluate("val", val) if val else None
        if result is not None:
            shown = {f"val/{name}" for name in HEADLINE}  # the progress bar's
            metrics = result.prefixed_metrics()
            self.log_dict({k: v for k, v in metrics.items() if k in shown}, prog_bar=True)
            self.log_dict({k: v for k, v in metrics.items() if k not in shown})
        dm = getattr(self.trainer, "datamodule", None)
        if tests and not getattr(dm, "tests_scheduled", lambda: True)():
            for i in range(len(val), len(val) + len(tests)):  # test_epochs: not this epoch
                self._eval_buffers.pop(i, None)
        elif tests:
            # The papers' best-on-test protocol (for comparison only): logged and kept per
            # epoch, never monitored (checkpoints select on val/...)
            # (no NMI: its k-means every epoch would cost more than the kNN search)
            tested = self._evaluate(TEST_EPOCH_PREFIX, tests, first_index=len(val))
            if tested is not None:
                self.log_dict(tested.prefixed_metrics())
                self.test_history[self.current_epoch] = dict(tested.metrics)

    @contextlib.contextmanager
    def test_metrics_prefix(self, prefix: str) -> Iterator[None]:
        """Log the metrics of tests run inside this block as ``<prefix>/...``.

        ``train`` tests the selected checkpoint as ``test`` and the last one as
        ``test_final``. A block, not an attribute to set: a later ``trainer.test`` (of a
        user, of ``evaluate``) logs under ``test`` again. The prefix also travels in the
        :class:`~see_dml.evaluation.report.EvaluationResult`, which is what the export callback
        reads.
        """
        previous, self._test_prefix = self._test_prefix, prefix
        try:
            yield
        finally:
            self._test_prefix = previous

    def on_test_epoch_start(self) -> None:
        self.test_result = None

    def on_test_epoch_end(self) -> None:
        # Lightning's data connector sets trainer.datamodule; the Trainer class does not
        # declare it
        names = self.trainer.datamodule.test_split_names  # type: ignore[attr-defined]
        self.test_result = self._evaluate(self._test_prefix, names, with_nmi=True)
        if self.test_result is not None:
            self.log_dict(self.test_result.prefixed_metrics())


def build_backbone(cfg: DictConfig, image_mode: str = "RGB") -> Backbone:
    """``cfg.model.backbone``; ``in_chans: auto`` follows the dataset's image mode."""
    node = cfg.model.backbone
    in_chans = node.in_chans if node.in_chans != "auto" else (1 if image_mode == "L" else 3)
    return instantiate(node, in_chans=in_chans)


def load_module_from_checkpoint(path: str | Path, device: str | torch.device = "cpu"
                                ) -> tuple[DMLModule, DictConfig]:
    """Rebuild the trained :class:`DMLModule` from a checkpoint alone, in eval mode.

    Returns:
        ``(module, cfg)``: the module with the checkpoint's weights on ``device``, and the
        resolved run config it was trained with.
    """
    ckpt = read_checkpoint(path)
    one_lightning_console()

    cfg = OmegaConf.create(ckpt["see_dml_config"])
    check_config_layout(cfg, path)
    num_classes = ckpt.get("see_dml_num_classes")
    if num_classes is None:  # written before the class count was stored: read the proxies
        num_classes = num_classes_from_state_dict(ckpt["state_dict"])
        if num_classes is None:
            raise CheckpointError(f"ckpt_path='{path}' stores no 'see_dml_num_classes' and "
                                  "its loss has no class weights to infer it from")
    with open_dict(cfg):
        # The weights come from the state dict: never reach for a hub or a weights file.
        cfg.model.backbone.pretrained = False
        cfg.model.backbone.weights_path = None
    module = DMLModule.from_config(cfg, int(num_classes))
    try:
        module.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(f"ckpt_path='{path}': weights do not fit the model its config "
                              f"describes: {err}") from err
    return module.eval().to(resolve_device(device)), cfg

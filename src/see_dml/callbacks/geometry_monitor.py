"""Log what training does to the embedding space, every epoch (:mod:`see_dml.evaluation.geometry`).

After each validation epoch the callback embeds a fixed subset of the *training* images
with the evaluation transforms (as many classes as the validation split has, so that
Recall@1 on it and on ``val`` are searched in galleries of about the same size) and logs

- ``geometry/proxy_drift_deg``: mean angle the proxies moved since the last epoch;
- ``geometry/proxy_class_cos``: cosine of each proxy to its class's mean embedding;
- ``geometry/class_spread_deg``: mean angle of an embedding to its class's proxy;
- ``geometry/uniformity``: Wang & Isola's uniformity of those embeddings (lower: more
  uniform), over every pair of at most ``uniformity_rows`` of them (a fixed sample above
  that; ``geometry/uniformity_rows`` records how many were used);
- ``geometry/train_recall@1`` and ``geometry/train_val_gap@1`` (train minus val Recall@1).

They go to every logger of the run (step = global step, with the epoch) and, one row per
epoch, to ``geometry.csv`` in the run directory. Proxy measures need a proxy loss; with a
pair loss only the embedding measures are logged. An experiment turns it on with a
``callbacks.geometry`` node (``conf/experiment/see_emoji_long.yaml``); on the command line:
``+callbacks.geometry._target_=see_dml.callbacks.geometry_monitor.GeometryMonitor
+callbacks.geometry.dirpath='${paths.run_dir}'``.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from see_dml.data.base import skipped_rows
from see_dml.evaluation import geometry
from see_dml.metrics.metric_set import MetricSet

if TYPE_CHECKING:
    from see_dml.module import DMLModule

log = logging.getLogger(__name__)

#: The metric set of the train-subset Recall@1: that alone, from a one-neighbour search.
RECALL_AT_1 = MetricSet(recall_at=(1,), precision_at=(), map_at_r=False, r_precision=False)


class GeometryMonitor(Callback):
    """Args:
    dirpath: where ``geometry.csv`` is written (the run directory); None: nowhere.
    num_classes: training classes embedded each epoch; None: as many as ``val`` has (all
        training classes when there is no ``val`` split).
    seed: seed of the class draw (fixed: the same images every epoch and every arm).
    uniformity_t: the ``t`` of :func:`see_dml.evaluation.geometry.uniformity`.
    uniformity_rows: its ``max_rows`` (default :data:`see_dml.evaluation.geometry.UNIFORMITY_ROWS`);
        None: every pair of every embedded image (time quadratic in their number).
    """

    def __init__(self, dirpath: str | None = None, num_classes: int | None = None,
                 seed: int = 0, uniformity_t: float = 2.0,
                 uniformity_rows: int | None = geometry.UNIFORMITY_ROWS) -> None:
        self.dirpath = Path(dirpath) if dirpath else None
        self.num_classes = num_classes
        self.seed = int(seed)
        self.uniformity_t = float(uniformity_t)
        self.uniformity_rows = None if uniformity_rows is None else int(uniformity_rows)
        self._loader: DataLoader | None = None
        self._previous: torch.Tensor | None = None
        self.history: list[dict[str, float]] = []

    # -- state (a resumed run measures the first epoch's drift from the saved proxies) -----
    def state_dict(self) -> dict[str, Any]:
        return {"previous": self._previous, "history": list(self.history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._previous = state_dict.get("previous")
        self.history = list(state_dict.get("history", []))

    def _subset_loader(self, trainer: L.Trainer) -> DataLoader:
        # Lightning's data connector sets trainer.datamodule; the Trainer class does not
        # declare it
        dm = trainer.datamodule  # type: ignore[attr-defined]
        train = dm.datasets["train"]
        split = train.split  # labels 0..C-1, the proxies' rows
        classes = split.classes
        wanted = self.num_classes or (dm.datasets["val"].split.num_classes if dm.has_val
                                      else len(classes))
        rng = np.random.default_rng(self.seed)
        chosen = rng.choice(classes, size=min(int(wanted), len(classes)), replace=False)
        subset = split.subset(np.isin(split.labels, chosen), name="train_subset")
        transform = next(d.transform for n, d in dm.datasets.items() if n != "train")
        dataset = dm.source.make_dataset(subset, transform)
        return DataLoader(dataset, batch_size=dm.eval_batch_size, shuffle=False,
                          num_workers=0)

    @torch.no_grad()
    def _embed(self, pl_module: L.LightningModule, loader: DataLoader
               ) -> tuple[torch.Tensor, torch.Tensor]:
        was_training = pl_module.training
        pl_module.eval()
        embs, labels = [], []
        for images, lab, index in loader:
            keep = ~skipped_rows(index)  # images dataset.on_error=skip left out
            embs.append(pl_module(images.to(pl_module.device)).float().cpu()[keep])
            labels.append(lab[keep])
        pl_module.train(was_training)
        return torch.cat(embs), torch.cat(labels).long()

    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        """This epoch's measures (also what the tests call)."""
        from see_dml.metrics import retrieval_metrics

        if self._loader is None:
            self._loader = self._subset_loader(trainer)
        emb, labels = self._embed(pl_module, self._loader)
        out = {"geometry/uniformity": geometry.uniformity(emb, self.uniformity_t,
                                                          self.uniformity_rows, self.seed),
               "geometry/uniformity_rows": float(geometry.uniformity_rows(
                   len(emb), self.uniformity_rows))}
        # Recall@1 alone: a search one neighbour wide (R-Precision and MAP@R read R of them)
        recall = retrieval_metrics(emb.numpy(), labels.numpy(), metric_set=RECALL_AT_1
                                   )["recall@1"]
        out["geometry/train_recall@1"] = recall
        val = trainer.callback_metrics.get("val/recall@1")
        if val is not None:
            out["geometry/train_val_gap@1"] = recall - float(val)
        # Lightning types the hooks' module as any LightningModule; this one is a DMLModule
        proxies = cast("DMLModule", pl_module).criterion.class_directions()
        if proxies is not None:
            proxies = proxies.detach().float().cpu()
            out["geometry/proxy_class_cos"] = geometry.proxy_class_cosine(proxies, emb, labels)
            out["geometry/class_spread_deg"] = geometry.class_spread(proxies, emb, labels)
            if self._previous is not None:
                out["geometry/proxy_drift_deg"] = geometry.proxy_drift(self._previous, proxies)
            self._previous = proxies.clone()
        return out

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After the module logged val/... and before the checkpoints are written (Lightning
        # runs ModelCheckpoint callbacks last), so a checkpoint holds this epoch's proxies.
        if trainer.sanity_checking:
            return
        metrics = self.measure(trainer, pl_module)
        epoch = trainer.current_epoch
        for logger in trainer.loggers:
            logger.log_metrics({**metrics, "epoch": epoch}, step=trainer.global_step)
        for key, value in metrics.items():
            trainer.callback_metrics[key] = torch.tensor(value)
        self.history = [h for h in self.history if h["epoch"] != epoch]
        self.history.append({"epoch": epoch, **metrics})
        if self.dirpath is not None and trainer.is_global_zero:
            self._write_csv()

    def _write_csv(self) -> None:
        assert self.dirpath is not None
        keys = sorted({k for row in self.history for k in row} - {"epoch"})
        self.dirpath.mkdir(parents=True, exist_ok=True)
        with open(self.dirpath / "geometry.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["epoch", *keys])
            writer.writeheader()
            writer.writerows(sorted(self.history, key=lambda r: r["epoch"]))

"""End-of-training export: the selected checkpoint's test embeddings and plots in the run dir.

``train`` tests the validation-selected checkpoint (prefix ``test``) and then the final
weights (``test_final``). During the first of these tests this callback records the
embeddings the module computes — through a forward hook, so nothing is embedded twice —
and at its end writes, on rank zero:

- ``embeddings_<split>.npz`` (``test``, or ``query`` and ``gallery``; layout in
  :mod:`see_dml.export`);
- ``projection_<split>.png``, ``recall_at_k.png``, ``retrieval_grid_<split>.png``
  (:mod:`see_dml.plots`), also sent to loggers that take images (W&B ``log_image``,
  TensorBoard ``add_figure``; the CSV logger keeps just the files).

Enabled by ``conf/callbacks/default.yaml``; ``callbacks.embedding_export=null`` removes it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only

from see_dml.export import save_embeddings, split_paths

log = logging.getLogger(__name__)


class EmbeddingExport(Callback):
    """Write test embeddings and plots after the test of the selected checkpoint.

    Args:
        dirpath: output folder (the run dir); default the trainer's ``default_root_dir``.
        export: write ``embeddings_<split>.npz`` (``format=parquet``: ``.parquet`` too).
        format: ``npz`` or ``parquet``.
        plots: draw the projection, Recall@K curve and retrieval grid.
        projection: ``pca`` (milliseconds), ``tsne`` / ``umap`` (seconds to minutes on
            thousands of points) or ``none``.
        grid_queries, grid_k: rows and neighbours of the retrieval grid.
        log_images: also send the plots to image-capable loggers.
        test_prefix: the test run to export (``test``: the selected checkpoint).
    """

    def __init__(self, dirpath: str | Path | None = None, export: bool = True,
                 format: str = "npz", plots: bool = True, projection: str = "pca",
                 grid_queries: int = 8, grid_k: int = 5, log_images: bool = True,
                 test_prefix: str = "test") -> None:
        if format not in ("npz", "parquet"):
            raise ValueError(f"callbacks.embedding_export.format must be npz or parquet, "
                             f"got '{format}'")
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.export = export
        self.format = format
        self.plots = plots
        self.projection = projection
        self.grid_queries = grid_queries
        self.grid_k = grid_k
        self.log_images = log_images
        self.test_prefix = test_prefix
        self._active = False
        self._handle: torch.utils.hooks.RemovableHandle | None = None
        self._last_output: torch.Tensor | None = None
        self._buffers: dict[int, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {}
        self._embedded: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.written: list[Path] = []

    # -- recording --------------------------------------------------------------------------
    def _record_output(self, module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> None:
        self._last_output = output.detach().float()

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Only the selected checkpoint's test, and only with a RetrievalDataModule (its
        # splits name the files and hold the raw images the grid shows).
        dm = getattr(trainer, "datamodule", None)
        self._active = (getattr(pl_module, "test_prefix", "test") == self.test_prefix
                        and hasattr(dm, "test_split_names") and hasattr(dm, "eval_dataset"))
        self._buffers.clear()
        self._embedded.clear()
        if self._active and (self.export or self.plots):
            self._handle = pl_module.register_forward_hook(self._record_output)

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                          batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._handle is None or self._last_output is None:
            return
        labels, index = batch[1], batch[2]
        self._buffers.setdefault(dataloader_idx, []).append(
            (self._last_output, labels.detach(), index.detach()))
        self._last_output = None

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._handle is None:
            return
        names = trainer.datamodule.test_split_names
        for i, name in enumerate(names):
            parts = self._buffers.pop(i, [])
            if not parts:
                continue
            emb, lab, idx = (torch.cat(t) for t in zip(*parts))
            if trainer.world_size > 1:  # every rank holds a strided share, padded
                emb, lab, idx = (pl_module.all_gather(t).flatten(0, 1) for t in (emb, lab, idx))
            order = torch.argsort(idx, stable=True)
            emb, lab, idx = emb[order], lab[order], idx[order]
            keep = torch.ones_like(idx, dtype=torch.bool)
            keep[1:] = idx[1:] != idx[:-1]  # drop the DistributedSampler's repeats
            self._embedded[name] = (emb[keep].cpu().numpy(), lab[keep].cpu().numpy(),
                                    idx[keep].cpu().numpy())

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        if self._active and self._embedded:
            self._write(trainer)
        self._embedded.clear()

    # -- writing ----------------------------------------------------------------------------
    @rank_zero_only
    def _write(self, trainer: L.Trainer) -> None:
        out = self.dirpath or Path(trainer.default_root_dir)
        out.mkdir(parents=True, exist_ok=True)
        dm = trainer.datamodule
        for name, (emb, labels, indices) in self._embedded.items():
            size = len(dm.eval_dataset(name))
            if len(indices) != size:  # limit_test_batches / fast_dev_run
                log.info("embedding export: %s holds %d of %d images", name, len(indices), size)
            if self.export:
                items = dm.eval_dataset(name).split.items
                paths = split_paths(items, indices)
                for fmt in ["npz"] + (["parquet"] if self.format == "parquet" else []):
                    self.written.append(save_embeddings(
                        out / f"embeddings_{name}", emb, labels,
                        indices if paths is None else paths, fmt, indices=indices))
        if self.plots:
            self._plot(trainer, out)

    def _plot(self, trainer: L.Trainer, out: Path) -> None:
        from see_dml.metrics import retrieve
        from see_dml.plots import plot_projection, plot_recall_curve, plot_retrieval_examples

        dm = trainer.datamodule
        names = [n for n in dm.test_split_names if n in self._embedded]
        if not names:
            return
        query, split = names[0], "test"
        q_emb, q_lab, q_idx = self._embedded[query]
        figures = {}
        if self.projection not in (None, "none"):
            path = out / f"projection_{split}.png"
            figures["projection"] = (plot_projection(
                q_emb, q_lab, path, self.projection,
                title=f"{dm.source.name} {query}: {self.projection}"), path)
        prefix = self.test_prefix + "/"
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
                   if k.startswith(prefix) and "recall@" in k}
        if metrics:
            path = out / "recall_at_k.png"
            figures["recall_at_k"] = (plot_recall_curve(
                metrics, path, title=f"{dm.source.name} {split}: Recall@K"), path)
        gallery = names[1] if len(names) == 2 else None
        complete = all(len(self._embedded[n][2]) == len(dm.eval_dataset(n)) for n in names)
        if complete and len(q_emb) > 1:  # the grid maps result rows to split items
            g = self._embedded[gallery] if gallery else None
            result = retrieve(q_emb, q_lab, *(g[:2] if g else (None, None)), k=self.grid_k)
            path = out / f"retrieval_grid_{split}.png"
            figures["retrieval_grid"] = (plot_retrieval_examples(
                result, dm.eval_dataset(query).split.items,
                dm.eval_dataset(gallery).split.items if gallery else None,
                g[1] if g else None, path, n_queries=self.grid_queries, k=self.grid_k,
                image_mode=dm.source.image_mode), path)
        self.written += [p for _, p in figures.values()]
        if self.log_images:
            self._log_figures(trainer, figures)

    def _log_figures(self, trainer: L.Trainer, figures: dict[str, tuple[Any, Path]]) -> None:
        from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

        for logger in trainer.loggers:
            for name, (fig, path) in figures.items():
                if isinstance(logger, WandbLogger):
                    logger.log_image(key=f"plots/{name}", images=[str(path)])
                elif isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_figure(f"plots/{name}", fig, trainer.global_step,
                                                 close=False)

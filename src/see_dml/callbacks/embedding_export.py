"""End-of-training export: the selected checkpoint's test embeddings and plots in the run dir.

``train`` tests the validation-selected checkpoint (prefix ``test``) and then the final
weights (``test_final``). The module leaves each test's
:class:`~see_dml.evaluation.report.EvaluationResult` in ``DMLModule.test_result``; after the test
whose prefix is this callback's ``test_prefix``, the callback hands that result to
:func:`see_dml.evaluation.report.report` (the function ``python -m see_dml.evaluate`` uses) and
so writes, on rank zero:

- ``embeddings_<split>.npz`` (``test``, or ``query`` and ``gallery``; layout in
  :mod:`see_dml.evaluation.embedding_files`);
- ``projection_<query split>.png``, ``recall_at_k.png``, ``retrieval_grid_<query split>.png``
  (:mod:`see_dml.evaluation.plots`), also sent to loggers that take images (W&B ``log_image``,
  TensorBoard ``add_figure``; the CSV logger keeps just the files).

Nothing is embedded or searched again: the grid shows the neighbours the metrics counted.
Enabled by ``conf/callbacks/default.yaml``; ``callbacks.embedding_export=null`` removes it.

``train`` holds the report (:meth:`EmbeddingExport.hold`) until it has written
``metrics.json`` (:meth:`EmbeddingExport.release`), as ``evaluate`` writes its metrics
before its plots: a t-SNE of thousands of points that crashes, or is cut short with Ctrl-C,
never costs the run its metrics. Under ``ddp_spawn`` the tests run in worker processes,
whose copy of the callback cannot hand the result back in memory: rank zero's copy saves it
to a hand-off file in the run directory, which :meth:`EmbeddingExport.release` reports from
and removes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from see_dml.evaluation.embedding_files import EXPORT_FORMATS
from see_dml.evaluation.report import DEFAULT_PROJECTION, EvaluationResult, ReportOptions, report


class EmbeddingExport(Callback):
    """Write test embeddings and plots after the test of the selected checkpoint.

    Args:
        dirpath: output folder (the run dir); default the trainer's ``default_root_dir``.
        export: write ``embeddings_<split>.npz`` (``format=parquet``: ``.parquet`` too).
        format: ``npz`` or ``parquet``.
        plots: draw the projection, Recall@K curve and retrieval grid.
        projection: ``tsne`` (seconds on thousands of points), ``umap`` (umap-learn),
            ``pca`` (milliseconds) or ``none``.
        grid_queries, grid_k: rows and neighbours of the retrieval grid.
        log_images: also send the plots to image-capable loggers.
        test_prefix: the test run to export (``test``: the selected checkpoint).
    """

    def __init__(self, dirpath: str | Path | None = None, export: bool = True,
                 format: str = "npz", plots: bool = True, projection: str = DEFAULT_PROJECTION,
                 grid_queries: int = 8, grid_k: int = 5, log_images: bool = True,
                 test_prefix: str = "test") -> None:
        if format not in EXPORT_FORMATS:
            raise ValueError(f"callbacks.embedding_export.format must be npz or parquet, "
                             f"got '{format}'")
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.options = ReportOptions(export=export, format=format, plots=plots,
                                     projection=projection, grid_queries=grid_queries,
                                     grid_k=grid_k)
        self.log_images = log_images
        self.test_prefix = test_prefix
        self.written: list[Path] = []
        self._holder: int | None = None  # the pid that holds the report (see hold)
        self._held: EvaluationResult | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # the evaluation keeps the neighbour lists of only as many queries as the grid shows
        if hasattr(pl_module, "keep_queries"):  # a DMLModule
            setattr(pl_module, "keep_queries", self.options.grid_queries)  # noqa: B010

    def hold(self) -> None:
        """Keep the result of the tests that follow, and report it in :meth:`release`.

        A copy of the callback in a worker that ``ddp_spawn`` started (another pid) saves
        the result to :meth:`_handoff_file` instead, for :meth:`release` to read."""
        self._holder = os.getpid()

    def release(self, trainer: L.Trainer, datamodule: Any = None) -> None:
        """Report the result held since :meth:`hold` (if its test ran), and hold no more.

        ``datamodule``: the tests' (for the images of the retrieval grid); default the
        trainer's, which a ``ddp_spawn`` test does not leave in this process."""
        handoff = self._handoff_file(trainer) if self._holder is not None else None
        held, self._holder, self._held = self._held, None, None
        if held is None and handoff is not None and handoff.exists():
            import torch

            # written by this run's own worker (on_test_end below): not a foreign pickle
            held = torch.load(handoff, map_location="cpu", weights_only=False)
        if handoff is not None:
            handoff.unlink(missing_ok=True)
        if held is not None:
            self._report(trainer, held, datamodule)

    def _handoff_file(self, trainer: L.Trainer) -> Path:
        """Where a spawned worker leaves the held result for the process that holds it."""
        root = self.dirpath or Path(trainer.default_root_dir)
        return root / f".embedding_export_{self._holder}.pt"

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # on_test_end: after the module's on_test_epoch_end (Lightning calls callbacks'
        # epoch-end hooks before the module's), so the result is there.
        result = getattr(pl_module, "test_result", None)
        if (result is None or result.prefix != self.test_prefix or not trainer.is_global_zero
                or not (self.options.export or self.options.plots)):
            return
        if self._holder == os.getpid():
            self._held = result
        elif self._holder is not None:  # a ddp_spawn worker's copy of a held callback
            import torch

            file = self._handoff_file(trainer)
            file.parent.mkdir(parents=True, exist_ok=True)
            torch.save(result, file)
        else:
            self._report(trainer, result)

    def _report(self, trainer: L.Trainer, result: EvaluationResult,
                datamodule: Any = None) -> None:
        # Lightning's data connector sets trainer.datamodule; the Trainer class does not
        # declare it
        dm = datamodule if datamodule is not None else trainer.datamodule  # type: ignore[attr-defined]
        done = report(result, dm, self.dirpath or trainer.default_root_dir, self.options)
        self.written += done.files
        if self.log_images:
            self._log_figures(trainer, done.figures)

    def _log_figures(self, trainer: L.Trainer, figures: dict[str, tuple[Any, Path]]) -> None:
        from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

        for logger in trainer.loggers:
            for name, (fig, path) in figures.items():
                if isinstance(logger, WandbLogger):
                    logger.log_image(key=f"plots/{name}", images=[str(path)])
                elif isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_figure(f"plots/{name}", fig, trainer.global_step,
                                                 close=False)

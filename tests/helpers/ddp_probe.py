"""A callback that records, in every DDP process, the labels of each training batch as the
process loaded it and as the loss saw it (after the all-gather).

Added through the config (``+callbacks.probe._target_=helpers.ddp_probe.BatchProbe
+callbacks.probe.out_dir=<dir>``), so that it runs in every task; each writes
``<out_dir>/batches_rank<global rank>.json``: ``{"world_size", "local": [[label, ...], ...],
"gathered": [[...], ...]}``, one list per step.
"""

from __future__ import annotations

import json
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class BatchProbe(Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.local: list[list[int]] = []
        self.gathered: list[list[int]] = []

    def on_fit_start(self, trainer, module) -> None:
        module.add_embedding_hook(self._record)

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.local.append(batch[1].tolist())

    def _record(self, module, embeddings, labels) -> dict:
        self.gathered.append(labels.tolist())
        return {}

    def on_fit_end(self, trainer, module) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"batches_rank{trainer.global_rank}.json").write_text(json.dumps(
            {"world_size": trainer.world_size, "local": self.local, "gathered": self.gathered}))

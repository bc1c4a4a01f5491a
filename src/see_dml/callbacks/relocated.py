"""Resuming a run in another directory than it was trained in (moved or copied)."""

from __future__ import annotations

import logging
import os
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)


class RelocatedRun(Callback):
    """A Lightning callback for a run resumed in another directory than it was trained in
    (moved or copied): the checkpoint callbacks' saved paths (``dirpath``, the best and
    last checkpoints, the top k) are rewritten from the old run directory to this one
    before Lightning restores them. Lightning's ``ModelCheckpoint`` otherwise drops its
    top-k record when its ``dirpath`` changed, and the resumed run would select its best
    checkpoint among the new epochs only, or test a checkpoint path that no longer exists.
    """

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        # Lightning keeps a local ModelCheckpoint's dirpath as its real path
        self.run_dir = os.path.realpath(run_dir)

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        stored = (checkpoint.get("see_dml_config") or {}).get("paths", {}) or {}
        old = stored.get("run_dir")
        if not old or os.path.realpath(str(old)) == self.run_dir:
            return
        olds = {str(old), os.path.realpath(str(old))}

        def moved(value: Any) -> Any:
            for before in olds:
                if isinstance(value, str) and (value == before
                                               or value.startswith(before + os.sep)):
                    return self.run_dir + value[len(before):]
            return value

        for state in (checkpoint.get("callbacks") or {}).values():
            if not isinstance(state, dict) or "dirpath" not in state:
                continue
            for key in ("dirpath", "best_model_path", "kth_best_model_path",
                        "last_model_path"):
                if key in state:
                    state[key] = moved(state[key])
            if isinstance(state.get("best_k_models"), dict):
                state["best_k_models"] = {moved(k): v for k, v in state["best_k_models"].items()}
        log.info("resuming a run that was moved from %s to %s", old, self.run_dir)

"""DDP on CPU (2 gloo processes, ddp_spawn): the real config trains and tests end to end."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from see_dml.train import train


class GlobalBatchProbe(Callback):
    """Records, on every rank, the labels of the batch the loss sees (after the all-gather).

    Added through the config (``+callbacks.ddp_probe``) so that it runs inside the spawned
    processes; each rank writes ``ddp_probe_rank<r>.json`` into ``out_dir``.
    """

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.batches: list[list[int]] = []
        self.backbone_trains: list[bool] = []
        self.world_size = 0

    def on_fit_start(self, trainer, module) -> None:
        self.world_size = trainer.world_size
        module.add_embedding_hook(self._record)

    def _record(self, module, embeddings, labels) -> dict:
        assert embeddings.shape[0] == labels.shape[0]
        self.batches.append(labels.tolist())
        self.backbone_trains.append(any(p.requires_grad for p in module.backbone.parameters()))
        return {}

    def on_fit_end(self, trainer, module) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        out = self.out_dir / f"ddp_probe_rank{trainer.global_rank}.json"
        out.write_text(json.dumps({"world_size": self.world_size, "batches": self.batches,
                                   "backbone_trains": self.backbone_trains}))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_ddp_cpu_trains_and_tests(make_cfg):
    probe_dir = Path(make_cfg().paths.run_dir) / "probe"
    # epoch 0 is a warm-up (frozen backbone: parameters without gradient under DDP)
    cfg = make_cfg("trainer=ddp_cpu", "trainer.max_epochs=2", "trainer.limit_train_batches=2",
                   "model.warmup_epochs=1",
                   "+callbacks.ddp_probe._target_=test_ddp_cpu.GlobalBatchProbe",
                   f"+callbacks.ddp_probe.out_dir={probe_dir}")
    assert cfg.trainer.devices == 2 and cfg.trainer.strategy.startswith("ddp_spawn")
    metrics = train(cfg)

    run_dir = Path(cfg.paths.run_dir)
    saved = json.loads((run_dir / "metrics.json").read_text())
    # the workers tested; the export of their result came after metrics.json, as without DDP
    written = run_dir / "metrics.json"
    for name in ("embeddings_test.npz", "recall_at_k.png"):
        assert (run_dir / name).stat().st_mtime_ns >= written.stat().st_mtime_ns, name
    assert not list(run_dir.glob(".embedding_export_*"))  # the hand-off file is gone
    for key in ("test/recall@1", "test/recall@8", "test/map@r", "test/r_precision",
                "test_final/recall@1", "best/val/map@r"):
        assert 0.0 <= saved[key] <= 1.0, key
        assert saved[key] == pytest.approx(metrics[key])
    # the spawned workers hand back only the best path: the rest comes from last.ckpt
    assert metrics["epochs"] == 2
    assert Path(metrics["best_checkpoint"]).exists()
    with (Path(cfg.paths.run_dir) / "csv" / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert any(r["test_final/recall@1"] for r in rows)  # the final weights were tested
    # ...by the main process, after the workers' fit: the training rows are kept beside them
    assert sum(1 for r in rows if r["train/loss_epoch"]) == 2
    last = torch.load(Path(cfg.paths.run_dir) / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=False)
    assert (last["epoch"], last["global_step"]) == (1, 4)  # the final epoch, not the best

    # the loss saw the gathered global batch: 2 x 32 images, 16 classes x 4, same on both ranks
    probes = [json.loads((probe_dir / f"ddp_probe_rank{r}.json").read_text()) for r in (0, 1)]
    assert [p["world_size"] for p in probes] == [2, 2]
    assert probes[0]["batches"] == probes[1]["batches"]
    assert len(probes[0]["batches"]) == 4  # 2 epochs x 2 batches
    for labels in probes[0]["batches"]:
        counts = Counter(labels)
        assert len(labels) == 64
        assert len(counts) == 16 and set(counts.values()) == {4}
    assert probes[0]["batches"][0] != probes[0]["batches"][2]  # set_epoch: a new draw
    assert [p["backbone_trains"] for p in probes] == [[False, False, True, True]] * 2

"""docs/extending.md works as written: a new loss is a YAML file of one's own, no code."""

from __future__ import annotations

import re
from pathlib import Path

from pytorch_metric_learning.losses import CircleLoss

from see_dml.module import load_module_from_checkpoint
from see_dml.train import train

EXTENDING = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


def _extending_yaml() -> str:
    text = EXTENDING.read_text()
    section = text.split("## A loss from pytorch-metric-learning", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```yaml\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the loss section shows one loss file"
    return blocks[0]


def test_a_new_loss_yaml_from_the_docs_trains(make_cfg, tmp_path):
    folder = tmp_path / "my_conf"
    (folder / "loss").mkdir(parents=True)
    (folder / "loss" / "circle.yaml").write_text(_extending_yaml())
    cfg = make_cfg("loss=circle", f"hydra.searchpath=[file://{folder}]",
                   "callbacks.embedding_export=null", "test_final=false")
    metrics = train(cfg)
    assert 0.0 <= metrics["test/recall@1"] <= 1.0
    # the checkpoint rebuilds with the new loss: it was the loss that trained
    module, _ = load_module_from_checkpoint(Path(cfg.paths.run_dir) / "checkpoints" / "last.ckpt")
    assert isinstance(module.criterion.loss, CircleLoss)
    assert module.criterion.name == "circle"

"""docs/extending.md works as written: a new loss is a YAML file of one's own, no code; a
synthesiser of one's own is a module and a YAML file, no edit of the package."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pytorch_metric_learning.losses import CircleLoss

from see_dml.module import load_module_from_checkpoint
from see_dml.runtime.errors import ConfigError
from see_dml.train import train
from see_dml.training.config_checks import validate_config

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


def _extending_blocks(section: str, language: str) -> list[str]:
    text = EXTENDING.read_text().split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def test_a_synthesiser_of_ones_own_from_the_docs_trains(make_cfg, tmp_path, monkeypatch):
    """The docs' synthesiser outside the package: its module on the path, its YAML in a
    folder of one's own; it is called every step and its added loss and statistic logged."""
    [code] = _extending_blocks("A synthesiser", "python")
    [yaml] = _extending_blocks("A synthesiser", "yaml")
    (tmp_path / "my_synth.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    folder = tmp_path / "my_conf"
    (folder / "synthesis").mkdir(parents=True)
    (folder / "synthesis" / "jitter.yaml").write_text(yaml)
    cfg = make_cfg("synthesis=jitter", f"hydra.searchpath=[file://{folder}]",
                   "callbacks.embedding_export=null", "test_final=false")
    metrics = train(cfg)
    assert 0.0 <= metrics["test/recall@1"] <= 1.0
    logged = (Path(cfg.paths.run_dir) / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert "train/jitter/sigma" in logged
    assert any(c.startswith("train/loss") for c in logged.split(","))
    # a key Jitter does not take is the one-line schema error, before training
    with pytest.raises(ConfigError, match=r"synthesis.sigmaa is not an option of synthesis"):
        validate_config(make_cfg("synthesis=jitter", f"hydra.searchpath=[file://{folder}]",
                                 "+synthesis.sigmaa=1"))

"""A run made by an older layout of the package still evaluates, resumes and tables.

``tests/fixtures/run_before_regroup`` was trained at commit 17f290b, before the library was
grouped into subpackages by job (see ``tests/fixtures/README.md``): its ``config.yaml``, its
``.hydra`` files and its checkpoints' stored config name module paths that moved
(``see_dml.loggers.ResumableCSVLogger``, ``see_dml.hydra_callbacks.RunDirectories``, ...).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from conftest import compose_config

FIXTURE = Path(__file__).parent / "fixtures" / "run_before_regroup"
#: What the run was trained with (its .hydra/overrides.yaml), less its placement.
OVERRIDES = [o for o in yaml.safe_load((FIXTURE / ".hydra" / "overrides.yaml").read_text())
             if not o.startswith(("hydra.", "paths."))]


@pytest.fixture
def old_run(tmp_path: Path) -> Path:
    """A copy of the committed run: tools may write into a run directory."""
    run = tmp_path / "old_run"
    shutil.copytree(FIXTURE, run)
    return run


def _cache(tmp_path: Path) -> str:
    return f"paths.cache_dir={tmp_path.parent / 'see_dml_cache'}"  # shared with make_cfg's


def test_the_fixture_names_the_old_module_paths():
    """The point of the fixture: it was written by the old layout (a regenerated copy would
    test nothing)."""
    text = (FIXTURE / "config.yaml").read_text()
    assert "_target_: see_dml.loggers.ResumableCSVLogger" in text
    hydra = (FIXTURE / ".hydra" / "hydra.yaml").read_text()
    assert "see_dml.hydra_callbacks.RunDirectories" in hydra
    metrics = json.loads((FIXTURE / "metrics.json").read_text())
    assert metrics["provenance/commit"].startswith("17f290b")


def test_an_old_checkpoint_evaluates_to_its_recorded_test_metrics(old_run, tmp_path):
    from see_dml.evaluate import evaluate

    recorded = json.loads((old_run / "metrics.json").read_text())
    cfg = compose_config([f"ckpt_path={old_run / 'checkpoints' / 'epoch000.ckpt'}",
                          f"paths.run_dir={tmp_path / 'eval'}", _cache(tmp_path),
                          "progress=false"], config_name="evaluate")
    result = evaluate(cfg)
    for key in ("test/recall@1", "test/map@r", "test/r_precision"):
        assert result[key] == pytest.approx(recorded[key], abs=1e-6), key


def test_an_old_run_resumes_in_place_and_extends(old_run, tmp_path):
    """``resume=<old run>`` with a larger ``trainer.max_epochs``: the run's own settings
    are accepted against its checkpoint's stored config, and training goes on from epoch 2."""
    from see_dml.train import train

    cfg = compose_config([*OVERRIDES, "trainer.max_epochs=3", f"paths.run_dir={old_run}",
                          f"paths.output_dir={tmp_path / 'out'}", _cache(tmp_path),
                          "test_final=false"])
    resumed = train(cfg)
    assert resumed["epochs"] == 3
    state = torch.load(old_run / "checkpoints" / "last.ckpt", map_location="cpu",
                       weights_only=True)
    assert state["epoch"] == 2  # 0-based: the third epoch was trained on top of the old two
    assert Path(resumed["best_checkpoint"]).parent == (old_run / "checkpoints").resolve()
    rows = (old_run / "csv" / "metrics.csv").read_text().splitlines()
    assert any(r.split(",")[0] for r in rows[1:])  # the old run's logged rows were kept


def test_an_old_run_tables(old_run):
    from see_dml.reporting import tables

    markdown = tables.main([str(old_run.parent)])
    row = next(line for line in markdown.splitlines() if "| SEE |" in line)
    recorded = json.loads((old_run / "metrics.json").read_text())
    assert row.startswith("| DoubleMNIST | small_cnn | 16 | proxy_anchor | SEE | 2 | 1 |")
    assert f"| {100 * recorded['test/recall@1']:.2f} | {100 * recorded['test/map@r']:.2f} |" in row

"""Third-party noise is silenced at the source or by one narrow filter each."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest
from lightning.pytorch.callbacks import ModelCheckpoint

from see_dml.runtime import cli


@pytest.fixture
def restore_filters():
    """No line filter of ours at the start (an earlier test in this process may have run a
    tool that installs it: quiet_third_party is process-wide); warning filters and logger
    filters as they were before the test afterwards."""
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    before = list(logger.filters)
    logger.filters[:] = [f for f in before if not isinstance(f, cli._DropLines)]
    with warnings.catch_warnings():
        yield
    logger.filters[:] = before


def _emitted(quiet: bool, tmp_path: Path) -> list[str]:
    """Warnings of the two noisy Lightning sources, with or without the filters."""
    from lightning.pytorch.utilities._pytree import _tree_flatten

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if quiet:
            cli.quiet_third_party()
        _tree_flatten(1)  # Lightning builds torch's deprecated LeafSpec here
        (tmp_path / "last.ckpt").touch()  # a resumed run's own checkpoint directory
        ModelCheckpoint(dirpath=tmp_path)._ModelCheckpoint__warn_if_dir_not_empty(tmp_path)
    return [str(w.message) for w in caught]


def test_leafspec_and_checkpoint_dir_warnings_are_filtered(tmp_path, restore_filters):
    loud = _emitted(False, tmp_path)
    assert any("LeafSpec" in m for m in loud)  # the sources still emit them
    assert any("exists and is not empty" in m for m in loud)
    assert _emitted(True, tmp_path) == []


def test_litlogger_tip_is_dropped_and_other_lines_kept(caplog, restore_filters, tmp_path):
    import lightning as L

    def trainer_lines() -> str:
        caplog.clear()
        with caplog.at_level(logging.INFO):
            L.Trainer(accelerator="cpu", logger=L.pytorch.loggers.CSVLogger(tmp_path),
                      enable_progress_bar=False, enable_model_summary=False)
        return caplog.text

    assert "litlogger" in trainer_lines()
    cli.quiet_third_party()
    cli.quiet_third_party()  # idempotent: one filter
    lines = trainer_lines()
    assert "litlogger" not in lines
    assert "GPU available" in lines  # Lightning's other lines still pass
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    assert sum(isinstance(f, cli._DropLines) for f in logger.filters) == 1


def test_pyproject_license_is_an_spdx_string():
    # setuptools >= 77 deprecates the TOML-table form {text = "MIT"} with a warning per build
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist = apply_configuration(Distribution(),
                                   Path(__file__).parents[1] / "pyproject.toml")
    assert not [w for w in caught if "license" in str(w.message).lower()]
    assert dist.metadata.license_expression == "MIT"


def test_lightning_lines_are_printed_once_under_hydras_logging():
    """``import lightning`` adds its own console handler beside the root's (Hydra's): every
    INFO line came twice. With a root handler, Lightning's is dropped."""
    import logging

    import lightning  # noqa: F401 - the import adds the handler

    from see_dml.runtime.cli import one_lightning_console

    logger = logging.getLogger("lightning")
    extra = logging.StreamHandler()
    extra.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))  # Lightning's own
    logger.addHandler(extra)
    root_handler = logging.NullHandler()
    logging.getLogger().addHandler(root_handler)
    try:
        one_lightning_console()
        assert extra not in logger.handlers
    finally:
        logging.getLogger().removeHandler(root_handler)
        if extra in logger.handlers:
            logger.removeHandler(extra)


@pytest.mark.parametrize("tool", ["evaluate", "export", "retrieve", "index"])
def test_a_tools_help_says_what_it_does_and_lists_its_own_keys(tool):
    """``--help`` of a tool: its usage line, its config's keys, and not training's groups
    (Hydra's default help listed every group of conf/, none of which the tool reads)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", f"see_dml.{tool}", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"python -m see_dml.{tool} ")
    assert "ckpt_path: ???" in proc.stdout and f"task_name: {tool}" in proc.stdout
    assert "experiment/paper" not in proc.stdout and "powered by Hydra" not in proc.stdout


def test_a_failed_tool_run_leaves_no_folder_but_the_users(tmp_path):
    """A tool that fails before writing anything removes its run directory and the folders
    Hydra made above it (``<output_dir>/evaluate/runs``), not ``paths.output_dir`` itself,
    and not a folder that holds another run."""
    from omegaconf import OmegaConf

    from see_dml.runtime.errors import ConfigError

    def fails(cfg):
        raise ConfigError("split must be one of test, val; got 'x'")

    out = tmp_path / "out"
    for name, keep in (("2026-12-02_10-00-00_a", False), ("2026-12-02_10-00-01_b", True)):
        run_dir = out / "evaluate" / "runs" / name
        (run_dir / ".hydra").mkdir(parents=True)
        cfg = OmegaConf.create({"paths": {"run_dir": str(run_dir), "output_dir": str(out)}})
        if keep:
            (out / "evaluate" / "runs" / "other_run").mkdir()
        with pytest.raises(SystemExit):
            cli.run_cli(fails, cfg)
        assert not run_dir.exists()
        assert out.is_dir() and (out / "evaluate" / "runs").is_dir() is keep

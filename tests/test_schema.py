"""The schema of the owned config groups (``see_dml.runtime.schema``): an unknown key, a wrongly
typed value or a value outside its choices is one line naming the key, from
``validate_config``, before anything is built; every shipped option and experiment passes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import compose_config
from see_dml.runtime.errors import ConfigError
from see_dml.runtime.schema import check_schema
from see_dml.training.config_checks import validate_config

CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.mark.parametrize(("override", "message"), [
    ("see.mode=bogus", "see.mode='bogus': must be one of top_fraction, threshold"),
    ("data.transforms.hflip=maybe", "data.transforms.hflip='maybe': must be true or false"),
    ("+data.batchsize=32", "data.batchsize is not an option of data "
                           "(see_dml.data.datamodule.RetrievalDataModule); did you mean "
                           "data.batch_size?"),
    ("+see.weigth=1", "see.weigth is not an option of see"),
    ("+dataset.rooot=/x", "did you mean dataset.root?"),
    ("model.head.pooling=mean", "model.head.pooling='mean': must be one of avg, max"),
    ("model.backbone.in_chans=three", "model.backbone.in_chans='three': must be an integer"),
    ("see.n_points=2.5", "see.n_points=2.5: must be an integer"),
    ("data.transforms.interpolation=3", "data.transforms.interpolation=3: must be a string"),
])
def test_slipping_values_fail_in_validation_naming_the_key(override, message):
    cfg = compose_config([override])
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_see_mode_is_checked_while_see_is_off():
    cfg = compose_config(["see.enabled=false", "see.mode=bogus"])
    with pytest.raises(ConfigError, match="see.mode"):
        check_schema(cfg)


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("override", [
    *(f"dataset={o}" for o in _options("dataset")),
    *(f"model={o}" for o in _options("model")),
    *(f"synthesis={o}" for o in _options("synthesis")),
    "see.enabled=true", "model.backbone.in_chans=3",
])
def test_every_shipped_option_passes(override):
    check_schema(compose_config([override]))


def test_the_cli_says_it_in_one_line_before_any_work(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    done = subprocess.run([sys.executable, "-m", "see_dml.train", "+data.batchsize=32",
                           f"paths.output_dir={tmp_path / 'out'}"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "error: data.batchsize is not an option of data (see_dml.data.datamodule."
        "RetrievalDataModule); did you mean data.batch_size?")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.ckpt"))

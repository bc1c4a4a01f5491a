"""A run made before a config key existed resumes when the key has the value that does what
the code did before it (config.ADDED_KEYS), and not with another value."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from see_dml.runtime.config import ADDED_KEYS
from see_dml.runtime.errors import ConfigError
from see_dml.train import check_resume_config


def _checkpoint(path, cfg) -> str:
    stored = OmegaConf.to_container(cfg, resolve=True)
    for key in ADDED_KEYS:  # as the run's config was before the key was added
        *parents, leaf = key.split(".")
        node = stored
        for name in parents:
            node = node.get(name, {})
        node.pop(leaf, None)
    torch.save({"state_dict": {}, "see_dml_config": stored}, path)
    return str(path)


def test_runs_from_before_a_key_resume_at_its_old_behaviour(make_cfg, tmp_path):
    cfg = make_cfg()
    assert all(OmegaConf.select(cfg, k) in (v, None) for k, v in ADDED_KEYS.items())
    ckpt = _checkpoint(tmp_path / "old.ckpt", cfg)
    check_resume_config(cfg, ckpt)  # no error
    with pytest.raises(ConfigError, match="protocol"):
        check_resume_config(make_cfg("protocol=authors", "dataset.val_fraction=0"), ckpt)

"""Shared fixtures: the real composed Hydra config, shrunk for CPU tests."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import DictConfig, open_dict

from see_dml.runtime.config import compose

os.environ.setdefault("WANDB_SILENT", "true")

if os.environ.get("PYTEST_XDIST_WORKER"):  # make test runs one worker per core (pytest-xdist)
    import torch

    # the workers fill the cores already: a torch thread pool each would oversubscribe them
    torch.set_num_threads(1)

#: Overrides that make any composed training config a seconds-long CPU run.
FAST = [
    "trainer.accelerator=cpu",
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=3",
    "trainer.enable_progress_bar=false",
    "data.batch_size=32",
    "data.m_per_class=4",
    "data.eval_batch_size=128",
    "model.embed_dim=16",
]


def compose_config(overrides: list[str], config_name: str = "train") -> DictConfig:
    return compose(overrides, config_name)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One seconds-long Double-MNIST training (the default config, :data:`FAST`), trained
    once per test session for every tool's tests (evaluate, retrieve, the bad inputs).

    Returns ``metrics`` (what train returned), ``run_dir``, ``best`` (the validation-selected
    checkpoint), ``last`` (``last.ckpt``), ``root`` (a folder for the tests' own files) and
    the composed ``cfg``. Tests only read the run: copy a file before changing it.
    """
    from see_dml.train import train

    root = tmp_path_factory.mktemp("tiny_run")
    cache = tmp_path_factory.getbasetemp() / "see_dml_cache"  # shared with make_cfg's
    cfg = compose_config([*FAST, "dataset.images_per_class=20", f"paths.run_dir={root / 'run'}",
                          f"paths.cache_dir={cache}", f"paths.output_dir={root / 'outputs'}",
                          "test_final=false"])
    metrics = train(cfg)
    return {"metrics": metrics, "run_dir": root / "run", "best": metrics["best_checkpoint"],
            "last": str(root / "run" / "checkpoints" / "last.ckpt"), "root": root, "cfg": cfg}


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """``make_cfg(*overrides)``: the real ``conf/train.yaml``, small and writing to ``tmp_path``.

    Double-MNIST is composed with 20 images per class and cached per test session.
    """
    cache = tmp_path.parent / "see_dml_cache"

    def _make(*overrides: str, fast: bool = True) -> DictConfig:
        base = [f"paths.run_dir={tmp_path / 'run'}", f"paths.cache_dir={cache}",
                f"paths.output_dir={tmp_path / 'outputs'}"]
        cfg = compose_config([*base, *(FAST if fast else []), *overrides])
        with open_dict(cfg):
            if cfg.dataset._target_.endswith("DoubleMNIST") and not any(
                    o.startswith("dataset.images_per_class") for o in overrides):
                cfg.dataset.images_per_class = 20
        return cfg

    return _make

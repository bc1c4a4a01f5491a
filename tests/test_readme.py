"""README code stays true: its Python blocks run, and the commands it shows exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
TEXT = README.read_text()
PY_BLOCKS = re.findall(r"```python\n(.*?)```", TEXT, flags=re.S)


@pytest.mark.parametrize("index", range(len(PY_BLOCKS)))
def test_python_blocks_run(index):
    exec(compile(PY_BLOCKS[index], f"README.md block {index}", "exec"), {})


def test_readme_names_the_two_commands():
    assert "make train" in TEXT and "make test" in TEXT
    makefile = (README.parent / "Makefile").read_text()
    assert re.search(r"^train:", makefile, flags=re.M)
    assert re.search(r"^test:", makefile, flags=re.M)
    assert "make test" in (README.parent / ".ci" / "run").read_text()


def test_config_groups_named_in_readme_exist():
    conf = README.parent / "conf"
    for group, options in {
        "loss": ["proxy_anchor", "multi_similarity", "contrastive", "triplet", "norm_softmax",
                 "arcface"],
        "dataset": ["double_mnist", "mnist", "cub", "cars", "sop", "inshop"],
        "synthesis": ["embedding_expansion", "symmetric"],
        "logger": ["csv", "tensorboard", "wandb", "none"],
        "trainer": ["default", "cpu", "gpu", "ddp", "ddp_cpu"],
    }.items():
        for option in options:
            assert (conf / group / f"{option}.yaml").exists(), f"{group}={option}"
            assert f"{option}" in TEXT

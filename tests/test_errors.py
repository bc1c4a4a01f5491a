"""One set of user errors, one line each, one exit status (see_dml.runtime.errors)."""

from __future__ import annotations

import errno

import pytest
from hydra.errors import InstantiationException

from helpers.dataset_fixtures import make_cub
from see_dml.runtime import errors
from see_dml.runtime.errors import USER_ERRORS, DatasetCountError, user_error_line


@pytest.mark.parametrize("kind", USER_ERRORS)
def test_every_user_error_is_its_message_on_one_line(kind):
    err = kind("dataset.root='/x' does not exist") if kind is not FileNotFoundError else \
        FileNotFoundError("dataset.root='/x' does not exist")
    assert user_error_line(err) == "dataset.root='/x' does not exist"


def test_a_component_check_wrapped_by_instantiate_is_a_user_error_and_a_bug_is_not():
    wrapped = InstantiationException("Error in call to target 'X': ValueError('k=0')")
    wrapped.__cause__ = ValueError("k=0")
    assert user_error_line(wrapped) == str(wrapped)
    bug = InstantiationException("Error in call to target 'X': TypeError('y')")
    bug.__cause__ = TypeError("y")
    assert user_error_line(bug) is None
    assert user_error_line(KeyError("x")) is None
    assert user_error_line(OSError(errno.EBADF, "Bad file descriptor")) is None


def test_the_errors_module_loads_nothing_heavy():
    import subprocess
    import sys

    heavy = "('torch', 'lightning', 'hydra', 'numpy')"
    code = ("import sys, see_dml.runtime.errors; "
            f"print(sorted(m for m in {heavy} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"
    assert errors.USER_ERROR_STATUS == 2


def test_a_cub_subset_under_strict_counts_is_one_line_naming_the_key(tmp_path, make_cfg):
    """Train on a CUB copy smaller than the official one: the count check fails before the
    backbone is built, as a user error whose one line names dataset.strict_counts."""
    from see_dml.train import train

    fx = make_cub(tmp_path / "CUB_200_2011")
    cfg = make_cfg("dataset=cub", f"dataset.root={fx.root}")
    with pytest.raises(DatasetCountError) as err:
        train(cfg)
    line = user_error_line(err.value)
    assert line is not None and "\n" not in line and "dataset.strict_counts=false" in line

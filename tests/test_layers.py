"""The layering of pyproject.toml's import-linter contracts: they hold on the tree, and break
when a library module imports an entry point, or when modules import each other in a
cycle."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    # the tree's pyproject.toml, found in its cwd
    return subprocess.run([str(LINT), "--no-cache"], cwd=tree, capture_output=True,
                          text=True, timeout=120,
                          env={"PYTHONPATH": str(tree / "src"), "PATH": "/usr/bin:/bin"})


def _copy(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "src" / "see_dml", tree / "src" / "see_dml", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "conf"))
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    return tree


def test_the_tree_keeps_the_layers(tmp_path):
    run = _lint(_copy(tmp_path))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "3 kept, 0 broken" in run.stdout


def _lint_with(tmp_path, module: str, imported: str, name: str):
    """Lint a copy of the tree where ``module`` (a file under see_dml/) imports ``name`` from
    ``see_dml.<imported>`` inside a function, the kind of import that hid the old cycles."""
    tree = _copy(tmp_path)
    path = tree / "src" / "see_dml" / module
    path.write_text(path.read_text() + f"\n\ndef _f():\n    from see_dml.{imported} import "
                                       f"{name}\n\n    return {name}\n")
    return _lint(tree)


def test_a_library_module_importing_an_entry_point_breaks_the_contract(tmp_path):
    run = _lint_with(tmp_path, "evaluation/report.py", "export", "export_model")
    assert run.returncode != 0
    assert "see_dml.evaluation.report is not allowed to import see_dml.export" in run.stdout
    assert "No library module imports an entry point, and no entry point imports another " \
        "BROKEN" in run.stdout


def test_an_entry_point_importing_another_breaks_the_contract(tmp_path):
    run = _lint_with(tmp_path, "index.py", "retrieve", "retrieve_images")
    assert run.returncode != 0
    assert "see_dml.index is not allowed to import see_dml.retrieve" in run.stdout


def test_a_function_level_import_cycle_breaks_the_acyclic_contract(tmp_path):
    # module -> inference -> module: the cycle DMLModule.load_from_checkpoint once closed
    run = _lint_with(tmp_path, "module.py", "serving.inference", "open_checkpoint")
    assert run.returncode != 0
    assert "No import cycles among the modules of a package BROKEN" in run.stdout
    assert "- .serving -> .module" in run.stdout
    assert "No library module imports an entry point, and no entry point imports another " \
        "KEPT" in run.stdout


def test_an_import_of_a_higher_layer_breaks_the_layers_contract(tmp_path):
    """A part (data) importing one run's evaluation, a layer above it: no cycle yet, and
    not an entry point, but the layers contract names it."""
    run = _lint_with(tmp_path, "data/base.py", "evaluation.plots", "project_2d")
    assert run.returncode != 0
    assert "The library's layers: each imports only the layers below it BROKEN" in run.stdout
    assert "see_dml.data.base -> see_dml.evaluation.plots" in run.stdout


def test_parts_of_one_layer_import_none_of_each_other(tmp_path):
    run = _lint_with(tmp_path, "losses/metric_loss.py", "data.base", "Split")
    assert run.returncode != 0
    assert "The library's layers: each imports only the layers below it BROKEN" in run.stdout

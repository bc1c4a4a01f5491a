"""``python -m see_dml.data.check``: run as a user types it, and its parts in-process."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from helpers.dataset_fixtures import (
    FixtureData,
    corrupt_image,
    make_cub,
    make_inshop,
    truncate_image,
)
from see_dml.data.base import DatasetSource, Split
from see_dml.data.cub import CUB200
from see_dml.data.inshop import InShop
from see_dml.data.validation import check_source, format_report, verify_image


@dataclass
class CliRun:
    """One ``python -m see_dml.data.check`` run, in an empty working directory of its own."""

    fixture: FixtureData | None
    workdir: Path
    returncode: int
    stdout: str
    stderr: str

    def counts(self) -> dict:
        """The JSON object of the last stdout line."""
        return json.loads(self.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CliRun]:
    """The command as a user types it, on several datasets at once.

    Each run pays for importing torch; starting them together halves the wait on 2 cores.
    """
    base = tmp_path_factory.mktemp("check")
    cub = make_cub(base / "ok" / "CUB_200_2011", n_classes=4, per_class=3)
    inshop = make_inshop(base / "inshop", n_train=4, n_test=3)
    corrupted = make_cub(base / "bad" / "CUB_200_2011")
    corrupt_image(corrupted.images["test"][2])
    lenient = "dataset.strict_counts=false"
    cases: dict[str, tuple[FixtureData | None, list[str]]] = {
        "cub": (cub, ["dataset=cub", f"dataset.root={cub.root}", lenient]),
        "inshop": (inshop, ["dataset=inshop", f"dataset.root={inshop.root}", lenient,
                            "dataset.val_fraction=0"]),
        "corrupted": (corrupted, ["dataset=cub", f"dataset.root={corrupted.root}", lenient]),
        "missing": (None, ["dataset=cub", f"dataset.root={base / 'no_such_folder'}"]),
    }
    procs = {}
    for name, (_, overrides) in cases.items():
        workdir = base / f"cwd_{name}"
        workdir.mkdir()
        procs[name] = (workdir, subprocess.Popen(
            [sys.executable, "-m", "see_dml.data.check", *overrides],
            cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    runs = {}
    for name, (workdir, proc) in procs.items():
        stdout, stderr = proc.communicate(timeout=180)
        runs[name] = CliRun(cases[name][0], workdir, proc.returncode, stdout, stderr)
    return runs


@pytest.mark.slow
def test_cli_cub_ok(cli_runs: dict[str, CliRun]) -> None:
    run = cli_runs["cub"]
    assert run.returncode == 0, run.stderr
    counts = run.counts()
    assert list(counts) == ["train", "val", "test"]
    assert run.fixture is not None and counts["test"] == run.fixture.counts["test"]
    # conf/dataset/cub.yaml holds out 10% of the 4 training classes: at least one.
    assert counts["val"] == {"images": 3, "classes": 1}
    assert counts["train"] == {"images": 9, "classes": 3}
    assert "unreadable images: 0" in run.stdout
    assert not list(run.workdir.iterdir()), "the check wrote files into the current directory"


@pytest.mark.slow
def test_cli_inshop_reports_query_and_gallery(cli_runs: dict[str, CliRun]) -> None:
    run = cli_runs["inshop"]
    assert run.returncode == 0, run.stderr
    assert run.fixture is not None and run.counts() == run.fixture.counts


@pytest.mark.slow
def test_cli_corrupted_image_fails_naming_it(cli_runs: dict[str, CliRun]) -> None:
    run = cli_runs["corrupted"]
    assert run.fixture is not None
    bad = run.fixture.images["test"][2]
    assert run.returncode == 2
    assert str(bad) in run.stdout and str(bad) in run.stderr
    # The counts are still reported, last.
    assert run.counts()["test"] == run.fixture.counts["test"]


@pytest.mark.slow
def test_cli_missing_root_fails_naming_it(cli_runs: dict[str, CliRun]) -> None:
    run = cli_runs["missing"]
    assert run.returncode == 2
    assert "no_such_folder" in run.stderr and "images.txt" in run.stderr
    assert "Traceback" not in run.stderr


def test_wrong_counts_when_strict_are_a_problem_with_counts_reported(tmp_path: Path) -> None:
    fx = make_cub(tmp_path / "CUB_200_2011")
    report = check_source(CUB200(fx.root, val_fraction=0.25), verify_images=False)
    assert not report.ok
    assert any("expected 5864" in p for p in report.problems)
    assert report.counts()["test"] == fx.counts["test"] and "val" in report.counts()


def test_truncated_image_is_unreadable(tmp_path: Path) -> None:
    fx = make_inshop(tmp_path / "inshop")
    bad = truncate_image(fx.images["gallery"][0])
    report = check_source(InShop(fx.root, strict_counts=False), workers=2, progress=False)
    assert [p for p, _ in report.unreadable] == [bad]
    assert not report.ok and str(bad) in format_report(report, InShop(fx.root))


def test_unreadable_with_skip_is_a_note_not_a_failure(tmp_path: Path) -> None:
    fx = make_cub(tmp_path / "CUB_200_2011")
    bad = corrupt_image(fx.images["train"][0])
    report = check_source(CUB200(fx.root, strict_counts=False, on_error="skip"), progress=False)
    assert report.ok and [p for p, _ in report.unreadable] == [bad]
    assert any("on_error=skip" in n for n in report.notes)


def test_verify_image(tmp_path: Path) -> None:
    fx = make_cub(tmp_path / "CUB_200_2011", n_classes=1, per_class=3)
    good, corrupt, truncated = fx.images["train"]
    assert verify_image(good) is None
    assert verify_image(corrupt_image(corrupt)) is not None
    assert verify_image(truncate_image(truncated)) is not None
    assert verify_image(tmp_path / "missing.jpg") == "file not found"


class _Overlapping(DatasetSource):
    """In-memory splits whose test split reuses a training class."""

    name = "overlapping"

    def load_splits(self) -> dict[str, Split]:
        images = np.zeros((6, 4, 4), dtype=np.uint8)
        return {"train": Split(images[:3], np.array([1, 1, 2]), "train"),
                "test": Split(images[3:], np.array([2, 3, 3]), "test")}


def test_shared_train_test_classes_are_a_problem() -> None:
    report = check_source(_Overlapping(strict_counts=False))
    assert not report.ok
    assert report.overlaps == [p for p in report.problems if "share" in p]
    assert "'train' and 'test' share 1 classes" in report.overlaps[0]
    assert report.images_in_memory and "held in memory" in format_report(report, _Overlapping())


def test_check_config_defaults() -> None:
    conf_dir = Path(__file__).resolve().parents[2] / "conf"
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        cfg = compose("check", return_hydra_config=True)
    assert cfg.check.verify_images is True and cfg.check.workers >= 1
    assert "_target_" in cfg.dataset and cfg.seed == 0
    # A check writes nothing where it runs: no .hydra/ folder, no log file.
    assert cfg.hydra.output_subdir is None and cfg.hydra.run.dir == "."
    handlers = cfg.hydra.job_logging.handlers
    assert [h.get("class") for h in handlers.values()] == ["logging.StreamHandler"]

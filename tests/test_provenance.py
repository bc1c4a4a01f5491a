"""Every run's metrics.json says what produced it: code version (git commit, dirty flag, or
'unknown' outside a git checkout), library versions, device kind and count."""

from __future__ import annotations

import json
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import pytest

from see_dml.runtime import provenance as prov
from see_dml.train import train

KEYS = {"provenance/commit", "provenance/dirty", "provenance/torch", "provenance/lightning",
        "provenance/timm", "provenance/pytorch_metric_learning", "provenance/device",
        "provenance/device_count", "provenance/threads", "provenance/cpu_capability"}


def test_train_writes_provenance_into_metrics_json(make_cfg):
    import torch

    cfg = make_cfg("trainer.max_epochs=1", "threads=2")
    before = torch.get_num_threads()
    train(cfg)
    assert torch.get_num_threads() == before  # the threads key holds for the run alone
    written = json.loads((Path(cfg.paths.run_dir) / "metrics.json").read_text())
    assert set(written) >= KEYS
    assert written["provenance/threads"] == 2
    assert written["provenance/torch"] == metadata.version("torch")
    assert written["provenance/lightning"] == metadata.version("lightning")
    assert written["provenance/timm"] == metadata.version("timm")
    assert written["provenance/pytorch_metric_learning"] == metadata.version(
        "pytorch-metric-learning")
    assert (written["provenance/device"], written["provenance/device_count"]) == ("cpu", 1)
    assert written["provenance/commit"] == prov.code_version()["commit"]
    assert "test/recall@1" in written  # the metrics are still there


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_code_version_in_and_outside_a_checkout(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    subprocess.run([*git, "init", "-q"], check=True)
    module = repo / "mod.py"
    module.write_text("x = 1\n")
    subprocess.run([*git, "add", "mod.py"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "c"], check=True)
    sha = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True,
                         text=True).stdout.strip()
    assert prov.code_version(module) == {"commit": sha, "dirty": False}
    module.write_text("x = 2\n")
    assert prov.code_version(module) == {"commit": sha, "dirty": True}
    # a file git does not track there (a wheel in a venv inside a checkout): unknown
    stray = repo / "site-packages" / "see_dml" / "__init__.py"
    stray.parent.mkdir(parents=True)
    stray.write_text("")
    assert prov.code_version(stray) == {"commit": "unknown", "dirty": "unknown"}
    outside = tmp_path / "plain" / "mod.py"
    outside.parent.mkdir()
    outside.write_text("")
    assert prov.code_version(outside) == {"commit": "unknown", "dirty": "unknown"}


def test_provenance_without_devices_says_unknown():
    out = prov.provenance()
    assert set(out) == KEYS
    assert out["provenance/device"] == out["provenance/device_count"] == "unknown"
    assert prov.provenance(("NVIDIA H200", 2))["provenance/device_count"] == 2


def test_provenance_records_torchs_cpu_threads_and_instructions():
    import torch

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        out = prov.provenance()
    finally:
        torch.set_num_threads(before)
    assert out["provenance/threads"] == 3
    assert out["provenance/cpu_capability"] == torch.backends.cpu.get_cpu_capability()

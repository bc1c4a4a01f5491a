"""experiments/run_or_resume.sh, the run-or-resume step the experiment scripts share."""

from __future__ import annotations

import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "run_or_resume.sh"


def _run(run_dir: Path, tmp_path: Path, status: int = 0) -> subprocess.CompletedProcess[str]:
    # a stand-in Python that prints what it was asked to run and exits with ``status``
    fake = tmp_path / "py"
    fake.write_text(f'#!/usr/bin/env bash\necho "ran: $*"\nexit {status}\n')
    fake.chmod(0o755)
    code = (f'source "{SCRIPT}"; PY="{fake}"; '
            f'run_or_resume "d32 seed 1" "{run_dir}" seed=1 model.embed_dim=32; echo "rc=$?"')
    return subprocess.run(["bash", "-c", code], capture_output=True, text=True, timeout=30)


def test_a_new_run_starts_in_its_directory(tmp_path):
    out = _run(tmp_path / "run", tmp_path).stdout
    assert f"ran: -m see_dml.train seed=1 model.embed_dim=32 hydra.run.dir={tmp_path / 'run'}" \
        in out
    assert "starting: d32 seed 1" in out and out.rstrip().endswith("rc=0")


def test_a_started_run_resumes_and_a_finished_one_is_skipped(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("{}")
    out = _run(run, tmp_path, status=3).stdout
    assert f"ran: -m see_dml.train seed=1 model.embed_dim=32 resume={run}" in out
    assert "exit 3: d32 seed 1" in out and out.rstrip().endswith("rc=3")
    (run / "metrics.json").write_text("{}")
    out = _run(run, tmp_path).stdout
    assert "done already: d32 seed 1" in out and "ran:" not in out

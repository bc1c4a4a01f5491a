"""The package as a user installs it: a wheel built from the checkout, installed without
network into a folder of its own, runs its tools from a directory outside the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: a seconds-long CPU training on the embedded Double-MNIST
ONE_BATCH = ["trainer.accelerator=cpu", "trainer.max_epochs=1", "+trainer.limit_train_batches=1",
             "trainer.enable_progress_bar=false", "data.batch_size=32", "data.m_per_class=4",
             "model.embed_dim=16", "dataset.images_per_class=20", "logger=none",
             "callbacks.embedding_export=null", "test_final=false"]


@pytest.mark.slow  # builds a wheel and trains in subprocesses
def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    wheels, site, work = tmp_path / "wheels", tmp_path / "site", tmp_path / "work"
    work.mkdir()
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                    str(REPO)], check=True, timeout=300)
    (wheel,) = wheels.glob("see_dml-*.whl")
    subprocess.run([*pip, "install", "-q", "--no-deps", "--no-index", "--target", str(site),
                    str(wheel)], check=True, timeout=300)
    # the wheel holds the configs themselves, not the checkout's link
    assert (site / "see_dml" / "conf" / "train.yaml").is_file()
    assert not (site / "see_dml" / "conf").is_symlink()
    env = {**os.environ, "PYTHONPATH": str(site), "SEE_DML_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("SEE_DML_CONFIG_DIR", None)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args], cwd=work, env=env, capture_output=True,
                              text=True, timeout=600)

    where = run("-c", "import see_dml.runtime.config as c; print(c.__file__); print(c.CONFIG_DIR)")
    assert where.returncode == 0, where.stderr
    assert all(line.startswith(str(site)) for line in where.stdout.split()), where.stdout
    helped = run("-m", "see_dml.train", "--help")
    assert helped.returncode == 0 and "loss: " in helped.stdout, helped.stderr
    out = work / "outputs"
    trained = run("-m", "see_dml.train", *ONE_BATCH, f"paths.output_dir={out}",
                  f"paths.cache_dir={tmp_path / 'cache'}")
    assert trained.returncode == 0, trained.stderr[-3000:]
    (ckpt,) = out.rglob("last.ckpt")
    evaluated = run("-m", "see_dml.evaluate", f"ckpt_path={ckpt}", "progress=false",
                    f"paths.output_dir={out}", f"paths.cache_dir={tmp_path / 'cache'}")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "R@1" in evaluated.stdout or "recall@1" in evaluated.stdout
    # one console script per tool, each with --help
    scripts = {line.split("=")[0].strip().removeprefix("see-dml-")
               for line in (REPO / "pyproject.toml").read_text().splitlines()
               if line.startswith("see-dml-")}
    assert {"train", "download", "check"} <= scripts
    for tool in sorted(scripts):
        script = site / "bin" / f"see-dml-{tool}"
        assert script.exists(), tool
        helped = subprocess.run([sys.executable, str(script), "--help"], cwd=work, env=env,
                                capture_output=True, text=True, timeout=120)
        assert helped.returncode == 0 and helped.stdout.strip(), (tool, helped.stderr[-500:])

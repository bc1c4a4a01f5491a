"""The rehearsal at real size (``benchmarks/bench_scale.py``) on SOP's layout at 10 % of its
classes: every tool end to end, as a user types it, on the official format."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_scale.py"


@pytest.mark.slow
def test_every_tool_on_sop_at_a_tenth_of_its_classes(tmp_path):
    out = tmp_path / "scale.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--data-dir", str(tmp_path / "data"), "--datasets", "sop",
         "--fraction", "0.1", "--out", str(out), "--keep"],
        capture_output=True, text=True, timeout=3000)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    stages = json.loads(out.read_text())["sop (0.1 of classes)"]["stages"]
    assert list(stages) == ["generate", "check", "train", "index", "retrieve", "export"]
    for name, stage in stages.items():
        assert stage["returncode"] == 0, (name, stage.get("error"))
        assert stage["peak_rss_mib"] > 0 and stage["wall_s"] > 0
    work = tmp_path / "data" / "work_sop"
    # check: 10 % of SOP's classes, its images in proportion, every one decoded (the
    # dataset's default config holds validation classes out of the training split)
    counts = json.loads((work / "check.log").read_text().strip().splitlines()[-1])
    assert counts["test"] == {"images": 6052, "classes": 1132}
    assert {k: counts["train"][k] + counts["val"][k] for k in ("images", "classes")} == {
        "images": 5956, "classes": 1132}
    # train: the authors' protocol (every training class, the test scored every epoch), the
    # geometry monitor over every training class (uniformity on a fixed sample of rows)
    metrics = json.loads((work / "run" / "metrics.json").read_text())
    for key in ("test/recall@1", "test/recall@1000", "test/map@r", "best_on_test/recall@1"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["test/num_queries"] == 6052
    geometry = (work / "run" / "geometry.csv").read_text().splitlines()
    header, row = geometry[0].split(","), geometry[1].split(",")
    assert float(row[header.index("geometry/uniformity_rows")]) == 5956
    for name in ("embeddings_test.npz", "projection_test.png", "recall_at_k.png",
                 "retrieval_grid_test.png"):
        assert (work / "run" / name).exists(), name
    # index + retrieve: k=100 neighbours of every test query in columns, JSON capped
    indices = np.load(work / "retrieve" / "neighbours" / "indices.npy", mmap_mode="r")
    assert indices.shape == (6052, 100)
    report = json.loads((work / "retrieve" / "retrieval.json").read_text())
    assert report["num_queries"] == 6052 and len(report["results"]) == 100
    assert (work / "model.onnx").exists()

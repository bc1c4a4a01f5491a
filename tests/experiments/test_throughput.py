"""benchmarks/bench_throughput.py on the CPU at a tiny size: it runs the real training step
and writes the JSON that experiments/budget.py reads. Its numbers are not checked (timing
claims live in benchmarks/, not in tests)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "bench_throughput", REPO / "benchmarks" / "bench_throughput.py")
bench = importlib.util.module_from_spec(_spec)
sys.modules["bench_throughput"] = bench
_spec.loader.exec_module(bench)


@pytest.mark.slow
def test_resnet50_throughput_json_shape(tmp_path, monkeypatch):
    out = tmp_path / "throughput.json"
    # the benchmark sets one torch thread and OMP_NUM_THREADS: undone for the other tests
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads, matmul = torch.get_num_threads(), torch.get_float32_matmul_precision()
    try:
        bench.main(["--device", "cpu", "--backbones", "resnet50", "--image-size", "32",
                    "--batch", "4", "--steps", "2", "--warmup", "1", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
        torch.set_float32_matmul_precision(matmul)
    data = json.loads(out.read_text())
    assert set(data) == {"device", "rates", "details"}
    assert data["device"].startswith("cpu")
    assert list(data["rates"]) == ["resnet50.tv_in1k"]  # the timm name budget.py keys rates by
    rate = data["rates"]["resnet50.tv_in1k"]
    assert isinstance(rate, float) and math.isfinite(rate) and rate > 0
    (row,) = data["details"]
    # the paper setting as composed, with the benchmark's overrides
    assert (row["setting"], row["backbone"], row["embed_dim"]) == (
        "resnet50_512_cub", "resnet50.tv_in1k", 512)
    assert (row["batch"], row["image_size"], row["precision"]) == (4, 32, "32-true")
    assert row["steps"] == 2 and len(row["step_ms"]) == 2
    # SEE at the top fraction 0.4: round(0.4 x 4) = 2 samples x 8 points
    assert (row["see"]["p_min"], row["see"]["p_max"]) == (0.4, 0.4)
    assert (row["see"]["expanded_last_step"], row["see"]["synthetic_last_step"]) == (2, 16)
    assert row["images_per_s_p10"] <= row["images_per_s_median"] <= row["images_per_s_p90"]

"""Batched SEE synthesiser vs a per-sample loop (the authors' approach), CPU or GPU.

Setting of the authors' released scripts at the end of training: a global batch of 180 with
p_max = 0.4, so K = 72 expanded samples, n = 8 points each, d = 128 (DeiT-S) and 512
(ResNet-50). Both versions take the same Gaussian draws; the median wall time over repeats
is printed with the loop / batched ratio and written to benchmarks/results/synthesis.json.
A third column times the batched version with the orthonormalisation of the other device
forced: Householder QR on a GPU (batched QR is slow on CUDA), CholeskyQR2 on a CPU.

    python benchmarks/bench_synthesis.py [--repeats 50] [--device cpu] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

import see_dml.synthesis.see as see_impl
from see_dml.synthesis import spherical_expansion
from see_dml.synthesis.see import _spherical_expansion_loop

RESULTS = Path(__file__).resolve().parent / "results" / "synthesis.json"


def _median_ms(
    fns: dict[str, Callable[[], object]], repeats: int, device: torch.device
) -> dict[str, float]:
    """Median wall time in ms of each function, calls interleaved.

    Interleaving makes both versions share whatever else loads the machine, so their ratio
    stays meaningful on a busy host.
    """
    for fn in fns.values():
        for _ in range(3):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def _expansion_other_route(*args: object, **kwargs: object) -> object:
    """The expansion with the orthonormalisation the other device would use."""
    original = see_impl._orthonormalise_columns
    z = args[0]
    see_impl._orthonormalise_columns = (see_impl._cholesky_qr2_columns if z.device.type == "cpu"
                                        else see_impl._householder_columns)
    try:
        return spherical_expansion(*args, **kwargs)
    finally:
        see_impl._orthonormalise_columns = original


def bench(k: int, n: int, d: int, repeats: int, device: torch.device) -> dict[str, float]:
    gen = torch.Generator(device=device).manual_seed(0)
    z = F.normalize(torch.randn(k, d, generator=gen, device=device), dim=1)
    axes = F.normalize(torch.randn(k, d, generator=gen, device=device), dim=1)
    labels = torch.arange(k, device=device)
    noise = torch.randn(k, d, n, generator=gen, device=device)
    batched_out, _ = spherical_expansion(z, labels, axes, n, noise=noise)
    loop_out, _ = _spherical_expansion_loop(z, labels, axes, n, noise=noise)
    max_diff = (batched_out - loop_out).abs().max().item()
    other_out, _ = _expansion_other_route(z, labels, axes, n, noise=noise)
    other_diff = (batched_out - other_out).abs().max().item()
    # Both draw their own noise from a generator, as in training.
    ms = _median_ms(
        {
            "batched": lambda: spherical_expansion(z, labels, axes, n, generator=gen),
            "loop": lambda: _spherical_expansion_loop(z, labels, axes, n, generator=gen),
            "batched_other": lambda: _expansion_other_route(z, labels, axes, n, generator=gen),
        },
        repeats,
        device,
    )
    batched_ms, loop_ms = ms["batched"], ms["loop"]
    return {
        "K": k,
        "n": n,
        "d": d,
        "batched_ms": round(batched_ms, 4),
        "loop_ms": round(loop_ms, 4),
        "batched_other_route_ms": round(ms["batched_other"], 4),
        "speedup_loop_over_batched": round(loop_ms / batched_ms, 2),
        "max_abs_diff": max_diff,
        "max_abs_diff_other_route": other_diff,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = [bench(72, 8, d, args.repeats, device) for d in (128, 512)]
    print(f"{'K':>4} {'n':>3} {'d':>4} {'batched ms':>11} {'loop ms':>9} {'loop/batched':>13}"
          f" {'other route ms':>15}")
    for r in rows:
        print(
            f"{r['K']:>4} {r['n']:>3} {r['d']:>4} {r['batched_ms']:>11.3f} "
            f"{r['loop_ms']:>9.3f} {r['speedup_loop_over_batched']:>12.1f}x"
            f" {r['batched_other_route_ms']:>15.3f}"
        )
    env = {
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "repeats": args.repeats,
        "statistic": "median wall time",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"environment": env, "results": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

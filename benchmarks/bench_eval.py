"""Evaluation cost: the test stage's metrics vs a bare faiss search vs PML's AccuracyCalculator.

Each (N, d, ks, method) case runs in a fresh subprocess, so its peak RSS (``ru_maxrss``) is
its own. Every worker imports the same libraries and loads the same embeddings before the
clock starts; ``delta`` is the RSS high-water gained during the timed call.

Methods, all on the same L2-normalised float32 embeddings with SOP-like labels (classes of
2-12 images, ~5.3 on average), all-vs-all:

- ``bare``: ``faiss.IndexFlatIP`` add + one search of k + 1 (k = what ``ours`` searches).
- ``ours``: ``see_dml.metrics.evaluate_retrieval(..., keep=KEPT_QUERIES, backend="auto")``,
  the call the test stage makes (normalises, searches, every metric, the kept rows'
  neighbours; SOP's k = 1000 in two passes). ``bench_eval_sop.py`` times the whole test
  stage at SOP's size, interleaved in one process.
- ``pml``: ``AccuracyCalculator(include=(precision_at_1, r_precision,
  mean_average_precision_at_r), k=<the same k>)`` — it has no Recall@K, so it does less.
- ``torch_cuda`` (GPU machines only, not in the default set): ``evaluate_retrieval`` with
  ``backend="auto"`` (the torch search) on embeddings already on the GPU (where a training
  run holds them);
  its peak GPU memory is reported as ``peak_gpu_mib``.

Usage::

    python benchmarks/bench_eval.py                        # 10k, d = 128 and 512
    python benchmarks/bench_eval.py --sizes 60502 --dims 128 --ks-sets cub
    python benchmarks/bench_eval.py --sizes 60502 --dims 512 --methods bare ours torch_cuda

Each method runs ``--repeats`` times, interleaved with the others, and the fastest run is
reported (the machine may be shared). Results are merged into
``benchmarks/results/eval.json`` (keyed by case) and the whole table is printed as Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

KS_SETS = {"cub": (1, 2, 4, 8), "sop": (1, 10, 100, 1000)}
METHODS = ("bare", "ours", "pml")
ALL_METHODS = (*METHODS, "torch_cuda")
RESULTS = Path(__file__).parent / "results" / "eval.json"


def sop_like_labels(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n,) labels in classes of 2-12 items, mean ~5.3, like SOP's test split."""
    sizes = np.clip(2 + rng.poisson(3.35, size=n // 2), 2, 12)
    labels = np.repeat(np.arange(len(sizes)), sizes)[:n]
    if np.sum(labels == labels[-1]) == 1:  # no truncated singleton class
        labels[-1] = labels[-2]
    return rng.permutation(labels)


def make_data(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, d) unit float32 embeddings around per-class centres, and their (n,) labels."""
    rng = np.random.default_rng(seed)
    labels = sop_like_labels(n, rng)
    centres = rng.standard_normal((labels.max() + 1, d), dtype=np.float32)
    x = centres[labels] + 1.2 * rng.standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, labels


def search_k(labels: np.ndarray, ks: tuple[int, ...]) -> int:
    """The k that ``retrieval_metrics`` searches in all-vs-all mode."""
    max_r = int(np.bincount(labels).max()) - 1
    return min(max(max(ks), max_r), len(labels) - 1)


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def worker(method: str, data_dir: Path, ks: tuple[int, ...], k: int) -> dict:
    """Time one method in this (fresh) process; returns time, RSS and the metrics."""
    import faiss
    import torch
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    from see_dml.metrics import KEPT_QUERIES, evaluate_retrieval

    x = np.load(data_dir / "x.npy")
    labels = np.load(data_dir / "labels.npy")
    extra: dict = {}
    if method == "torch_cuda":  # on the GPU before the clock, CUDA context warmed up
        x = torch.from_numpy(x).cuda()
        (x[:8] @ x[:8].T).sum().item()
        torch.cuda.reset_peak_memory_stats()
    base = _rss_mib()
    start = time.perf_counter()
    if method == "bare":
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x)
        index.search(x, k + 1)
        metrics: dict = {}
    elif method == "ours":
        metrics, _ = evaluate_retrieval(x, labels, ks=ks, keep=KEPT_QUERIES, backend="auto")
    elif method == "pml":
        calc = AccuracyCalculator(
            include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
            k=k, device=torch.device("cpu"),
        )
        metrics = calc.get_accuracy(x, labels)
    elif method == "torch_cuda":
        metrics, _ = evaluate_retrieval(x, labels, ks=ks, keep=KEPT_QUERIES, backend="auto")
        torch.cuda.synchronize()
        extra = {"peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20,
                 "device": torch.cuda.get_device_name()}
    else:
        raise ValueError(f"unknown method {method!r}; expected one of {ALL_METHODS}")
    elapsed = time.perf_counter() - start
    peak = _rss_mib()
    return {"time_s": elapsed, "peak_rss_mib": peak, "delta_rss_mib": peak - base,
            "metrics": metrics, **extra}


def run_case(method: str, data_dir: Path, ks: tuple[int, ...], k: int, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--worker", method, "--data", str(data_dir),
           "--ks", *map(str, ks), "--k", str(k)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)
    except subprocess.TimeoutExpired:
        return {"time_s": None, "note": f"killed after {timeout:.0f} s"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def load_results(path: Path = RESULTS) -> dict:
    if path.exists():
        return json.loads(path.read_text())
    return {"results": []}


def markdown_table(rows: list[dict]) -> str:
    by_case: dict[tuple, dict] = {}
    for r in rows:
        by_case.setdefault((r["n"], r["d"], r["ks_set"], r["k"]), {})[r["method"]] = r

    def secs(r: dict | None) -> str:
        return "—" if not r or r.get("time_s") is None else f"{r['time_s']:.2f}"

    def ratio(a: dict | None, b: dict | None) -> str:
        if not a or not b or a.get("time_s") is None or b.get("time_s") is None:
            return "—"
        return f"{a['time_s'] / b['time_s']:.2f}×"

    def mem(r: dict | None) -> str:
        return "—" if not r or "delta_rss_mib" not in r else f"{r['delta_rss_mib']:.0f}"

    lines = [
        "| N | d | ks (search k) | bare faiss s | ours s | ours / bare | PML s | ours / PML "
        "| ΔRSS MiB bare / ours / PML |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (n, d, ks_set, k), m in sorted(by_case.items()):
        bare, ours, pml = (m.get(x) for x in METHODS)
        lines.append(
            f"| {n} | {d} | {ks_set} {KS_SETS[ks_set]} (k={k}) | {secs(bare)} | {secs(ours)} "
            f"| {ratio(ours, bare)} | {secs(pml)} | {ratio(ours, pml)} "
            f"| {mem(bare)} / {mem(ours)} / {mem(pml)} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000])
    parser.add_argument("--dims", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--ks-sets", nargs="+", choices=sorted(KS_SETS), default=["cub", "sop"])
    parser.add_argument("--methods", nargs="+", choices=ALL_METHODS, default=list(METHODS))
    parser.add_argument("--repeats", type=int, default=3, help="runs per method; min counts")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON (merged)")
    parser.add_argument("--worker", choices=ALL_METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--ks", type=int, nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--k", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(worker(args.worker, args.data, tuple(args.ks), args.k)))
        return

    store = load_results(args.out)
    store["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "python": platform.python_version()}
    for n in args.sizes:
        for d in args.dims:
            x, labels = make_data(n, d)
            with tempfile.TemporaryDirectory() as tmp:
                np.save(Path(tmp) / "x.npy", x)
                np.save(Path(tmp) / "labels.npy", labels)
                for ks_set in args.ks_sets:
                    ks = KS_SETS[ks_set]
                    k = search_k(labels, ks)
                    # Methods alternate within each repeat and the fastest run counts, so
                    # load from other processes on the machine hits all of them alike.
                    runs: dict[str, list[dict]] = {m: [] for m in args.methods}
                    for _ in range(args.repeats):
                        for method in args.methods:
                            runs[method].append(run_case(method, Path(tmp), ks, k, args.timeout))
                    for method, results in runs.items():
                        timed = [r for r in results if r.get("time_s") is not None]
                        best = min(timed, key=lambda r: r["time_s"]) if timed else results[0]
                        row = {"n": n, "d": d, "ks_set": ks_set, "ks": list(ks), "k": k,
                               "method": method, **best,
                               "all_times_s": [r.get("time_s") for r in results],
                               "loadavg_1min": os.getloadavg()[0]}
                        print(json.dumps(row), flush=True)
                        key = (n, d, ks_set, method)
                        store["results"] = [
                            r for r in store["results"]
                            if (r["n"], r["d"], r["ks_set"], r["method"]) != key
                        ] + [row]
                    args.out.parent.mkdir(parents=True, exist_ok=True)
                    args.out.write_text(json.dumps(store, indent=1))
    print(markdown_table(store["results"]))


if __name__ == "__main__":
    main()

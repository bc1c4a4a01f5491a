"""Evaluation memory at a large class size: see-dml's streamed metrics vs PML's
``AccuracyCalculator`` vs a plain faiss search holding its whole result.

The case is that of OML #562 (a 450,000-image set in 172 classes crashed its metrics)
scaled to this machine: N = 200,000 random 64-d embeddings in 100 classes, all-vs-all, so
every query has R ~ 2,000 relevant items and R-Precision / MAP@R need a search about
2,000 wide. The whole ``(Q, k)`` result is then 200,000 x 2,000 x 12 bytes = 4.8 GB
(similarities and indices), before any metric.

Each method runs in its own subprocess under an address-space limit
(``resource.setrlimit(RLIMIT_AS)``, ``--limit-gb``, default 8), so a method that needs more
stops with a ``MemoryError`` instead of taking the machine down; the parent polls the
child's resident-set high-water mark (``VmHWM``) every half second, so where a method
stopped is recorded even when it is killed. The methods run one after another, or side by
side with ``--parallel`` (they then share the cores: compare memory, not time).

- ``ours``: ``see_dml.metrics.retrieval_metrics(x, labels, ks)`` (streamed over query
  chunks; every metric).
- ``pml``: ``AccuracyCalculator(include=(precision_at_1, r_precision,
  mean_average_precision_at_r), k="max_bin_count")`` (no Recall@K: it does less).
- ``bare``: ``faiss.IndexFlatIP`` add, then one ``search`` of every query for ``k + 1``
  (k = ours' search width), holding the result: no metric at all.

``base_rss_mib`` is the worker's resident set after its imports and the embeddings are
loaded; ``peak_above_base_mib`` is the high-water mark above it: the evaluation's own
memory, "above the embeddings themselves". Results go to
``benchmarks/results/eval_memory.json`` (one entry per ``n, d, classes``); the Markdown
table is printed.

Usage::

    python benchmarks/bench_eval_memory.py                     # 200k x 64, 100 classes
    python benchmarks/bench_eval_memory.py --n 20000 --methods ours bare   # a quick look
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

RESULTS = Path(__file__).parent / "results" / "eval_memory.json"
METHODS = ("ours", "pml", "bare")
KS = (1, 10, 100, 1000)


def _status_mib(field: str, pid: int | str = "self") -> float | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return None


def make_data(n: int, d: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, d) random float32 embeddings (unit rows) and (n,) labels in ``classes`` classes."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, rng.integers(0, classes, n)


def search_width(labels: np.ndarray, ks: tuple[int, ...]) -> int:
    """The k that ``retrieval_metrics`` searches in all-vs-all mode."""
    return min(max(max(ks), int(np.bincount(labels).max()) - 1), len(labels) - 1)


def worker(method: str, data_dir: Path, limit_gb: float) -> dict:
    """One method in this fresh process, under the address-space limit."""
    x = np.load(data_dir / "x.npy")
    labels = np.load(data_dir / "labels.npy")
    k = search_width(labels, KS)
    if method == "bare":
        import faiss
    else:
        import torch
        from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

        from see_dml.metrics import retrieval_metrics
    limit = int(limit_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    base = _status_mib("VmRSS") or 0.0
    vsz = _status_mib("VmSize") or 0.0
    Path("/proc/self/clear_refs").write_text("5")  # the high-water mark from here on
    print(json.dumps({"base_rss_mib": base, "base_vsz_mib": vsz}), flush=True)
    start = time.perf_counter()
    metrics: dict = {}
    if method == "ours":
        metrics = retrieval_metrics(x, labels, ks=KS)
    elif method == "pml":
        calc = AccuracyCalculator(
            include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
            k="max_bin_count", device=torch.device("cpu"))
        metrics = calc.get_accuracy(x, labels)
    elif method == "bare":
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x)
        sims, idx = index.search(x, k + 1)
        metrics = {"result_mib": (sims.nbytes + idx.nbytes) / 2**20}
    else:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    elapsed = time.perf_counter() - start
    peak = _status_mib("VmHWM") or 0.0
    return {"status": "ok", "time_s": elapsed, "base_rss_mib": base, "base_vsz_mib": vsz,
            "peak_above_base_mib": peak - base, "k": k,
            "metrics": {key: float(v) for key, v in metrics.items()}}


def start_case(method: str, data_dir: Path, limit_gb: float) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cmd = [sys.executable, __file__, "--worker", method, "--data", str(data_dir),
           "--limit-gb", str(limit_gb)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)


def watch(procs: dict[str, subprocess.Popen], timeout: float) -> dict[str, dict]:
    """Poll the running workers' high-water marks until each ends (or ``timeout``)."""
    started = time.perf_counter()
    peaks = {m: 0.0 for m in procs}
    out: dict[str, dict] = {}
    while len(out) < len(procs):
        for method, proc in procs.items():
            if method in out:
                continue
            hwm = _status_mib("VmHWM", proc.pid)
            if hwm is not None:
                peaks[method] = max(peaks[method], hwm)
            if proc.poll() is None and time.perf_counter() - started > timeout:
                proc.kill()
            if proc.poll() is not None:
                stdout, stderr = proc.communicate()
                lines = [json.loads(x) for x in stdout.splitlines() if x.startswith("{")]
                base = lines[0] if lines else {}
                if proc.returncode == 0 and len(lines) > 1:
                    out[method] = lines[-1]
                else:
                    err = [x for x in stderr.strip().splitlines() if x.strip()]
                    out[method] = {
                        "status": ("killed after timeout" if proc.returncode < 0 else
                                   (err[-1][:300] if err else f"exit {proc.returncode}")),
                        "time_s": None, **base,
                        "peak_above_base_mib": peaks[method] - base.get("base_rss_mib", 0.0),
                        "wall_until_stop_s": time.perf_counter() - started}
        time.sleep(0.5)
    return out


def markdown_table(run: dict) -> str:
    lines = ["| method | status | time (s) | peak RSS above embeddings (MiB) | "
             "R@1 | MAP@R |", "|---|---|---|---|---|---|"]
    for method, r in run["methods"].items():
        m = r.get("metrics", {})
        map_r = m.get("map@r", m.get("mean_average_precision_at_r"))
        r1 = m.get("recall@1", m.get("precision_at_1"))
        lines.append(
            f"| {method} | {r['status']} | "
            + ("—" if r.get("time_s") is None else f"{r['time_s']:.0f}")
            + f" | {r['peak_above_base_mib']:.0f} | "
            + ("—" if r1 is None else f"{r1:.4f}") + " | "
            + ("—" if map_r is None else f"{map_r:.6f}") + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--limit-gb", type=float, default=8.0)
    parser.add_argument("--timeout", type=float, default=1500.0)
    parser.add_argument("--parallel", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        try:
            print(json.dumps(worker(args.worker, args.data, args.limit_gb)), flush=True)
        except MemoryError as err:
            print(f"MemoryError: {err or 'out of address space'}", file=sys.stderr)
            sys.exit(3)
        return

    with tempfile.TemporaryDirectory() as tmp:
        x, labels = make_data(args.n, args.d, args.classes)
        np.save(Path(tmp) / "x.npy", x)
        np.save(Path(tmp) / "labels.npy", labels)
        methods: dict[str, dict] = {}
        if args.parallel:
            methods = watch({m: start_case(m, Path(tmp), args.limit_gb) for m in args.methods},
                            args.timeout)
        else:
            for m in args.methods:
                methods |= watch({m: start_case(m, Path(tmp), args.limit_gb)}, args.timeout)
                print(m, json.dumps(methods[m])[:400], flush=True)
    run = {"n": args.n, "d": args.d, "classes": args.classes, "ks": list(KS),
           "embeddings_mib": x.nbytes / 2**20, "max_r": int(np.bincount(labels).max()) - 1,
           "limit_gb": args.limit_gb, "parallel": args.parallel,
           "omp_threads": os.environ.get("OMP_NUM_THREADS", "1"),
           "machine": f"{platform.node()} ({os.cpu_count()} CPUs)",
           "load_before": Path("/proc/loadavg").read_text().split()[:3],
           "methods": {m: methods[m] for m in args.methods}}
    # one entry per case (n, d, classes): a rerun replaces the methods it ran, and keeps the
    # others' (each with its own load_before and run time)
    runs = json.loads(args.out.read_text())["runs"] if args.out.exists() else []
    case = (args.n, args.d, args.classes)
    for r in runs:
        if (r["n"], r["d"], r["classes"]) == case:
            run["methods"] = {**{m: {**v, "load_before": v.get("load_before", r["load_before"])}
                                 for m, v in r["methods"].items()},
                              **{m: {**v, "load_before": run["load_before"]}
                                 for m, v in run["methods"].items()}}
    runs = [r for r in runs if (r["n"], r["d"], r["classes"]) != case]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"runs": [*runs, run]}, indent=2) + "\n")
    print(markdown_table(run))


if __name__ == "__main__":
    main()

"""Saved-index cost at SOP's test size: exact ``IndexFlatIP`` vs approximate ``IndexHNSWFlat``.

What ``python -m see_dml.index build index.kind=flat|hnsw`` builds, on synthetic data: 60,502
unit float32 vectors of d = 512 (SOP's test split, a 512-d head), made by
``bench_eval.make_data`` (random class centres with SOP-like class sizes plus Gaussian noise,
normalised: random unit vectors with class structure, not real embeddings). For each index:

- ``build_s``: ``index.add`` of all rows (HNSW: graph construction);
- ``bytes``: the serialised index (what ``index.path`` holds), ``rss_mib``: resident memory
  gained by building it;
- ``batch_ms_per_query``: one search of 1,000 queries (k = 10), per query;
  ``single_ms``: median of 200 searches of one query each (a service answering one image);
- HNSW only: ``see_dml.index.approximate_recall`` on 1,000 gallery rows as queries, each
  without itself: ``recall@1`` (its top-1 is the exact top-1), ``recall@10``, and the class
  recall@1 of both indices.

Usage::

    python benchmarks/bench_index.py                       # 60502 x 512, m=32, efC=200, ef=128
    python benchmarks/bench_index.py --n 10000 --ef-search 64

Results go to ``benchmarks/results/index.json`` and are printed as Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import faiss
import numpy as np
from bench_eval import make_data

from see_dml.serving.gallery_index import approximate_recall, make_index

RESULTS = Path(__file__).parent / "results" / "index.json"


def _rss_mib() -> float:
    """Current resident memory (not the peak: the second index must not inherit the first's)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure(kind: str, x: np.ndarray, labels: np.ndarray, args: argparse.Namespace) -> dict:
    rng = np.random.default_rng(1)
    queries = x[rng.choice(len(x), size=1000, replace=False)]
    base = _rss_mib()
    index = make_index(kind, x.shape[1], args.m, args.ef_construction)
    start = time.perf_counter()
    index.add(x)
    build = time.perf_counter() - start
    out = {"kind": kind, "build_s": build, "rss_mib": _rss_mib() - base,
           "bytes": int(faiss.serialize_index(index).size)}
    if kind == "hnsw":
        index.hnsw.efSearch = args.ef_search
        out.update(m=args.m, ef_construction=args.ef_construction, ef_search=args.ef_search)
    start = time.perf_counter()
    index.search(queries, args.k)
    out["batch_ms_per_query"] = (time.perf_counter() - start) / len(queries) * 1e3
    singles = []
    for q in queries[:200]:
        start = time.perf_counter()
        index.search(q[None], args.k)
        singles.append(time.perf_counter() - start)
    out["single_ms"] = statistics.median(singles) * 1e3
    if kind == "hnsw":
        out["recall"] = approximate_recall(x, index, k=args.k, n_queries=1000,
                                           labels=[str(v) for v in labels])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=60502)
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=200)
    parser.add_argument("--ef-search", type=int, default=128)
    args = parser.parse_args()
    x, labels = make_data(args.n, args.d)
    rows = [measure(kind, x, labels, args) for kind in ("flat", "hnsw")]
    report = {"n": args.n, "d": args.d, "k": args.k, "faiss": faiss.__version__,
              "threads": faiss.omp_get_max_threads(), "cpu": platform.processor() or
              platform.machine(), "load_avg": os.getloadavg(), "results": rows}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    print(f"{args.n} x {args.d}, k = {args.k}, {report['threads']} faiss threads, load "
          f"{report['load_avg'][0]:.1f}\n")
    print("| index | build s | MiB on disk | ΔRSS MiB | ms/query (batch 1000) | ms (1 query) "
          "| recall@1 vs exact | recall@10 vs exact |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        rec = r.get("recall", {})
        name = (f"HNSW (M={r['m']}, efC={r['ef_construction']}, ef={r['ef_search']})"
                if r["kind"] == "hnsw" else "exact IndexFlatIP")
        print(f"| {name} | {r['build_s']:.2f} | {r['bytes'] / 2**20:.0f} | {r['rss_mib']:.0f} "
              f"| {r['batch_ms_per_query']:.3f} | {r['single_ms']:.3f} "
              f"| {rec.get('recall@1', 1.0):.4f} | {rec.get(f'recall@{args.k}', 1.0):.4f} |")
    if "recall" in rows[1]:
        rec = rows[1]["recall"]
        print(f"\nclass recall@1: exact {rec['exact/label_recall@1']:.4f}, "
              f"HNSW {rec['approx/label_recall@1']:.4f}")


if __name__ == "__main__":
    main()

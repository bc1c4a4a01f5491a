"""SOP's test evaluation against a bare faiss search of it, interleaved.

    python benchmarks/bench_eval_sop.py [--dims 128 512] [--repeats 5] [--threads 1]

At the shape of Stanford Online Products' test split (60,502 embeddings in 11,316 classes
of 2-12 images, 5.35 on average; all-vs-all; Recall@1/10/100/1000), two arms alternate,
each repeat in the other order, in one process:

- ``bare``: ``faiss.IndexFlatIP`` add + one ``search`` of every embedding, ``k = 1001``
  (the 1,000 neighbours Recall@1000 needs, plus the query itself), on the unit-normalised
  float32 array. Nothing else: no metric, no label.
- ``ours``: what the test stage of ``see_dml.train`` / ``see_dml.evaluate`` runs on the
  collected embeddings (``DMLModule._evaluate`` -> ``evaluate_embeddings``): the embeddings
  as the torch CPU tensor the module collects, made numpy float32, checked for NaN / zero
  rows (the divergence guard), then ``see_dml.metrics.evaluate_retrieval(..., ks,
  keep=KEPT_QUERIES, backend="auto")``: normalise, search, every metric (Recall@K,
  Precision@1, R-Precision, MAP@R), the kept rows' neighbours. NMI is off, as by default.
  The wrapper's few lines are restated here (:func:`test_stage`) because the module that
  holds them is being moved; the metric call is the package's own.

Both arms run with the same number of faiss (OpenMP) and torch threads, ``--threads``.
Reported per arm: wall and CPU seconds of every repeat; per repeat the ratio ours / bare
(wall and CPU), and its median and range. With one thread, CPU time is what a core of its
own would take and hardly moves with the machine's load; wall time does.

The embeddings are synthetic with a class signal like a trained model's (random class
centres plus noise, unit-normalised; ``--noise``, default per d chosen for Recall@1 near
0.75; ``--noise 1000`` is no signal at all, the worst case for ours, see the README). Before
the clock, the metrics of ``ours`` are checked against ``metrics_from_neighbours`` of the
bare search's own result (they must be equal to the last bit).
Results: ``results/eval_sop.json`` (merged by d and noise).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from see_dml.metrics import (
    KEPT_QUERIES,
    MetricSet,
    evaluate_retrieval,
    metrics_from_neighbours,
    relevant_counts,
    search_width,
)

SOP_TEST_IMAGES, SOP_TEST_CLASSES = 60_502, 11_316
SOP_KS = (1, 10, 100, 1000)
#: noise per coordinate (class centres are standard normal) for Recall@1 near 0.75
DEFAULT_NOISE = {128: 1.4, 512: 2.2}
RESULTS = Path(__file__).parent / "results" / "eval_sop.json"


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def sop_class_sizes(rng: np.random.Generator, images: int = SOP_TEST_IMAGES,
                    classes: int = SOP_TEST_CLASSES) -> np.ndarray:
    """``classes`` sizes of 2-12 summing to ``images`` (SOP: every product has 2-12
    photos): 2 + Poisson(3.35), clipped, then nudged one image at a time to the total."""
    sizes = np.clip(2 + rng.poisson(3.35, size=classes), 2, 12)
    while (gap := int(sizes.sum()) - images) != 0:
        i = rng.integers(classes)
        if gap < 0 and sizes[i] < 12:
            sizes[i] += 1
        elif gap > 0 and sizes[i] > 2:
            sizes[i] -= 1
    return sizes


def make_data(d: int, noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(60502, d) unit float32 embeddings around per-class centres, and their labels."""
    rng = np.random.default_rng(seed)
    sizes = sop_class_sizes(rng)
    labels = rng.permutation(np.repeat(np.arange(len(sizes)), sizes)).astype(np.int64)
    centres = rng.standard_normal((len(sizes), d), dtype=np.float32)
    x = centres[labels] + np.float32(noise) * rng.standard_normal((len(labels), d),
                                                                  dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, labels


def test_stage(emb: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...]
               ) -> dict[str, float]:
    """The test stage's evaluation of one all-vs-all split, as
    ``see_dml.evaluation.report.evaluate_embeddings`` runs it (NMI off, nothing skipped)."""
    x = np.asarray(emb.detach().cpu().numpy(), dtype=np.float32)
    lab = np.asarray(labels.detach().cpu().numpy(), dtype=np.int64)
    norms = np.linalg.norm(np.nan_to_num(x), axis=1)
    bad = ~np.isfinite(x).all(axis=1) | (norms < 0.5)
    if bad.any():
        raise RuntimeError("diverged embeddings")
    metrics, _ = evaluate_retrieval(emb, lab, None, None, ks, keep=KEPT_QUERIES,
                                    backend="auto")
    return metrics


def bare_search(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    return index.search(x, k + 1)


def check_identical(x: np.ndarray, labels: np.ndarray, ks: tuple[int, ...], k: int
                    ) -> dict[str, Any]:
    """Our metrics against the metrics of the bare search's own neighbours."""
    ours = test_stage(torch.from_numpy(x), torch.from_numpy(labels), ks)
    _, idx = bare_search(x, k)
    own = idx == np.arange(len(x))[:, None]
    assert own[:, 0].all(), "the bench's data has no exact duplicates"
    neighbours = labels[idx[:, 1:]]
    reference = metrics_from_neighbours(neighbours, labels,
                                        relevant_counts(labels, labels, exclude_self=True), ks)
    return {"identical": ours == reference, "ours": ours, "from_bare_search": reference}


def run(d: int, noise: float, repeats: int, threads: int) -> dict[str, Any]:
    x, labels = make_data(d, noise)
    ks = SOP_KS
    k = search_width(relevant_counts(labels, labels, exclude_self=True),
                     MetricSet().resolved(ks), len(x) - 1)
    emb, lab = torch.from_numpy(x.copy()), torch.from_numpy(labels)
    load_start = loadavg()
    check = check_identical(x, labels, ks, k)
    print(f"d={d} noise={noise}: metrics identical to the bare search's: {check['identical']}"
          f" ({ {m: round(v, 4) for m, v in check['ours'].items()} })", flush=True)
    arms = {"bare": lambda: bare_search(x, k), "ours": lambda: test_stage(emb, lab, ks)}
    times: dict[str, dict[str, list[float]]] = {a: {"wall": [], "cpu": []} for a in arms}
    for r in range(repeats):
        order = list(arms) if r % 2 == 0 else list(arms)[::-1]
        for arm in order:
            wall, cpu = time.perf_counter(), time.process_time()
            arms[arm]()
            times[arm]["wall"].append(time.perf_counter() - wall)
            times[arm]["cpu"].append(time.process_time() - cpu)
        print(f"  repeat {r}: bare {times['bare']['wall'][-1]:.1f} s "
              f"({times['bare']['cpu'][-1]:.1f} CPU), ours {times['ours']['wall'][-1]:.1f} s "
              f"({times['ours']['cpu'][-1]:.1f} CPU), load {loadavg()}", flush=True)
    ratios = {clock: [o / b for o, b in zip(times["ours"][clock], times["bare"][clock],
                                            strict=True)] for clock in ("wall", "cpu")}
    return {
        "n": len(x), "classes": int(labels.max() + 1), "d": d, "noise": noise, "ks": list(ks),
        "search_k": k, "threads": threads, "repeats": repeats,
        "ratio_cpu_median": statistics.median(ratios["cpu"]),
        "ratio_cpu_range": [min(ratios["cpu"]), max(ratios["cpu"])],
        "ratio_wall_median": statistics.median(ratios["wall"]),
        "ratio_wall_range": [min(ratios["wall"]), max(ratios["wall"])],
        "ratios_cpu": ratios["cpu"], "ratios_wall": ratios["wall"],
        "seconds": times,
        "metrics_identical_to_bare_search": check["identical"],
        "metrics": check["ours"],
        "loadavg_start": load_start, "loadavg_end": loadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--noise", type=float, default=None,
                        help="noise per coordinate (default: per d, Recall@1 ~0.75)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="faiss and torch threads")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    faiss.omp_set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    store = json.loads(args.out.read_text()) if args.out.exists() else {"results": []}
    store["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "faiss": faiss.__version__, "numpy": np.__version__,
                        "torch": torch.__version__}
    for d in args.dims:
        noise = args.noise if args.noise is not None else DEFAULT_NOISE.get(d, 1.4)
        row = run(d, noise, args.repeats, args.threads)
        print(json.dumps({k: v for k, v in row.items() if k not in ("seconds", "metrics")}),
              flush=True)
        store["results"] = [r for r in store["results"]
                            if (r["d"], r["noise"], r["threads"]) != (d, noise, args.threads)]
        store["results"].append(row)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(store, indent=1) + "\n")


if __name__ == "__main__":
    main()

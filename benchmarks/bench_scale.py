"""The rehearsal at real size: every tool, end to end, on CUB, Cars, SOP and In-Shop at
their official size, with the peak RSS and wall time of each stage.

For each dataset (written by ``scale_datasets.py``: official layout and counts, small
synthetic images carrying a class signal), one subprocess per stage, each as a user types
it:

1. ``generate``: ``scale_datasets.py`` writes the dataset;
2. ``check``: ``python -m see_dml.data.check`` (builds the splits, decodes every image);
3. ``train``: ``python -m see_dml.train`` for one epoch of the real DataModule and
   class-balanced sampler over every training class, ``model=small_cnn`` at a small image
   size, SEE on, ``protocol=authors`` (every training class trains, the test split is
   scored every epoch: ``test_every_epoch``), the geometry monitor (which then embeds every
   training class), and the end of training: the full test evaluation of the selected and
   the last weights (SOP all-vs-all over 60,502; In-Shop 14,218 queries vs 12,612), the
   embedding export and the plots (projection, Recall@K curve, retrieval grid);
4. ``index``: ``python -m see_dml.index build`` of the test split (In-Shop: the gallery);
5. ``retrieve``: ``python -m see_dml.retrieve`` of the test queries against that index,
   ``k=100``;
6. ``export``: ``python -m see_dml.export`` (ONNX, checked against PyTorch).

The peak RSS of a stage is its process's own (``os.wait4``'s ``ru_maxrss``, children
included). Results are merged into ``benchmarks/results/scale.json`` (keyed by dataset) and
printed as the Markdown table of ``benchmarks/README.md``.

Usage::

    python benchmarks/bench_scale.py --data-dir /tmp/scale [--datasets cub cars inshop sop]
        [--size 32] [--fraction 1.0] [--keep]

The train stage's model and trainer can be changed for the GPU row (issue 30: SOP's stage
at 224 px with ResNet-50 bf16, run by ``gpu_checks.sh``), e.g.::

    python benchmarks/bench_scale.py --data-dir /tmp/scale --datasets sop --fraction 0.1 \
        --size 224 --model resnet50 --precision bf16-mixed --accelerator gpu --batch 180 \
        --workers 16 --stages generate train --out benchmarks/results/gpu/scale_sop_CARD.json

``--model resnet50`` trains ``model=resnet50 model.backbone.pretrained=false
model.warmup_epochs=0`` (no weights to download; the backbone trains in the one epoch);
``--precision``, ``--accelerator``, ``--batch`` and ``--workers`` become
``trainer.precision``, ``trainer.accelerator``, ``data.batch_size`` and ``data.num_workers``;
``--override`` adds any other override to the train stage. ``--stages`` runs only those
stages (``generate`` writes what the others read). A row whose train stage differs from the
default is kept under its own key (model, precision, size).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from scale_datasets import DATASETS, OFFICIAL  # noqa: E402

RESULTS = HERE / "results" / "scale.json"
STAGES = ("generate", "check", "train", "index", "retrieve", "export")


def run_stage(cmd: list[str], log: Path, timeout: float) -> dict:
    """Run ``cmd``; its wall time, own peak RSS, exit status and last error lines."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "HYDRA_FULL_ERROR": "1"}
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = start + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
            time.sleep(0.2)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    res = {"wall_s": round(wall, 1), "peak_rss_mib": round(usage.ru_maxrss / 1024),
           "returncode": code}
    if code != 0:
        lines = [x for x in log.read_text(errors="replace").splitlines() if x.strip()]
        res["error"] = lines[-3:]
    return res


#: the train stage's model overrides per ``--model``: no pretrained weights (none to fetch)
#: and no warm-up epoch (the recipe's first epoch trains the head alone; the stage has one)
MODELS = {"small_cnn": ["model=small_cnn"],
          "resnet50": ["model=resnet50", "model.backbone.pretrained=false",
                       "model.warmup_epochs=0"]}


def train_overrides(args: argparse.Namespace | None) -> list[str]:
    """The train stage's overrides from ``--model`` and the trainer / data options."""
    if args is None:
        return list(MODELS["small_cnn"])
    out = list(MODELS[args.model])
    for key, value in (("trainer.precision", args.precision),
                       ("trainer.accelerator", args.accelerator),
                       ("data.batch_size", args.batch), ("data.num_workers", args.workers)):
        if value is not None:
            out.append(f"{key}={value}")
    return out + list(args.override)


def stages(name: str, data_dir: Path, work: Path, size: int, fraction: float,
           image_size: int | None = None, train_extra: list[str] | None = None
           ) -> dict[str, list[str]]:
    py = sys.executable
    run_dir = work / "run"
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    index = work / "test.faiss"
    eval_split, query = ("gallery", "query") if name == "inshop" else ("test", "test")
    strict = f"dataset.strict_counts={'true' if fraction == 1.0 else 'false'}"
    common = [f"paths.data_dir={data_dir}", f"paths.output_dir={work / 'outputs'}"]
    crop = image_size or size
    model = train_extra if train_extra is not None else MODELS["small_cnn"]
    return {
        "generate": [py, str(HERE / "scale_datasets.py"), str(data_dir), "--datasets", name,
                     "--size", str(size), "--fraction", str(fraction)],
        "check": [py, "-m", "see_dml.data.check", f"dataset={name}", strict, *common[:1]],
        "train": [py, "-m", "see_dml.train", f"dataset={name}", strict, *common,
                  f"paths.run_dir={run_dir}", "protocol=authors", *model,
                  f"data.transforms.image_size={crop}",
                  f"data.transforms.resize={crop + crop // 8}", "trainer.max_epochs=1",
                  "see.enabled=true", "trainer.enable_progress_bar=false",
                  "+callbacks.geometry._target_=see_dml.callbacks.geometry_monitor.GeometryMonitor",
                  "+callbacks.geometry.dirpath=${paths.run_dir}"],
        "index": [py, "-m", "see_dml.index", "build", f"ckpt_path={ckpt}", *common,
                  f"gallery={eval_split}", f"index.path={index}", "progress=false"],
        "retrieve": [py, "-m", "see_dml.retrieve", f"ckpt_path={ckpt}", *common,
                     f"paths.run_dir={work / 'retrieve'}", f"index.path={index}",
                     f"query={query}", "k=100", "progress=false"],
        "export": [py, "-m", "see_dml.export", f"ckpt_path={ckpt}", *common,
                   f"output={work / 'model.onnx'}"],
    }


def rehearse(name: str, data_dir: Path, work: Path, size: int, fraction: float,
             timeout: float, args: argparse.Namespace | None = None) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    extra = train_overrides(args)
    image_size = args.image_size if args is not None else None
    out: dict = {"images": {s: n for s, (n, _) in OFFICIAL[name].items()}
                 if fraction == 1.0 else None, "size": size, "fraction": fraction,
                 "image_size": image_size or size, "train_overrides": extra, "stages": {}}
    chosen = args.stages if args is not None else STAGES
    for stage, cmd in stages(name, data_dir, work, size, fraction, image_size,
                             extra).items():
        if stage not in chosen:
            continue
        res = run_stage(cmd, work / f"{stage}.log", timeout)
        out["stages"][stage] = res
        print(f"{name} {stage}: {res}", flush=True)
        if res["returncode"] != 0:
            break
    return out


def markdown_table(results: dict) -> str:
    head = "| dataset | images | " + " | ".join(STAGES) + " |"
    lines = [head, "|" + "---|" * (len(STAGES) + 2),]
    for name, r in results.items():
        imgs = sum(r["images"].values()) if r.get("images") else "—"
        cells = []
        for stage in STAGES:
            s = r["stages"].get(stage)
            if s is None:
                cells.append("—")
            elif s["returncode"] != 0:
                cells.append(f"failed (exit {s['returncode']})")
            else:
                cells.append(f"{s['wall_s']:.0f} s, {s['peak_rss_mib'] / 1024:.2f} GiB")
        lines.append(f"| {name} | {imgs:,} | " + " | ".join(cells) + " |"
                     if isinstance(imgs, int) else f"| {name} | {imgs} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--fraction", type=float, default=1.0)
    parser.add_argument("--timeout", type=float, default=3600.0, help="per stage, seconds")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--keep", action="store_true", help="keep the data and the runs")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES,
                        help="run only these (generate writes what the others read)")
    parser.add_argument("--model", default="small_cnn", choices=sorted(MODELS),
                        help="the train stage's model")
    parser.add_argument("--image-size", type=int, default=None,
                        help="the train stage's crop side (default: --size)")
    parser.add_argument("--precision", default=None, help="trainer.precision, e.g. bf16-mixed")
    parser.add_argument("--accelerator", default=None, help="trainer.accelerator: cpu, gpu")
    parser.add_argument("--batch", type=int, default=None, help="data.batch_size")
    parser.add_argument("--workers", type=int, default=None, help="data.num_workers")
    parser.add_argument("--override", nargs="*", default=[],
                        help="more overrides of the train stage")
    args = parser.parse_args()
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    for name in args.datasets:
        load = Path("/proc/loadavg").read_text().split()[:3]
        res = rehearse(name, args.data_dir, args.data_dir / f"work_{name}", args.size,
                       args.fraction, args.timeout, args)
        res |= {"load_before": load, "machine": f"{platform.node()} ({os.cpu_count()} CPUs)",
                "omp_threads": os.environ.get("OMP_NUM_THREADS", "1")}
        # a reduced copy is kept apart from the full-size row of the same dataset
        key = name if args.fraction == 1.0 else f"{name} ({args.fraction:g} of classes)"
        if train_overrides(args) != MODELS["small_cnn"] or args.image_size:
            # another train stage (the GPU row): kept apart from the default one
            key += (f" [{args.model}, {args.precision or 'default precision'}, "
                    f"{args.image_size or args.size} px]")
        results[key] = res
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        if not args.keep:
            shutil.rmtree(args.data_dir / f"work_{name}", ignore_errors=True)
            for folder in args.data_dir.iterdir():
                if folder.is_dir() and not folder.name.startswith("work_"):
                    shutil.rmtree(folder, ignore_errors=True)
    print(markdown_table(results))


if __name__ == "__main__":
    main()

"""Images per second of the training image pipeline alone, per worker core.

    python benchmarks/bench_data_pipeline.py [--size 500x375] [--batches 6] [--repeats 5]

The pipeline is the one ``python -m see_dml.train dataset=cub`` builds: the CUB-200-2011
loader (``see_dml.data.cub.CUB200``) over a folder in the official on-disk format
(``images.txt``, ``image_class_labels.txt``, ``images/<class>/<name>.jpg``), the
class-balanced batch sampler and the natural-image train transforms (JPEG decode, RGB,
``RandomResizedCrop(224, bicubic)``, flip, ``ToTensor``, ``Normalize``), served by the
datamodule's own train ``DataLoader`` with ``num_workers=0``: one process, one torch thread,
so images/s is what one worker core delivers (also reported per CPU second of the process,
which leaves out the time it waited for a core on a shared machine). The JPEGs are written
once in a temporary folder at the datasets' typical size (CUB and SOP photos are mostly
about 500 x 375, quality 90), photo-like (smooth colour fields plus grain, not flat noise,
so they compress and decode like photos).

Each repeat times ``--batches`` batches of the full pipeline and then, under the same load,
as many images stage by stage in CPU time (decode, then each train transform), which says
where the time goes. Results: ``results/data_pipeline.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from PIL import Image


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages (the machine is shared)."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def photo_like(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Smooth colour fields (bilinear upsampling of a coarse grid) plus mild grain."""
    coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR),
                       dtype=np.int16)
    grain = rng.normal(0, 12, size=(height, width, 3))
    return Image.fromarray(np.clip(field + grain, 0, 255).astype(np.uint8))


def write_cub(root: Path, classes: int, per_class: int, width: int, height: int) -> Path:
    """A CUB_200_2011 folder: training classes ``1..classes``, one test class (101)."""
    rng = np.random.default_rng(0)
    cub = root / "CUB_200_2011"
    images, labels = [], []
    for class_id in [*range(1, classes + 1), 101]:
        folder = f"{class_id:03d}.Class_{class_id}"
        (cub / "images" / folder).mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            rel = f"{folder}/Class_{class_id}_{k:04d}.jpg"
            photo_like(rng, width, height).save(cub / "images" / rel, quality=90)
            images.append(rel)
            labels.append(class_id)
    (cub / "images.txt").write_text(
        "".join(f"{i} {p}\n" for i, p in enumerate(images, 1)))
    (cub / "image_class_labels.txt").write_text(
        "".join(f"{i} {c}\n" for i, c in enumerate(labels, 1)))
    return cub


def build(cub: Path, batch: int, m_per_class: int) -> Any:
    """The datamodule ``see_dml.train`` builds for ``dataset=cub`` (ImageNet statistics)."""
    from see_dml.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from see_dml.runtime.config import compose
    from see_dml.training.components import build_datamodule

    cfg = compose([
        "dataset=cub", f"dataset.root={cub}", "dataset.strict_counts=false",
        "dataset.val_fraction=0", f"data.batch_size={batch}",
        f"data.m_per_class={m_per_class}", "data.num_workers=0",
        "paths.run_dir=unused", "paths.output_dir=unused"])
    # the normalisation a ResNet's backbone would hand over
    return build_datamodule(cfg, SimpleNamespace(mean=IMAGENET_MEAN, std=IMAGENET_STD))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="500x375", help="JPEG width x height")
    parser.add_argument("--classes", type=int, default=30)
    parser.add_argument("--per-class", type=int, default=8)
    parser.add_argument("--batch", type=int, default=60)
    parser.add_argument("--m-per-class", type=int, default=2)
    parser.add_argument("--batches", type=int, default=4, help="batches per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--gpu-result", type=Path,
                        default=Path(__file__).parent / "results" / "gpu"
                        / "see_overhead_h200_resnet50_bf16.json",
                        help="a GPU step time to size the workers for (SEE-off ResNet-50)")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "results" / "data_pipeline.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    width, height = (int(v) for v in args.size.split("x"))
    load_start = loadavg()
    with tempfile.TemporaryDirectory() as tmp:
        cub = write_cub(Path(tmp), args.classes, args.per_class, width, height)
        sizes = [p.stat().st_size for p in (cub / "images").rglob("*.jpg")]
        dm = build(cub, args.batch, args.m_per_class)
        paths = [str(p) for p in dm.datasets["train"].split.items]
        loader = dm.train_dataloader()
        transform = dm.datasets["train"].transform
        stages = ["decode", *(type(tf).__name__ for tf in transform.transforms)]
        per_stage: dict[str, list[float]] = {name: [] for name in stages}
        full, full_cpu, decode = [], [], []
        it = iter(loader)
        next(it)  # warm-up: first batch (imports, caches)
        for r in range(args.repeats):
            start, cpu_start = time.perf_counter(), time.process_time()
            n = 0
            for _ in range(args.batches):
                try:
                    images, *_ = next(it)
                except StopIteration:
                    it = iter(loader)
                    images, *_ = next(it)
                n += len(images)
            full.append(n / (time.perf_counter() - start))
            full_cpu.append(n / (time.process_time() - cpu_start))
            # the same work stage by stage: decode, then each train transform in turn
            spent = dict.fromkeys(stages, 0.0)
            for k in range(n):
                t = time.process_time()
                with Image.open(paths[(r * n + k) % len(paths)]) as img:
                    x = img.convert("RGB")
                spent["decode"] += time.process_time() - t
                for name, tf in zip(stages[1:], transform.transforms):
                    t = time.process_time()
                    x = tf(x)
                    spent[name] += time.process_time() - t
            for name in stages:
                per_stage[name].append(spent[name] / n * 1e3)
            decode.append(n / spent["decode"])  # per CPU second
            print(f"repeat {r}: pipeline {full[-1]:.1f} img/s ({full_cpu[-1]:.1f} per CPU "
                  f"second), decode alone {decode[-1]:.1f} per CPU second, load {loadavg()}",
                  flush=True)
        shape = list(images.shape[1:])
    result: dict[str, Any] = {
        "jpeg_size": [width, height], "jpeg_kib_mean": statistics.mean(sizes) / 1024,
        "batch": args.batch, "output_shape": shape, "torch_threads": 1,
        "pipeline_img_per_s_median": statistics.median(full),
        "pipeline_img_per_s": full,
        # the same images over the CPU time the process got: what a core of its own delivers
        "pipeline_img_per_cpu_s_median": statistics.median(full_cpu),
        "pipeline_img_per_cpu_s": full_cpu,
        "decode_img_per_cpu_s_median": statistics.median(decode),
        "decode_img_per_cpu_s": decode,
        "cpu_ms_per_image_by_stage": {k: statistics.median(v) for k, v in per_stage.items()},
        "loadavg_start": load_start, "loadavg_end": loadavg(), "cpu_count": os.cpu_count(),
    }
    if args.gpu_result.exists():
        rows = json.loads(args.gpu_result.read_text())
        gpu = min(rows, key=lambda r: r["step_off_ms"])
        need = gpu["batch"] / (gpu["step_off_ms"] / 1e3)
        result["gpu_step"] = {"file": str(args.gpu_result.relative_to(Path(__file__).parent)),
                              "device": gpu["device"], "backbone": gpu["backbone"],
                              "precision": gpu["precision"], "batch": gpu["batch"],
                              "step_ms": gpu["step_off_ms"], "img_per_s_needed": need,
                              "cores_needed": need / result["pipeline_img_per_s_median"],
                              "cores_needed_cpu_time": need
                              / result["pipeline_img_per_cpu_s_median"]}
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, list)}, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

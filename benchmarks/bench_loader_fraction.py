"""The share of the GPU-only training rate that the real data loader reaches with the
machine's cores (goal: >= 95 %).

    python benchmarks/bench_loader_fraction.py --device cuda --precision bf16 --batch 180
    python benchmarks/bench_loader_fraction.py --device cpu --batch 16 --image-size 32 \
        --images 64 --steps 6 --warmup 2          # dry run

One folder of photo-like 500 x 375 JPEGs in CUB-200-2011's layout (``--classes`` x
``--per-class``, written once by ``bench_data_pipeline.write_cub``: smooth colour fields
plus grain, quality 90, so they decode like CUB / SOP photos). The module and the
datamodule are built as ``python -m see_dml.train dataset=cub model=resnet50`` builds them
(``compose`` of ``conf/train.yaml``, ``build_backbone``, ``build_datamodule``,
``DMLModule.from_config``; no pretrained weights, no warm-up epoch: the backbone trains in
every step, frozen BatchNorm as the recipe has it). The same Lightning ``trainer.fit``
(``--steps`` steps, the config's trainer at ``--precision``) is fed

* **loader**: the datamodule's own ``train_dataloader()`` (class-balanced batches of
  ``--batch``, the train transform: RandomResizedCrop to ``--image-size``, flip,
  ImageNet normalisation) with ``num_workers`` = ``--workers`` (default: the machine's
  cores) and pinned memory; its epoch is as long as the fit (``data.batches_per_epoch``), so
  the workers start once, inside the untimed warm-up;
* **resident**: the first batches of that loader, moved to the device once and served again
  and again (``DataLoader(batch_size=None)``): the GPU-only rate.

A fit is timed from the end of its ``--warmup``-th step to the end of its last (device
synchronised at both ends only), so worker start-up, cuDNN's and the allocator's first steps
are out. ``--rounds`` alternations (resident, loader, ...); the rates are the medians over
rounds. Reported: images/s of each, loader / resident, the worker count, and the loader's
own rate without training (the same loader iterated alone, for the diagnosis: below the
training rate, the decode is the limit). Results: ``results/loader_fraction.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from bench_data_pipeline import write_cub
from bench_framework_overhead import MODELS
from timing import loadavg, sync, write_json

from see_dml.runtime.config import compose


def fit_rate(cfg: Any, module: Any, loader: Any, steps: int, warmup: int, batch: int,
             device: torch.device) -> float:
    """Images/s of ``trainer.fit`` over ``loader``, steps ``warmup + 1 .. steps``."""
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import Callback

    marks: dict[str, float] = {}

    class Timer(Callback):
        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, b: Any,
                               batch_idx: int) -> None:
            if batch_idx in (warmup - 1, steps - 1):
                sync(device)
                marks["start" if batch_idx == warmup - 1 else "end"] = time.perf_counter()

    trainer = instantiate(cfg.trainer, callbacks=[Timer()], logger=False,
                          enable_checkpointing=False, enable_model_summary=False,
                          limit_val_batches=0, max_steps=steps, max_epochs=1)
    trainer.fit(module, train_dataloaders=loader)
    return (steps - warmup) * batch / (marks["end"] - marks["start"])


def loader_rate(loader: Any, steps: int, warmup: int) -> float:
    """Images/s of the loader alone (no training), after ``warmup`` batches."""
    n, start = 0, 0.0
    for i, (images, *_) in enumerate(loader):
        if i == warmup - 1:
            start = time.perf_counter()
        elif i >= warmup:
            n += len(images)
        if i == steps - 1:
            break
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda or cpu")
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--batch", type=int, default=180)
    parser.add_argument("--m-per-class", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=224, help="training crop side")
    parser.add_argument("--jpeg-size", default="500x375", help="JPEG width x height")
    parser.add_argument("--images", type=int, default=800, help="JPEGs written (about; >= batch)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="loader workers (default: the machine's cores)")
    parser.add_argument("--steps", type=int, default=50, help="steps per fit")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps per fit")
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the two fits")
    parser.add_argument("--resident-batches", type=int, default=8,
                        help="distinct batches kept on the device")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: all)")
    parser.add_argument("--override", nargs="*", default=[], help="more config overrides")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "results" / "loader_fraction.json")
    args = parser.parse_args()
    assert 0 < args.warmup < args.steps, "0 < --warmup < --steps"
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("WANDB_SILENT", "true")
    import lightning as L
    from hydra.utils import instantiate

    from see_dml.module import DMLModule, build_backbone
    from see_dml.training.components import build_datamodule

    device = torch.device(args.device)
    width, height = (int(v) for v in args.jpeg_size.split("x"))
    # CUB's training classes are 1..100 (write_cub writes training classes only)
    classes = min(100, max(args.batch // args.m_per_class, args.images // 10))
    per_class = max(args.images // classes, args.m_per_class)
    load_start = loadavg()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_cub(Path(tmp), classes, per_class, width, height)
        write_s = time.perf_counter() - t0
        print(f"{classes * per_class} JPEGs {width}x{height} written in {write_s:.0f} s",
              flush=True)
        cfg = compose([
            *MODELS["resnet50"], "dataset=cub", f"paths.data_dir={tmp}",
            f"paths.output_dir={tmp}/out", f"paths.run_dir={tmp}/run",
            "dataset.val_fraction=0", "dataset.strict_counts=false",
            f"data.batch_size={args.batch}", f"data.m_per_class={args.m_per_class}",
            f"data.num_workers={args.workers}", f"data.pin_memory={device.type == 'cuda'}",
            f"data.batches_per_epoch={args.steps}",
            f"data.transforms.image_size={args.image_size}",
            f"data.transforms.resize={args.image_size * 8 // 7}",
            f"trainer.accelerator={'gpu' if device.type == 'cuda' else 'cpu'}",
            f"trainer.precision={'bf16-mixed' if args.precision == 'bf16' else '32-true'}",
            "trainer.enable_progress_bar=false", *args.override])
        L.seed_everything(cfg.seed, verbose=False)
        if cfg.get("matmul_precision"):
            torch.set_float32_matmul_precision(cfg.matmul_precision)
        # as see_dml.train builds them
        source = instantiate(cfg.dataset)
        backbone = build_backbone(cfg, source.image_mode)
        dm = build_datamodule(cfg, backbone, source)
        module = DMLModule.from_config(cfg, dm.num_classes, backbone, source)
        batches = []
        for images, labels, *_ in dm.train_dataloader():
            batches.append((images.to(device), labels.to(device)))
            if len(batches) == args.resident_batches:
                break
        resident = torch.utils.data.DataLoader(
            [batches[i % len(batches)] for i in range(args.steps)], batch_size=None)
        alone = loader_rate(dm.train_dataloader(), args.steps, args.warmup)
        print(f"loader alone: {alone:.0f} img/s ({args.workers} workers)", flush=True)
        rates: dict[str, list[float]] = {"resident": [], "loader": []}
        for r in range(args.rounds):
            for arm in ("resident", "loader"):
                loader = resident if arm == "resident" else dm.train_dataloader()
                rates[arm].append(fit_rate(cfg, module, loader, args.steps, args.warmup,
                                           args.batch, device))
                print(f"round {r} {arm}: {rates[arm][-1]:.0f} img/s, load {loadavg()}",
                      flush=True)
    res, real = statistics.median(rates["resident"]), statistics.median(rates["loader"])
    name = (torch.cuda.get_device_name() if device.type == "cuda"
            else f"cpu ({os.cpu_count()} cores)")
    result = {
        "measure": "loader_fraction", "device": name, "cpu_count": os.cpu_count(),
        "num_workers": args.workers, "pin_memory": device.type == "cuda",
        "model": "resnet50 (timm resnet50.tv_in1k, random init, frozen BN)",
        "precision": args.precision, "batch": args.batch, "m_per_class": args.m_per_class,
        "image_size": args.image_size, "jpeg_size": [width, height],
        "jpegs": classes * per_class, "steps": args.steps, "warmup": args.warmup,
        "rounds": args.rounds, "resident_img_per_s": res, "loader_img_per_s": real,
        "fraction": real / res, "goal": 0.95, "loader_alone_img_per_s": alone,
        "rates": rates, "jpeg_write_s": write_s, "loadavg_start": load_start,
        "loadavg_end": loadavg(), "torch": torch.__version__,
        "command": " ".join(sys.argv),
    }
    print(f"| device | workers | GPU-only (img/s) | real loader (img/s) | fraction | "
          f"loader alone (img/s) |\n|---|---|---|---|---|---|\n| {name} | {args.workers} | "
          f"{res:.0f} | {real:.0f} | {real / res:.3f} | {alone:.0f} |")
    write_json(args.out, result)


if __name__ == "__main__":
    main()

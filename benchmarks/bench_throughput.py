"""Training throughput (images per second of one device) of each paper backbone, as trained.

    python benchmarks/bench_throughput.py --device cuda                 # the four, 128/512-d
    python benchmarks/bench_throughput.py --device cuda --dim 384       # the ViTs' 384-d rows
    python benchmarks/bench_throughput.py --backbones resnet50 --image-size 32 --batch 4 \
        --steps 2 --warmup 1                                            # CPU dry run

One setting per backbone family, on CUB (the dataset changes only the number of proxies):
``resnet50_512_cub``, ``deit_small_128_cub``, ``vit_small_dino_128_cub`` and
``vit_small_128_cub`` (``--dim 384``: the ViTs' ``*_384_cub``). Each is composed as
``python -m see_dml.train experiment=paper/<setting>`` composes it (and checked by
``validate_config``), with these overrides:

* ``model.backbone.pretrained=false`` (no download; the weights do not change the speed);
* ``trainer.devices=1``: one device, at the recipe's per-device batch (``data.batch_size``:
  120 for ResNet-50, 90 for the ViTs, whose recipe runs 2 GPUs under DDP: here DDP with one
  process, so the gradient all-reduce and the embeddings' all-gather of two GPUs are not in
  the number, and SEE sees the 90 embeddings of one GPU instead of the global 180);
* ``model.warmup_epochs=0``: the backbone trains in every step (the recipe freezes it for
  its first 1-5 epochs, a small part of training);
* ``see.p_min=see.p_max=0.4``: SEE at the recipe's top fraction (the fraction ramps from 0
  to 0.4 over training, so this is the costliest SEE step; 36 of 90 samples x 8 points);
* on a CPU, ``trainer.accelerator=cpu`` and the recipe's ``16-mixed`` becomes ``bf16-mixed``
  (Lightning has no fp16 autocast on a CPU), as ``bench_framework_overhead.py`` runs it.

The recipe's image size (``data.transforms.image_size``, 224) and precision
(``trainer.precision``: ``32-true`` for ResNet-50, TF32 matmuls through
``matmul_precision=high`` as ``train`` sets it; ``16-mixed`` for the ViTs) are kept unless
``--image-size`` / ``--batch`` / ``--precision`` say otherwise (a CPU dry run). A ViT at
another input size than its own gets its patch grid and position embeddings resized by
timm's ``set_input_size`` (dry runs only; recorded in the JSON).

The module is built by ``DMLModule.from_config`` and fitted by a ``lightning.Trainer``
instantiated from the composed ``trainer`` node with the config's callbacks (the SEE
callback, registered as the module's embedding hook, checkpoints, LR monitor, non-finite
guard) and CSV logger, as ``train`` builds them (validation off), over synthetic images
already on the device (data loading: ``bench_data_pipeline.py``). A step is the time from one
``on_train_batch_start`` to the next, the device synchronised at both: forward, Proxy-Anchor
+ SEE term, backward, gradient clipping where the recipe has it, optimiser step, logging and
callback hooks. The first ``--warmup`` steps are not timed. Each step gives batch / time
images per second; the median and 10th-90th percentiles are reported.

Output (``--out``, default ``results/throughput.json``)::

    {"device": "<name>", "rates": {"<timm name>": <median images/s>, ...}, "details": [...]}

``rates`` is what ``experiments/budget.py --rates-file`` reads (its keys are
``cfg.model.backbone.name``). A CPU's rates are not a GPU's: budget.py's GPU hours need the
rates of the GPU the runs will use.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, open_dict

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import deciles, interval, loadavg, print_table, sync, write_json  # noqa: E402

from see_dml.runtime.config import compose  # noqa: E402

#: backbone family -> (its timm name, setting at 128/512-d, setting at 384-d)
FAMILIES = {
    "resnet50": ("resnet50.tv_in1k", "resnet50_512_cub", "resnet50_512_cub"),
    "deit_small": ("deit_small_distilled_patch16_224", "deit_small_128_cub", "deit_small_384_cub"),
    "vit_small_dino": ("vit_small_patch16_224.dino", "vit_small_dino_128_cub",
                       "vit_small_dino_384_cub"),
    "vit_small": ("vit_small_patch16_224", "vit_small_128_cub", "vit_small_384_cub"),
}
#: the top of SEE's top-fraction ramp in the paper recipes (see.p_max)
SEE_FRACTION = 0.4


def setting_config(family: str, dim: int, device: torch.device, args: argparse.Namespace,
                   run_dir: Path) -> tuple[str, DictConfig]:
    """The setting of ``family`` at ``dim`` and its composed config (see the module doc)."""
    timm_name, low, high = FAMILIES[family]
    setting = high if dim == 384 else low
    overrides = [f"experiment=paper/{setting}", "model.backbone.pretrained=false",
                 "trainer.devices=1", "model.warmup_epochs=0",
                 f"see.p_min={SEE_FRACTION}", f"see.p_max={SEE_FRACTION}",
                 "trainer.enable_progress_bar=false", "logger=csv",
                 f"paths.run_dir={run_dir}", f"paths.output_dir={run_dir.parent}"]
    if device.type == "cpu":
        overrides.append("trainer.accelerator=cpu")
    cfg = compose(overrides)
    precision = args.precision or str(cfg.trainer.precision)
    if device.type == "cpu" and precision == "16-mixed":
        precision = "bf16-mixed"  # Lightning: no fp16 autocast on a CPU
    with open_dict(cfg):
        cfg.trainer.precision = precision
        if args.batch:
            cfg.data.batch_size = args.batch
        if args.image_size:
            cfg.data.transforms.image_size = args.image_size
    if cfg.model.backbone.name != timm_name:
        raise SystemExit(f"error: paper/{setting} trains model.backbone.name="
                         f"'{cfg.model.backbone.name}', this benchmark expects '{timm_name}'")
    if not cfg.see.enabled or cfg.see.mode != "top_fraction":
        raise SystemExit(f"error: paper/{setting} has no top-fraction SEE (see.enabled="
                         f"{cfg.see.enabled}, see.mode={cfg.see.mode})")
    return setting, cfg


def train_classes(source: Any, val_fraction: float) -> int:
    """Training classes left after the validation hold-out (as ``hold_out_classes`` counts
    them), from the dataset's official counts: the number of proxies."""
    classes = source.expected_counts["train"]["classes"]
    return classes - (max(1, int(round(classes * val_fraction))) if val_fraction > 0 else 0)


def make_batches(cfg: DictConfig, num_classes: int, count: int, device: torch.device
                 ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` random batches of ``data.batch_size`` images at the configured size, labelled
    as the recipe's sampler draws them: ``m_per_class`` images of each class for the
    class-balanced sampler (the ViTs), uniformly random classes for ``sampler=random``."""
    batch, size = int(cfg.data.batch_size), int(cfg.data.transforms.image_size)
    m = int(cfg.data.m_per_class)
    gen = torch.Generator().manual_seed(0)
    batches = []
    for i in range(count):
        if cfg.data.sampler == "random":
            labels = torch.randint(num_classes, (batch,), generator=gen)
        else:
            labels = (torch.arange(batch // m).repeat_interleave(m) + i * (batch // m)
                      ) % num_classes
        images = torch.randn(batch, 3, size, size, generator=gen)
        batches.append((images.to(device), labels.to(device)))
    return batches


def bench_family(family: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import lightning as L
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint

    from see_dml.module import DMLModule
    from see_dml.training.components import build_callbacks, build_loggers
    from see_dml.training.config_checks import validate_config

    device = torch.device(args.device)
    setting, cfg = setting_config(family, args.dim, device, args, tmp / family)
    validate_config(cfg)
    L.seed_everything(cfg.seed, verbose=False)
    if cfg.get("matmul_precision"):
        torch.set_float32_matmul_precision(cfg.matmul_precision)
    source = instantiate(cfg.dataset)  # reads nothing on disk: names, counts, recall Ks
    num_classes = train_classes(source, float(cfg.dataset.get("val_fraction", 0.0) or 0.0))
    module = DMLModule.from_config(cfg, num_classes, source=source)
    size = int(cfg.data.transforms.image_size)
    native = module.backbone.body.pretrained_cfg.get("input_size", (3, size, size))[1:]
    resized = tuple(native) != (size, size) and hasattr(module.backbone.body,
                                                        "set_input_size")
    if resized:  # a ViT's patch grid is fixed at creation: dry runs at small sizes only
        module.backbone.body.set_input_size(img_size=(size, size))

    total = args.warmup + args.steps + 1  # the last step only ends the last timed one
    distinct = make_batches(cfg, num_classes, min(total, 4), device)
    batches = [distinct[i % len(distinct)] for i in range(total)]
    loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False)
    starts: list[float] = []

    class StepClock(Callback):
        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any,
                                 batch_idx: int) -> None:
            sync(device)
            starts.append(time.perf_counter())

    callbacks = build_callbacks(cfg)
    for cb in callbacks:  # no validation here: keep the last weights, as train does then
        if isinstance(cb, ModelCheckpoint) and cb.monitor is not None:
            cb.monitor, cb.save_top_k = None, 1
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=[StepClock(), *callbacks],
                                     logger=build_loggers(cfg) or False, limit_val_batches=0,
                                     max_steps=total, enable_model_summary=False)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trainer.fit(module, train_dataloaders=loader)
    step_s = [b - a for a, b in zip(starts[args.warmup:], starts[args.warmup + 1:])]
    batch = int(cfg.data.batch_size)
    rates = sorted(batch / s for s in step_s)
    spread = deciles(rates)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
               if k.startswith("train/see/")}
    row = {
        "backbone": cfg.model.backbone.name, "family": family, "setting": setting,
        "embed_dim": int(cfg.model.embed_dim), "batch": batch, "image_size": size,
        "input_resized": resized, "precision": str(cfg.trainer.precision),
        "matmul_precision": cfg.get("matmul_precision"),
        "strategy": type(trainer.strategy).__name__, "num_classes": num_classes,
        "see": {"p_min": float(cfg.see.p_min), "p_max": float(cfg.see.p_max),
                "n_points": int(cfg.see.n_points), "weight": float(cfg.see.weight),
                "expanded_last_step": metrics.get("train/see/expanded_step"),
                "synthetic_last_step": metrics.get("train/see/synthetic_step")},
        "gradient_clip_val": cfg.trainer.get("gradient_clip_val"),
        "steps": len(step_s), "warmup": args.warmup,
        "images_per_s_median": statistics.median(rates),
        "images_per_s_p10": spread[0], "images_per_s_p90": spread[-1],
        "step_ms_median": statistics.median(step_s) * 1e3,
        "step_ms": [s * 1e3 for s in step_s],
        "peak_memory_mib": (torch.cuda.max_memory_allocated(device) / 2**20
                            if device.type == "cuda" else None),
        "loadavg_end": loadavg(),
    }
    print(f"{family}: {row['images_per_s_median']:.1f} images/s [{spread[0]:.1f}, "
          f"{spread[-1]:.1f}] ({row['step_ms_median']:.1f} ms a step of {batch}), "
          f"load {loadavg()}", flush=True)
    del trainer, module, loader, batches, distinct
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cuda or cpu (default: cuda when there is one)")
    parser.add_argument("--backbones", nargs="+", default=list(FAMILIES),
                        choices=list(FAMILIES), help="backbone families (default: all four)")
    parser.add_argument("--dim", type=int, default=128, choices=[128, 384],
                        help="the ViTs' embedding size (ResNet-50: always its 512)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--image-size", type=int, default=None,
                        help="input side (default: the recipe's, 224)")
    parser.add_argument("--batch", type=int, default=None,
                        help="per-device batch (default: the recipe's, 120 / 90)")
    parser.add_argument("--precision", default=None,
                        choices=["32-true", "bf16-mixed", "16-mixed"],
                        help="trainer.precision (default: the recipe's; 16-mixed -> "
                             "bf16-mixed on a CPU)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (0: torch's default, all cores); on a shared "
                             "CPU more than one thread can be many times slower")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "results" / "throughput.json")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
        # else Lightning's DDP on a CPU resets the threads to cores / processes
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("WANDB_SILENT", "true")
    from see_dml.runtime.cli import quiet_third_party

    quiet_third_party()
    device = torch.device(args.device)
    load_start, name = loadavg(), device_name(device)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [bench_family(f, args, Path(tmp)) for f in args.backbones]
    import lightning
    import timm

    for r in rows:
        r.update(device=name, loadavg_start=load_start, torch=torch.__version__,
                 lightning=lightning.__version__, timm=timm.__version__)
        if not (math.isfinite(r["images_per_s_median"]) and r["images_per_s_median"] > 0):
            raise SystemExit(f"error: {r['backbone']}: no finite rate measured")
    print(f"\n{name}, training images per second of one device (median of the timed steps "
          f"[10th, 90th pct]); SEE at fraction {SEE_FRACTION}, backbone not frozen\n")
    print_table(
        ["backbone (timm)", "setting", "batch", "image", "precision", "images / s",
         "ms a step", "peak GPU MiB"],
        [[r["backbone"], r["setting"], r["batch"],
          f"{r['image_size']}{' (resized)' if r['input_resized'] else ''}", r["precision"],
          interval(r["images_per_s_median"], r["images_per_s_p10"], r["images_per_s_p90"],
                   ",.1f"), f"{r['step_ms_median']:.1f}",
          "-" if r["peak_memory_mib"] is None else f"{r['peak_memory_mib']:,.0f}"]
         for r in rows])
    result = {"device": name,
              "rates": {r["backbone"]: round(r["images_per_s_median"], 3) for r in rows},
              "details": rows}
    write_json(args.out, result)
    print(f"\nwritten: {args.out}")
    return result


if __name__ == "__main__":
    main()

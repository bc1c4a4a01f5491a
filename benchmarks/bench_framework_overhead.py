"""Training-step time: the Lightning ``DMLModule`` against a bare PyTorch loop, one run.

    python benchmarks/bench_framework_overhead.py [--models small_cnn resnet18] [--rounds 3]
    python benchmarks/bench_framework_overhead.py --device cuda --precision bf16 \
        --models resnet50 --image-size 224 --batch 180
    python benchmarks/bench_framework_overhead.py --compile   # + model.compile=true rows
    python benchmarks/bench_framework_overhead.py --without-step-logging  # + what logging costs

Both sides train the same module object, built as ``python -m see_dml.train`` builds it
(``see_dml.module.DMLModule.from_config`` from the composed ``conf/train.yaml``), on the
same batches:

* **lightning**: ``trainer.fit`` with the trainer, callbacks and logger of the composed
  config (checkpointing, LR monitor, non-finite guard, CSV logger; validation off), as
  ``see_dml.train.train`` instantiates them;
* **bare**: ``for images, labels in loader``: forward, ``module.criterion``, ``zero_grad``,
  ``backward``, ``AdamW.step`` (the optimiser of ``module.configure_optimizers``), under
  the same autocast as Lightning's ``bf16-mixed`` when ``--precision bf16``.

The batches are made once and served by the same ``DataLoader(batch_size=None)`` to both
(on the device already), so data loading is not in the comparison (see
``bench_data_pipeline.py``). Single steps alternate: inside each fit, a callback runs one bare
step (its own optimiser over the same parameters) between every two Lightning steps, so both
sides see the same machine load; a Lightning step is the time from one
``on_train_batch_start`` to the next less that bare step (data fetch, hooks, logging
included), the device synchronised at every boundary. The first ``--warmup`` steps of a fit
are not timed. Each pair gives one ratio; the median over pairs and its 10th-90th
percentiles are reported, in wall time and in the process's CPU time (which leaves out the
waits for a core on a shared machine). ``--compile`` adds eager-vs-``model.compile=true``
rows (bare steps of the two modules alternating, after three compiling steps).
``--without-step-logging`` adds the same fits with the training step's ``self.log`` muted,
to see what logging costs. Results: ``results/framework_overhead.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict
from timing import deciles, interval, loadavg, print_table, sync, write_json

from see_dml.runtime.config import compose

#: overrides of conf/train.yaml per model name (the brief's CPU rows and the GPU row)
MODELS = {
    "small_cnn": ["model=small_cnn"],
    "resnet18": ["model=small_cnn", "model.backbone.name=resnet18",
                 "model.backbone.pretrained=false", "model.backbone.in_chans=3"],
    # the recipe's frozen BatchNorm, but no warm-up epoch: the backbone trains in every step
    "resnet50": ["model=resnet50", "model.backbone.pretrained=false",
                 "model.backbone.in_chans=3", "model.warmup_epochs=0"],
}


def make_batches(cfg: DictConfig, name: str, steps: int, batch: int, image_size: int,
                 device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``steps`` class-balanced batches: Double-MNIST through the real datamodule for the
    small CNN (its training transforms, sampler and batch size), random ``3 x S x S`` images
    with ``batch / m_per_class`` classes of ``m_per_class`` for the timm models."""
    from see_dml.training.components import build_datamodule

    if name == "small_cnn":
        dm = build_datamodule(cfg)
        batches: list[tuple[torch.Tensor, torch.Tensor]] = []
        while len(batches) < steps:
            for b in dm.train_dataloader():
                batches.append((b[0], b[1]))
                if len(batches) == steps:
                    break
    else:
        m = cfg.data.m_per_class
        gen = torch.Generator().manual_seed(0)
        labels = torch.arange(batch // m).repeat_interleave(m)
        batches = [(torch.randn(batch, 3, image_size, image_size, generator=gen),
                    (labels + 16 * i) % 64) for i in range(steps)]
    return [(x.to(device), y.to(device)) for x, y in batches]


class BareStep:
    """One bare training step: forward, ``module.criterion``, ``zero_grad``, ``backward``,
    ``AdamW.step`` on the next batch of ``loader`` (cycled), under ``precision``'s autocast
    (as Lightning's ``bf16-mixed``: forward and loss). Its own optimiser, built by
    ``module.configure_optimizers`` (the same groups and learning rates)."""

    def __init__(self, module: Any, loader: Any, precision: str) -> None:
        self.module, self.loader, self.precision = module, loader, precision
        self.optimizer = module.configure_optimizers()
        self.device = next(module.parameters()).device
        module.train()  # DMLModule.train: BatchNorm stays in eval where model.freeze_bn
        self._batches = iter(())

    def __call__(self) -> None:
        try:
            images, labels = next(self._batches)
        except StopIteration:
            self._batches = iter(self.loader)
            images, labels = next(self._batches)
        autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16)
                    if self.precision == "bf16" else contextlib.nullcontext())
        with autocast:
            loss = self.module.criterion(self.module(images), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def now() -> tuple[float, float]:
    """Wall and process CPU seconds: on a shared machine the CPU time leaves out the time the
    process waited for a core (both sides run in this one process)."""
    return time.perf_counter(), time.process_time()


def timed(fn: Any, device: torch.device) -> tuple[float, float]:
    sync(device)
    wall, cpu = now()
    fn()
    sync(device)
    wall_end, cpu_end = now()
    return wall_end - wall, cpu_end - cpu


def lightning_vs_bare(cfg: DictConfig, module: Any, loader: Any, steps: int, warmup: int,
                      precision: str, run_dir: Path
                      ) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """One ``trainer.fit`` of ``steps`` steps with a bare step between each two of its steps.

    A Lightning step is the time from one ``on_train_batch_start`` to the next (everything
    the framework does per step: data fetch, hooks, training step, backward, optimiser,
    logging), less the bare step run at that point, which is timed on its own. Alternating
    single steps keeps both under the same machine load."""
    import lightning as L
    from lightning.pytorch.callbacks import Callback

    from see_dml.training.components import build_callbacks, build_loggers

    device = next(module.parameters()).device
    bare_step = BareStep(module, loader, precision)
    light: list[tuple[float, float]] = []
    bare: list[tuple[float, float]] = []

    class Interleave(Callback):
        prev: tuple[float, float] | None = None

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any,
                                 batch_idx: int) -> None:
            sync(device)
            wall, cpu = now()
            if self.prev is not None and batch_idx > warmup:
                light.append((wall - self.prev[0], cpu - self.prev[1]))
            if batch_idx >= warmup:
                bare.append(timed(bare_step, device))
            else:  # the bare side warms up too (its optimiser's state, kernels, allocator)
                bare_step()
            sync(device)
            self.prev = now()

    with open_dict(cfg):
        cfg.paths.run_dir = str(run_dir)
    # the callbacks and logger of the run config, as see_dml.train.train builds them
    # (validation off, as train does for datasets without validation classes)
    callbacks = build_callbacks(cfg)
    for cb in callbacks:
        if getattr(cb, "monitor", None) is not None:
            cb.monitor, cb.save_top_k = None, 1
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=[Interleave(), *callbacks],
                                     logger=build_loggers(cfg) or False, limit_val_batches=0,
                                     max_steps=steps, enable_model_summary=False)
    trainer.fit(module, train_dataloaders=loader)
    return light, bare[:len(light)]


def a_vs_b(step_a: Any, step_b: Any, steps: int, warmup: int, device: torch.device
           ) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """Alternate single steps of ``step_a`` and ``step_b``; the times after ``warmup``."""
    a, b = [], []
    for i in range(steps):
        ta, tb = timed(step_a, device), timed(step_b, device)
        if i >= warmup:
            a.append(ta)
            b.append(tb)
    return a, b


def summarise(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> dict[str, Any]:
    """Medians of each side and of the per-pair ratios a/b with their 10th-90th percentiles,
    in wall time and in process CPU time."""
    out: dict[str, Any] = {"pairs": len(a)}
    for i, clock in enumerate(("wall", "cpu")):
        x, y = [t[i] for t in a], [t[i] for t in b]
        ratios = sorted(p / q for p, q in zip(x, y))
        spread = deciles(ratios)
        prefix = "" if clock == "wall" else "cpu_"
        out.update({f"{prefix}a_median_ms": statistics.median(x) * 1e3,
                    f"{prefix}b_median_ms": statistics.median(y) * 1e3,
                    f"{prefix}ratio_median": statistics.median(ratios),
                    f"{prefix}ratio_p10": spread[0], f"{prefix}ratio_p90": spread[-1],
                    f"{prefix}a_ms": [v * 1e3 for v in x], f"{prefix}b_ms": [v * 1e3 for v in y]})
    return out


def bench_model(name: str, args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    import lightning as L

    from see_dml.module import DMLModule
    from see_dml.training.components import build_datamodule

    device = torch.device(args.device)
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    precision = {"fp32": "32-true", "bf16": "bf16-mixed"}[args.precision]
    overrides = [*MODELS[name], f"data.batch_size={args.batch}", "logger=csv",
                 f"trainer.accelerator={accelerator}", f"trainer.precision={precision}",
                 "trainer.enable_progress_bar=false", f"paths.run_dir={tmp / name}",
                 f"paths.output_dir={tmp}", *args.override]
    cfg = compose(overrides)
    L.seed_everything(cfg.seed, verbose=False)
    if cfg.get("matmul_precision"):
        torch.set_float32_matmul_precision(cfg.matmul_precision)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = args.cudnn_benchmark
    num_classes = build_datamodule(cfg).num_classes if name == "small_cnn" else 64
    module = DMLModule.from_config(cfg, num_classes).to(device)
    batches = make_batches(cfg, name, args.steps, args.batch, args.image_size, device)
    loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False)
    meta = {"model": name, "batch_shape": list(batches[0][0].shape),
            "precision": args.precision}
    rows = []
    if not args.skip_lightning:
        light, bare = [], []
        for r in range(args.rounds):
            a, b = lightning_vs_bare(cfg, module, loader, args.steps, args.warmup,
                                     args.precision, tmp / name / str(r))
            light += a
            bare += b
            print(f"{name} fit {r}: lightning {statistics.median(t[0] for t in a) * 1e3:.1f} "
                  f"ms, bare {statistics.median(t[0] for t in b) * 1e3:.1f} ms (wall medians), "
                  f"load {loadavg()}", flush=True)
        rows.append({"measure": "lightning_vs_bare", **meta, **summarise(light, bare),
                     "loadavg_end": loadavg()})
    if args.without_step_logging:
        # diagnosis: the same fits with the training step's self.log / self.log_dict muted
        light, bare = [], []
        module.log = module.log_dict = lambda *a, **k: None  # type: ignore[method-assign]
        for r in range(args.rounds):
            a, b = lightning_vs_bare(cfg, module, loader, args.steps, args.warmup,
                                     args.precision, tmp / name / f"nolog{r}")
            light += a
            bare += b
        del module.log, module.log_dict
        rows.append({"measure": "lightning_without_step_logging_vs_bare", **meta,
                     **summarise(light, bare), "loadavg_end": loadavg()})
    if args.compile:
        with open_dict(cfg):
            cfg.model.compile = True
        L.seed_everything(cfg.seed, verbose=False)
        compiled = DMLModule.from_config(cfg, num_classes).to(device)
        step_c, step_e = (BareStep(compiled, loader, args.precision),
                          BareStep(module, loader, args.precision))
        t0 = time.perf_counter()
        for _ in range(3):  # compiles (and recompiles once for the optimiser's state)
            step_c()
        sync(device)
        compile_s = time.perf_counter() - t0
        comp, eager = a_vs_b(step_c, step_e, args.rounds * args.steps, args.warmup, device)
        print(f"{name}: compiled {statistics.median(t[0] for t in comp) * 1e3:.1f} ms, eager "
              f"{statistics.median(t[0] for t in eager) * 1e3:.1f} ms (wall medians), "
              f"load {loadavg()}", flush=True)
        rows.append({"measure": "compiled_vs_eager", **meta, "first_3_steps_compiled_s":
                     compile_s, **summarise(comp, eager), "loadavg_end": loadavg()})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["small_cnn", "resnet18"],
                        choices=sorted(MODELS))
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=64, help="timm models' input side")
    parser.add_argument("--rounds", type=int, default=3, help="fits (each --steps steps)")
    parser.add_argument("--steps", type=int, default=30, help="steps per fit")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per fit")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: all)")
    parser.add_argument("--compile", action="store_true",
                        help="also time model.compile=true against eager (bare loop)")
    parser.add_argument("--without-step-logging", action="store_true",
                        help="diagnosis: also time fits whose training step logs nothing")
    parser.add_argument("--skip-lightning", action="store_true",
                        help="only the --compile rows")
    parser.add_argument("--cudnn-benchmark", action="store_true",
                        help="torch.backends.cudnn.benchmark on a GPU")
    parser.add_argument("--override", nargs="*", default=[], help="more config overrides")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "results" / "framework_overhead.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("WANDB_SILENT", "true")
    load_start = loadavg()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [r for name in args.models for r in bench_model(name, args, Path(tmp))]
    device = (torch.cuda.get_device_name() if args.device.startswith("cuda") else
              f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)")
    for r in rows:
        r.update(device=device, loadavg_start=load_start, steps=args.steps,
                 warmup=args.warmup, torch=torch.__version__)
    print_table(
        ["device", "model", "batch", "A vs B", "A (ms)", "B (ms)",
         "A / B, median of pairs [10th, 90th pct]", "same in CPU time", "pairs",
         "load (1/5/15 min)"],
        [[device, f"{r['model']} ({r['precision']})", r["batch_shape"], r["measure"],
          f"{r['a_median_ms']:.1f}", f"{r['b_median_ms']:.1f}",
          interval(r["ratio_median"], r["ratio_p10"], r["ratio_p90"]),
          interval(r["cpu_ratio_median"], r["cpu_ratio_p10"], r["cpu_ratio_p90"]), r["pairs"],
          f"{r['loadavg_start']} -> {r['loadavg_end']}"] for r in rows])
    write_json(args.out, rows)


if __name__ == "__main__":
    main()

"""Training-step time with SEE on versus off: same model, same batch, one run.

    python benchmarks/bench_see_overhead.py [--backbones small_cnn resnet18] [--repeats 15]
        [--threads 1]
    python benchmarks/bench_see_overhead.py --device cuda --precision bf16 --backbones resnet50

A step is forward + loss (+ SEE's synthetic term) + backward + optimiser step, global batch
180 (90 classes x 2), Proxy-Anchor, n = 8 points per expanded sample at the end-of-schedule
fraction 0.4 (72 samples expanded, 576 synthetic points). SEE-on and SEE-off steps alternate
so both see the same machine load; the ratio of their medians is the overhead. Results go to
``benchmarks/results/see_overhead.json``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from timing import deciles, interval, loadavg, print_table, sync, write_json

from see_dml.callbacks.synthesis import SEECallback
from see_dml.losses import MetricLoss
from see_dml.models import Backbone, EmbeddingHead
from see_dml.module import DMLModule

INPUTS = {"small_cnn": (1, 28, 56), "resnet18": (3, 112, 112), "resnet50": (3, 224, 224)}
AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def make_module(backbone: str, dim: int, classes: int) -> DMLModule:
    from pytorch_metric_learning.losses import ProxyAnchorLoss

    chans = INPUTS[backbone][0]
    body = Backbone(backbone, in_chans=chans)
    head = EmbeddingHead(body.num_features, dim)
    loss = MetricLoss(ProxyAnchorLoss(classes, dim), classes, dim, lr_multiplier=100)
    return DMLModule(body, head, loss, optimizer=lambda params: torch.optim.AdamW(params))


def step(module: DMLModule, opt: torch.optim.Optimizer, images: torch.Tensor,
         labels: torch.Tensor, see: SEECallback | None, precision: str = "fp32"
         ) -> tuple[float, float]:
    """One optimiser step; under autocast for bf16/fp16 (the loss terms run in float32,
    as Lightning's mixed precision runs them). fp16 would also need a GradScaler, whose
    cost is the same with SEE on or off, so it is left out of the comparison.

    Returns ``(wall seconds, CPU seconds of this process)``: on a shared machine the CPU
    time leaves out the time the process waited for a core."""
    sync(images.device)
    start, cpu_start = time.perf_counter(), time.process_time()
    dtype = AUTOCAST[precision]
    with torch.autocast(images.device.type, dtype=dtype, enabled=dtype is not None):
        emb = module(images)
    emb = emb.float()
    loss = module.criterion(emb, labels)
    if see is not None:
        loss = loss + see(module, emb, labels)["loss/synthetic"]
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sync(images.device)
    return time.perf_counter() - start, time.process_time() - cpu_start


def bench(backbone: str, dim: int, repeats: int, batch: int = 180, classes: int = 100,
          device: str = "cpu", precision: str = "fp32", image_size: int | None = None
          ) -> dict[str, float]:
    torch.manual_seed(0)
    dev = torch.device(device)
    module = make_module(backbone, dim, classes).to(dev)
    module.train()
    opt = module.configure_optimizers()
    shape = INPUTS[backbone] if image_size is None else (
        INPUTS[backbone][0], image_size, image_size)
    images = torch.randn(batch, *shape, device=dev)
    labels = (torch.arange(batch // 2).repeat_interleave(2) % classes).to(dev)
    see = SEECallback(n_points=8, p_min=0.4, p_max=0.4, scheduled=False, weight=0.2)
    for _ in range(3):  # warm-up (cuDNN autotuning, allocator)
        step(module, opt, images, labels, None, precision)
        step(module, opt, images, labels, see, precision)
    off, on, cpu_off, cpu_on = [], [], [], []
    for _ in range(repeats):
        for times, cpu, hook in ((off, cpu_off, None), (on, cpu_on, see)):
            wall, cpu_s = step(module, opt, images, labels, hook, precision)
            times.append(wall)
            cpu.append(cpu_s)
    t_off, t_on = statistics.median(off), statistics.median(on)
    ratios = sorted(b / a for a, b in zip(off, on))  # each SEE-on step over the step before
    spread = deciles(ratios)
    cpu_ratios = sorted(b / a for a, b in zip(cpu_off, cpu_on))
    cpu_deciles = deciles(cpu_ratios)
    # the synthesis call alone, for the record
    emb = module(images).detach()
    syn_times = []
    for _ in range(repeats):
        sync(dev)
        start = time.perf_counter()
        see(module, emb, labels)
        sync(dev)
        syn_times.append(time.perf_counter() - start)
    return {"backbone": backbone, "dim": dim, "batch": batch, "input": list(shape),
            "n_points": 8,
            "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
            "precision": precision,
            "fraction": 0.4, "step_off_ms": t_off * 1e3, "step_on_ms": t_on * 1e3,
            "ratio_on_off": t_on / t_off, "ratio_median_of_pairs": statistics.median(ratios),
            "ratio_p10": spread[0], "ratio_p90": spread[-1], "repeats": repeats,
            "cpu_step_off_ms": statistics.median(cpu_off) * 1e3,
            "cpu_step_on_ms": statistics.median(cpu_on) * 1e3,
            "cpu_ratio_median_of_pairs": statistics.median(cpu_ratios),
            "cpu_ratio_p10": cpu_deciles[0], "cpu_ratio_p90": cpu_deciles[-1],
            "see_term_ms": statistics.median(syn_times) * 1e3,
            "threads": torch.get_num_threads(), "loadavg_end": loadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbones", nargs="+", default=["small_cnn", "resnet18"])
    parser.add_argument("--dims", nargs="+", type=int, default=[128, 512])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--precision", default="fp32", choices=sorted(AUTOCAST),
                        help="autocast dtype of the backbone forward")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "results" / "see_overhead.json")
    parser.add_argument("--batch", type=int, default=180)
    parser.add_argument("--image-size", type=int, default=None,
                        help="square input side instead of the backbone's default")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: all)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load_start = loadavg()
    results = [bench(b, d, args.repeats, args.batch, device=args.device,
                     precision=args.precision, image_size=args.image_size)
               for b in args.backbones for d in args.dims]
    for r in results:
        r["loadavg_start"] = load_start
    print_table(
        ["device", "precision", "backbone", "d", "step off (ms)", "step on (ms)", "on / off",
         "pairs: median [10th, 90th pct]", "CPU time on / off, pairs: median [10th, 90th]",
         "SEE term (ms)", "load"],
        [[r["device"], r["precision"], r["backbone"], r["dim"], f"{r['step_off_ms']:.1f}",
          f"{r['step_on_ms']:.1f}", f"{r['ratio_on_off']:.3f}",
          interval(r["ratio_median_of_pairs"], r["ratio_p10"], r["ratio_p90"]),
          interval(r["cpu_ratio_median_of_pairs"], r["cpu_ratio_p10"], r["cpu_ratio_p90"]),
          f"{r['see_term_ms']:.2f}", f"{load_start} -> {r['loadavg_end']}"] for r in results])
    write_json(args.out, results)


if __name__ == "__main__":
    main()

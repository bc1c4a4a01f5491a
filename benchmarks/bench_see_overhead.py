"""Training-step time with SEE on versus off: same model, same batch, one run.

    python benchmarks/bench_see_overhead.py [--backbones small_cnn resnet18] [--repeats 15]

A step is forward + loss (+ SEE's synthetic term) + backward + optimiser step, global batch
180 (90 classes x 2), Proxy-Anchor, n = 8 points per expanded sample at the end-of-schedule
fraction 0.4 (72 samples expanded, 576 synthetic points). SEE-on and SEE-off steps alternate
so both see the same machine load; the ratio of their medians is the overhead. Results go to
``benchmarks/results/see_overhead.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from see_dml.callbacks.synthesis import SEECallback
from see_dml.losses import MetricLoss
from see_dml.models import Backbone, EmbeddingHead
from see_dml.module import DMLModule

INPUTS = {"small_cnn": (1, 28, 56), "resnet18": (3, 112, 112)}


def make_module(backbone: str, dim: int, classes: int) -> DMLModule:
    from pytorch_metric_learning.losses import ProxyAnchorLoss

    chans = INPUTS[backbone][0]
    body = Backbone(backbone, in_chans=chans)
    head = EmbeddingHead(body.num_features, dim)
    loss = MetricLoss(ProxyAnchorLoss(classes, dim), classes, dim, lr_multiplier=100)
    return DMLModule(body, head, loss, optimizer=lambda params: torch.optim.AdamW(params))


def step(module: DMLModule, opt: torch.optim.Optimizer, images: torch.Tensor,
         labels: torch.Tensor, see: SEECallback | None) -> float:
    start = time.perf_counter()
    emb = module(images)
    loss = module.criterion(emb, labels)
    if see is not None:
        loss = loss + see(module, emb, labels)["loss/synthetic"]
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - start


def bench(backbone: str, dim: int, repeats: int, batch: int = 180, classes: int = 100
          ) -> dict[str, float]:
    torch.manual_seed(0)
    module = make_module(backbone, dim, classes)
    module.train()
    opt = module.configure_optimizers()
    images = torch.randn(batch, *INPUTS[backbone])
    labels = torch.arange(batch // 2).repeat_interleave(2) % classes
    see = SEECallback(n_points=8, p_min=0.4, p_max=0.4, scheduled=False, weight=0.2)
    for _ in range(2):  # warm-up
        step(module, opt, images, labels, None)
        step(module, opt, images, labels, see)
    off, on = [], []
    for _ in range(repeats):
        off.append(step(module, opt, images, labels, None))
        on.append(step(module, opt, images, labels, see))
    t_off, t_on = statistics.median(off), statistics.median(on)
    # the synthesis call alone, for the record
    emb = module(images).detach()
    syn_times = []
    for _ in range(repeats):
        start = time.perf_counter()
        see(module, emb, labels)
        syn_times.append(time.perf_counter() - start)
    return {"backbone": backbone, "dim": dim, "batch": batch, "n_points": 8,
            "fraction": 0.4, "step_off_ms": t_off * 1e3, "step_on_ms": t_on * 1e3,
            "ratio_on_off": t_on / t_off, "see_term_ms": statistics.median(syn_times) * 1e3,
            "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbones", nargs="+", default=["small_cnn", "resnet18"])
    parser.add_argument("--dims", nargs="+", type=int, default=[128, 512])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "results" / "see_overhead.json")
    args = parser.parse_args()
    results = [bench(b, d, args.repeats) for b in args.backbones for d in args.dims]
    print("| backbone | d | step off (ms) | step on (ms) | on / off | SEE term (ms) |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['backbone']} | {r['dim']} | {r['step_off_ms']:.1f} | {r['step_on_ms']:.1f}"
              f" | {r['ratio_on_off']:.3f} | {r['see_term_ms']:.2f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""What a paper table costs: images trained and evaluated per setting, and GPU hours once a
throughput has been measured.

    python experiments/budget.py vit128 [resnet50 vit384]
        [--images-per-s deit_small_distilled_patch16_224=850 [more BACKBONE=N]]
        [--rates-file benchmarks/results/throughput.json]

Every job of ``conf/experiment/paper/table_<name>.yaml`` is composed as the sweep composes it,
and counted from its dataset's official split sizes (the ``expected_counts`` its loader
checks with ``strict_counts``):

- train: the images of the training classes left after the validation hold-out
  (``dataset.val_fraction`` of the classes, counted as that fraction of the images) x epochs;
- eval: the validation split every epoch, the test split every epoch where
  ``test_every_epoch`` is on (the best-on-test number; only the epochs of ``test_epochs``),
  and the test split twice at the end
  (the selected and the final checkpoint).

GPU hours need the images per second of one GPU for the backbone, at the recipe's batch and
precision: ``--images-per-s``, or ``--rates-file``, the JSON that
``benchmarks/bench_throughput.py`` writes (``{"device": ..., "rates": {BACKBONE: N}}``;
``benchmarks/gpu_checks.sh`` runs it on a GPU), whose device is named in a line above the
tables; a backbone given both ways takes its ``--images-per-s`` value. Evaluation images are
counted at the training rate, an upper bound: evaluation runs no backward pass. Without a
rate the column says "not measured"; nothing here guesses one.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from see_dml.runtime.config import compose, sweep_jobs

PAPER = Path(__file__).resolve().parents[1] / "conf" / "experiment" / "paper"
SETTING_KEY = "+experiment/paper@_global_"


@dataclass
class Cost:
    """One setting of a table: its runs and what each run trains and evaluates."""

    setting: str
    backbone: str
    runs: int
    gpus: int          # per run
    epochs: int
    train_images: int  # per run
    eval_images: int   # per run

    def gpu_hours(self, images_per_s: float | None) -> float | None:
        """All runs' GPU hours at ``images_per_s`` per GPU; None without a rate."""
        if not images_per_s:
            return None
        return self.runs * (self.train_images + self.eval_images) / images_per_s / 3600


def split_sizes(target: str) -> dict[str, int]:
    """Official images per split of the dataset class ``target`` (its ``expected_counts``)."""
    module, name = target.rsplit(".", 1)
    counts = getattr(importlib.import_module(module), name).expected_counts
    if not counts:
        raise SystemExit(f"error: {target} has no official split sizes (expected_counts)")
    return {split: c["images"] for split, c in counts.items()}


def setting_cost(setting: str, runs: int) -> Cost:
    """What one run of ``conf/experiment/paper/<setting>.yaml`` trains and evaluates."""
    cfg = compose([f"experiment=paper/{setting}"])
    sizes = split_sizes(cfg.dataset._target_)
    train_split = sizes.pop("train")
    test = sum(sizes.values())  # In-Shop: query + gallery
    val_fraction = float(OmegaConf.select(cfg, "dataset.val_fraction", default=0.0) or 0.0)
    val = round(train_split * val_fraction)
    epochs = int(cfg.trainer.max_epochs)
    tested = 0  # epochs whose test split is scored (test_every_epoch, test_epochs)
    if cfg.get("test_every_epoch", False):
        start = int(OmegaConf.select(cfg, "test_epochs.start", default=0))
        every = int(OmegaConf.select(cfg, "test_epochs.every", default=1))
        from see_dml.data.datamodule import scheduled_epoch  # torch: only when it counts

        tested = sum(scheduled_epoch(e, start, every) for e in range(epochs))
    devices = cfg.trainer.devices if isinstance(cfg.trainer.devices, int) else 1
    return Cost(setting=setting, backbone=cfg.model.backbone.name, runs=runs,
                gpus=devices * int(cfg.trainer.get("num_nodes", 1) or 1), epochs=epochs,
                train_images=(train_split - val) * epochs,
                eval_images=val * epochs + test * tested + 2 * test)


def table_costs(table: str) -> list[Cost]:
    """One :class:`Cost` per setting of ``table``, in the table's order."""
    jobs = sweep_jobs([f"experiment=paper/table_{table}"])
    runs = Counter(o.split("=", 1)[1] for job in jobs for o in job
                   if o.startswith(f"{SETTING_KEY}="))
    if not runs:
        raise SystemExit(f"error: conf/experiment/paper/table_{table}.yaml sweeps no "
                         f"{SETTING_KEY}")
    return [setting_cost(setting, n) for setting, n in runs.items()]


def render(table: str, costs: list[Cost], rates: dict[str, float]) -> str:
    """The Markdown table of one paper table's costs, with a total line."""
    def hours(h: float | None) -> str:
        return "not measured" if h is None else f"{h:,.1f}"

    lines = [f"### table_{table}", "",
             "| setting | runs | GPUs a run | epochs | train images a run (M) "
             "| eval images a run (M) | GPU hours (all runs) |",
             "|---|---|---|---|---|---|---|"]
    total: float | None = 0.0
    for c in costs:
        # a rate given for the architecture (resnet50) serves its tagged weights too
        h = c.gpu_hours(rates.get(c.backbone, rates.get(c.backbone.split(".")[0])))
        total = None if h is None or total is None else total + h
        lines.append(f"| {c.setting} | {c.runs} | {c.gpus} | {c.epochs} "
                     f"| {c.train_images / 1e6:.2f} | {c.eval_images / 1e6:.2f} | {hours(h)} |")
    runs = sum(c.runs for c in costs)
    trained = sum(c.runs * c.train_images for c in costs) / 1e6
    evaluated = sum(c.runs * c.eval_images for c in costs) / 1e6
    lines.append(f"| **all runs** | {runs} | | | {trained:,.1f} | {evaluated:,.1f} "
                 f"| {hours(total)} |")
    return "\n".join(lines)


def parse_rates(items: list[str]) -> dict[str, float]:
    """``["resnet50=1200", ...]`` -> ``{"resnet50": 1200.0}``."""
    rates = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            rates[name] = float(value)
        except ValueError:
            sep = ""
        if not sep or rates[name] <= 0:
            raise SystemExit(f"error: --images-per-s wants BACKBONE=N with N > 0 (the timm "
                             f"name, e.g. resnet50=1200), got '{item}'")
    return rates


def read_rates_file(path: Path) -> tuple[dict[str, float], str]:
    """The ``rates`` and ``device`` of a ``bench_throughput.py`` JSON."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise SystemExit(f"error: --rates-file {path}: {err}") from err
    rates = data.get("rates") if isinstance(data, dict) else None
    if not isinstance(rates, dict):
        raise SystemExit(f"error: --rates-file {path} has no \"rates\" object (the JSON of "
                         "benchmarks/bench_throughput.py)")
    for name, value in rates.items():
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not math.isfinite(value) or value <= 0):
            raise SystemExit(f"error: --rates-file {path}: the rate of '{name}' must be a "
                             f"number > 0 (images per second), got {value!r}")
    return ({str(k): float(v) for k, v in rates.items()},
            str(data.get("device") or "an unnamed device"))


def rates_line(path: Path, device: str, from_file: dict[str, float],
               overridden: list[str]) -> str:
    """The line above the tables naming where the rates came from."""
    line = (f"Rates (training images per second of one device) from {path}, measured on "
            f"{device}: {', '.join(f'{k} {v:,.1f}' for k, v in from_file.items())}.")
    if overridden:
        line += f" Given by --images-per-s instead: {', '.join(overridden)}."
    if device.lower().startswith("cpu"):
        line += " A CPU's rates are not a GPU's: the hours below are not GPU hours."
    return line


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    tables = sorted(p.stem.removeprefix("table_") for p in PAPER.glob("table_*.yaml"))
    parser.add_argument("tables", nargs="*", default=tables, help=f"of {', '.join(tables)}")
    parser.add_argument("--images-per-s", nargs="*", default=[], metavar="BACKBONE=N",
                        help="measured training images per second of one GPU, per timm name")
    parser.add_argument("--rates-file", type=Path, default=None, metavar="PATH",
                        help="the JSON of benchmarks/bench_throughput.py; its \"rates\", "
                             "unless --images-per-s gives the backbone")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.tables) - set(tables))
    if unknown:
        parser.error(f"no table {', '.join(unknown)}; the tables are {', '.join(tables)}")
    given = parse_rates(args.images_per_s)
    rates, header = dict(given), ""
    if args.rates_file is not None:
        from_file, device = read_rates_file(args.rates_file)
        rates = {**from_file, **given}
        header = rates_line(args.rates_file, device, from_file,
                            sorted(k for k in given if k in from_file)) + "\n\n"
    print(header + "\n\n".join(render(t, table_costs(t), rates) for t in args.tables))


if __name__ == "__main__":
    main()

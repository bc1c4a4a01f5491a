"""Helpers the benchmarks share: spread of paired ratios, the machine's load, device sync,
and how a result is printed and saved."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import torch


def deciles(values: list[float]) -> list[float]:
    """The 10th..90th percentiles (within the data's range; one value: itself)."""
    if len(values) < 2:
        return values * 9
    return statistics.quantiles(values, n=10, method="inclusive")


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages (the machine is shared)."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so a timer measures it (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interval(median: float, low: float, high: float, fmt: str = ".3f") -> str:
    """``median [low, high]`` (a median and its 10th and 90th percentiles) for a table."""
    return f"{median:{fmt}} [{low:{fmt}}, {high:{fmt}}]"


def write_json(path: Path, data: Any) -> None:
    """``data`` as indented JSON at ``path``, its folder made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def print_table(headers: list[str], rows: list[list[Any]]) -> None:
    """A Markdown table: ``headers``, then one line per row of cells."""
    print("| " + " | ".join(headers) + " |")
    print("|" + "---|" * len(headers))
    for cells in rows:
        print("| " + " | ".join(str(c) for c in cells) + " |")

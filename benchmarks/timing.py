"""Helpers the benchmarks share: spread of paired ratios, the machine's load, device sync."""

from __future__ import annotations

import statistics
from pathlib import Path

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

"""What produced a run: the code version, the library versions and the devices.

Every ``metrics.json`` carries these flat keys (``provenance/...``), so that results made by
different code, libraries or hardware can be told apart when they are tabled together:

- ``provenance/commit``: the git commit of the checkout the package was imported from, or
  ``unknown`` (an installed wheel, no git, the package not tracked by the enclosing repo);
- ``provenance/dirty``: whether tracked files differed from that commit (``unknown`` with
  the commit);
- ``provenance/torch``, ``.../lightning``, ``.../timm``, ``.../pytorch_metric_learning``:
  installed versions (``unknown`` when one is missing);
- ``provenance/device``: ``cpu`` or the accelerator's name (``NVIDIA H200``), and
  ``provenance/device_count``: the devices of the run (world size), ``unknown`` if not given;
- ``provenance/threads``: torch's intra-op CPU threads when the metrics were written (the
  ``threads`` key of train), and ``provenance/cpu_capability``: the vector instructions
  torch's CPU kernels use (``AVX2``, ``AVX512``...). Both decide the last bits of CPU
  results: runs agree bit for bit only where both (and the libraries) agree.
"""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

__all__ = ["code_version", "device_of", "library_versions", "provenance"]

UNKNOWN = "unknown"
#: distribution name -> key suffix
LIBRARIES = {"torch": "torch", "lightning": "lightning", "timm": "timm",
             "pytorch-metric-learning": "pytorch_metric_learning"}


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                              timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def code_version(package_file: str | Path | None = None) -> dict[str, Any]:
    """``{"commit": sha | "unknown", "dirty": bool | "unknown"}`` of the checkout holding
    ``package_file`` (default: this package), only if git tracks that file there."""
    here = Path(package_file or __file__).resolve()
    unknown = {"commit": UNKNOWN, "dirty": UNKNOWN}
    # a wheel inside some other repository (a venv in a checkout) is not that repo's code
    if _git(["ls-files", "--error-unmatch", here.name], here.parent) is None:
        return unknown
    commit = _git(["rev-parse", "HEAD"], here.parent)
    status = _git(["status", "--porcelain", "--untracked-files=no"], here.parent)
    if not commit or status is None:
        return unknown
    return {"commit": commit.strip(), "dirty": bool(status.strip())}


def library_versions() -> dict[str, str]:
    out = {}
    for dist, key in LIBRARIES.items():
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[key] = UNKNOWN
    return out


def device_of(trainer: Any) -> tuple[str, int]:
    """``(kind, count)`` of a Lightning trainer's run: the root device's name and the world
    size (devices x nodes)."""
    device = trainer.strategy.root_device
    return _device_name(device), int(trainer.world_size)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def provenance(devices: Any = None) -> dict[str, Any]:
    """The flat ``provenance/...`` keys; ``devices``: ``(kind, count)``, one
    ``torch.device`` or a Lightning trainer (:func:`device_of`)."""
    if hasattr(devices, "strategy"):
        devices = device_of(devices)
    if isinstance(devices, torch.device):
        devices = (_device_name(devices), 1)
    kind, count = devices if devices is not None else (UNKNOWN, UNKNOWN)
    return {**{f"provenance/{k}": v for k, v in code_version().items()},
            **{f"provenance/{k}": v for k, v in library_versions().items()},
            "provenance/device": kind, "provenance/device_count": count,
            "provenance/threads": torch.get_num_threads(),
            "provenance/cpu_capability": _cpu_capability()}


def _cpu_capability() -> str:
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):  # an older torch
        return UNKNOWN

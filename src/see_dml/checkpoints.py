"""Reading a ``see_dml.train`` checkpoint: the file checks every tool runs first, and what
rebuilding its model needs besides the weights (the stored config's layout, the class count).

Cheap to import: torch loads inside :func:`read_checkpoint` and :func:`resolve_device`, so a
CLI's mistyped ``ckpt_path`` fails before seconds of imports. Writing checkpoints is
:mod:`see_dml.checkpoint_io`; the model itself is rebuilt by
:func:`see_dml.module.load_module_from_checkpoint`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from see_dml.errors import CheckpointError

if TYPE_CHECKING:
    import torch


def check_ckpt_path(path: str | Path | None) -> Path:
    """``ckpt_path`` as an existing file, or :class:`CheckpointError` naming ``ckpt_path``.

    Cheap (no torch): the CLIs call it before seconds of imports.
    """
    if path is None or str(path) in ("", "???"):
        raise CheckpointError("ckpt_path is required, e.g. "
                              "ckpt_path=outputs/train/runs/<run>/checkpoints/last.ckpt")
    file = Path(path).expanduser()
    if not file.is_file():
        raise CheckpointError(f"ckpt_path='{path}' does not exist (or is not a file)")
    return file


def read_checkpoint(path: str | Path | None) -> dict[str, Any]:
    """Load a ``see_dml.train`` checkpoint on CPU; :class:`CheckpointError` names ``ckpt_path``.

    ``weights_only=False``: Lightning checkpoints hold loop and callback state besides
    tensors. Only load checkpoints you trust (as for any pickle).
    """
    file = check_ckpt_path(path)
    import torch

    try:
        ckpt = torch.load(file, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises pickle, zip and runtime errors alike
        raise CheckpointError(f"ckpt_path='{path}' is not a readable checkpoint: {err}") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"ckpt_path='{path}' is not a Lightning checkpoint "
                              "(no 'state_dict')")
    if "see_dml_config" not in ckpt:
        raise CheckpointError(f"ckpt_path='{path}' has no 'see_dml_config': it was not written "
                              "by python -m see_dml.train, so the model cannot be rebuilt")
    return ckpt


def check_config_layout(cfg: DictConfig, path: str | Path) -> None:
    """:class:`CheckpointError` for a checkpoint whose stored config predates the
    ``_target_`` nodes (``model.backbone: resnet50`` where a ``Backbone`` node now stands, a
    loss without ``_target_``): this version cannot rebuild its model from it."""
    backbone = OmegaConf.select(cfg, "model.backbone")
    old = [key for key, ok in (("model.backbone", isinstance(backbone, DictConfig)
                                and "_target_" in backbone),
                               ("model.head", OmegaConf.select(cfg, "model.head") is not None),
                               ("loss._target_", OmegaConf.select(cfg, "loss._target_")
                                is not None)) if not ok]
    if old:
        what = f"model.backbone: {backbone}" if isinstance(backbone, str) else ", ".join(old)
        raise CheckpointError(
            f"ckpt_path='{path}' was written by an older see_dml, whose config stored the model "
            f"and loss as flat keys ({what}; missing: {', '.join(old)}), before they became "
            "_target_ nodes: this version cannot rebuild that model. Evaluate it with the "
            "see_dml version that trained it, or train it again")


def num_classes_from_state_dict(state_dict: dict[str, Any]) -> int | None:
    """The class count of a loss's class weights, by their name (the shapes alone are
    ambiguous when C == d): pytorch-metric-learning's ``proxies`` are ``(C, d)``, the softmax
    family's ``W`` (NormSoftmax, ArcFace, CosFace) ``(d, C)``."""
    for key, weight in state_dict.items():
        if key.startswith("criterion.") and key.endswith((".proxies", ".W")):
            return int(weight.shape[0] if key.endswith(".proxies") else weight.shape[1])
    return None


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto``/None -> cuda when available, else cpu; anything else as ``torch.device``."""
    import torch

    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)

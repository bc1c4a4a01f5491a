"""The synthesis callback: plugs a synthesiser (SEE, EE, Symmetrical) into training."""

from __future__ import annotations

from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig


def build_synthesis_callback(cfg: DictConfig) -> Callback | None:
    """The callback for ``see.enabled=true`` or ``synthesis=...``; ``None`` for the plain loss."""
    see = cfg.get("see")
    if (see is not None and see.get("enabled", False)) or cfg.get("synthesis") is not None:
        raise NotImplementedError("synthesis callbacks land with the SEE issue")
    return None

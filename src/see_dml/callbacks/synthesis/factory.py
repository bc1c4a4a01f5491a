"""Which synthesiser a config asks for, built from its node."""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig

from see_dml.callbacks.synthesis.base import SynthesisCallback
from see_dml.runtime.config import to_dict


def synthesis_node(cfg: DictConfig) -> DictConfig | None:
    """The one synthesiser's config node: ``see`` when ``see.enabled``, else ``synthesis``.

    ``validate_config`` rejects asking for both; this only picks.
    """
    see = cfg.get("see")
    if see is not None and see.get("enabled", False):
        return see
    return cfg.get("synthesis")


def build_synthesis_callback(cfg: DictConfig) -> SynthesisCallback | None:
    """Instantiate the synthesiser's node (its ``_target_``); ``None`` for the plain loss."""
    node = synthesis_node(cfg)
    if node is None:
        return None
    kwargs = to_dict(node)
    kwargs.pop("enabled", None)  # the SEE switch, not an argument
    return instantiate(kwargs, seed=cfg.seed)

"""The synthesis callbacks: plug SEE, EE, Symmetrical or Proxy Synthesis into training.

The module never knows which synthesiser is active. A callback registers itself as an
*embedding hook* of :class:`~see_dml.module.DMLModule`; every training step it receives the
(DDP-gathered) embeddings and labels, decides with its schedule what to synthesise, calls a
pure function from :mod:`see_dml.synthesis`, and returns loss terms (``loss/...``) and
statistics (``<name>/...``) for the logger. A hook that returns ``loss/metric`` *replaces*
the plain loss (EE, Symmetrical and Proxy Synthesis are the loss); SEE adds
``loss/synthetic``. Each synthesiser is one config node with a ``_target_`` (``conf/see``,
``conf/synthesis/*.yaml``): a new synthesiser is a class in this package and one YAML
file; its contract is :mod:`see_dml.callbacks.synthesis.base`.

How the synthetic points enter each kind of loss is written out, with every departure from
the authors' code, in ``docs/method.md``.
"""

from see_dml.callbacks.synthesis.base import IndicesTuple, SynthesisCallback, split_mixed_tuples
from see_dml.callbacks.synthesis.factory import build_synthesis_callback, synthesis_node
from see_dml.callbacks.synthesis.hard_pairs import (
    EmbeddingExpansionCallback,
    HardPairSynthesisCallback,
    SymmetricalSynthesisCallback,
)
from see_dml.callbacks.synthesis.proxies import ProxySynthesisCallback
from see_dml.callbacks.synthesis.spherical import SEECallback

# the configs' _target_ names (conf/see, conf/synthesis, and old runs' config.yaml) are these
__all__ = [
    "EmbeddingExpansionCallback",
    "HardPairSynthesisCallback",
    "IndicesTuple",
    "ProxySynthesisCallback",
    "SEECallback",
    "SymmetricalSynthesisCallback",
    "SynthesisCallback",
    "build_synthesis_callback",
    "split_mixed_tuples",
    "synthesis_node",
]

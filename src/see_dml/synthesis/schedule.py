"""Which samples SEE expands, and how many, as pure functions of the epoch.

Default ("top-fraction"): expand the ``round(B·p(e))`` samples closest to their own class
axis, with ``p(e)`` rising on a cosine ramp from ``p_min`` to ``p_max`` that ends at epoch
``ramp_end`` (200) for long runs. Second mode ("threshold"): expand every sample whose cosine
to its axis is at least ``t(e)``, with ``t`` decaying on the same cosine shape over the whole
run (the authors apply the 200-epoch cap to the top-fraction ramp only).

Epochs may be fractional: a run trained by steps (``trainer.max_epochs=-1``) passes
``step / steps_per_epoch`` and ``max_steps / steps_per_epoch`` (see ``docs/method.md``).
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "expansion_fraction",
    "expansion_threshold",
    "select_threshold",
    "select_top_fraction",
]


def _ramp(epoch: float, max_epochs: float, ramp_end: float | None) -> float:
    """Cosine ramp weight ``(cos(π·min(e, R)/min(E, R)) + 1)/2``: 1 at epoch 0, 0 at the end.

    ``ramp_end=None`` means no cap (``R = ∞``). Epochs may be fractional (training by steps).
    """
    end = math.inf if ramp_end is None else ramp_end
    if not max_epochs > 0 or not end > 0:
        raise ValueError(f"need max_epochs > 0 and ramp_end > 0, got {max_epochs}, {ramp_end}")
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    # Clamped at 1 so epochs past max_epochs stay at the end value instead of ramping back.
    progress = min(min(epoch, end) / min(max_epochs, end), 1.0)
    return (math.cos(math.pi * progress) + 1.0) / 2.0


def expansion_fraction(
    epoch: float,
    max_epochs: float,
    p_min: float,
    p_max: float,
    ramp_end: float | None = 200,
    scheduled: bool = True,
) -> float:
    """Fraction ``p(e)`` of the batch to expand (authors' top-fraction schedule).

    ``p(e) = p_max − (p_max − p_min)·(cos(π·min(e, R)/min(E, R)) + 1)/2`` with ``E =
    max_epochs`` and ``R = ramp_end``: ``p(0) = p_min``, ``p(E) = p_max`` (epochs are
    0-based, so the last trained epoch ``E − 1`` is a hair below ``p_max``, as in the
    authors' code), and from epoch ``R`` on it stays at ``p_max``. ``scheduled=False`` gives
    the constant ``p_max``.
    """
    if not 0.0 <= p_min <= p_max <= 1.0:
        raise ValueError(f"need 0 <= p_min <= p_max <= 1, got p_min={p_min}, p_max={p_max}")
    if not scheduled:
        return p_max
    return p_max - (p_max - p_min) * _ramp(epoch, max_epochs, ramp_end)


def expansion_threshold(
    epoch: float,
    max_epochs: float,
    t_start: float,
    t_end: float,
    floor: float,
    ramp_end: float | None = None,
) -> float:
    """Cosine threshold ``t(e)`` for the threshold mode, decaying from ``t_start`` to ``t_end``.

    ``t(e) = max(floor, t_end + (t_start − t_end)·(cos(π·e/E) + 1)/2)``: the same cosine shape
    as :func:`expansion_fraction`, so more samples pass as training goes on; ``floor`` is the
    lowest cosine a sample may have and still be expanded. As in the authors' code the decay
    spans the whole run; ``ramp_end`` (default ``None``: no cap) caps it like the fraction's.
    """
    return max(floor, t_end + (t_start - t_end) * _ramp(epoch, max_epochs, ramp_end))


def select_top_fraction(cos_to_axis: torch.Tensor, fraction: float) -> torch.Tensor:
    """Indices of the ``round(B·fraction)`` samples with the highest cosine to their axis.

    Args:
        cos_to_axis: ``(B,)`` cosine of each sample to its class axis.
        fraction: in ``[0, 1]``; the count is rounded half up (``B·fraction = 2.5`` → 3).

    Returns:
        ``(k,)`` int64 indices, highest cosine first; ties go to the lower index.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    b = cos_to_axis.shape[0]
    # The tiny epsilon keeps e.g. 180 * 0.4 = 71.99999... from rounding down.
    k = min(b, math.floor(b * fraction + 0.5 + 1e-9))
    order = torch.sort(cos_to_axis, descending=True, stable=True).indices
    return order[:k]


def select_threshold(cos_to_axis: torch.Tensor, threshold: float) -> torch.Tensor:
    """Indices (ascending) of the samples with ``cos_to_axis >= threshold``; ``(B,)`` → ``(k,)``."""
    return torch.nonzero(cos_to_axis >= threshold).flatten()

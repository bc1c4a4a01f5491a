"""Selection schedule (cosine ramp of the expanded fraction / threshold) and selection."""

from __future__ import annotations

import math

import pytest
import torch

from see_dml.synthesis import (
    expansion_fraction,
    expansion_threshold,
    select_threshold,
    select_top_fraction,
)


def test_fraction_endpoints_match_the_method_doc() -> None:
    assert expansion_fraction(0, 100, 0.0, 0.4) == 0.0
    assert expansion_fraction(100, 100, 0.0, 0.4) == pytest.approx(0.4, abs=1e-12)
    assert expansion_fraction(50, 100, 0.0, 0.4) == pytest.approx(0.2, abs=1e-12)
    # Batch 180, n = 8: 0 / 288 / 576 synthetic points at start / mid / last epoch.
    counts = [round(180 * expansion_fraction(e, 100, 0.0, 0.4)) * 8 for e in (0, 50, 99)]
    assert counts == [0, 288, 576]
    assert expansion_fraction(0, 100, 0.04, 0.4) == pytest.approx(0.04, abs=1e-12)


@pytest.mark.parametrize("max_epochs", [1, 10, 100, 300])
def test_fraction_is_monotone_non_decreasing(max_epochs: int) -> None:
    values = [expansion_fraction(e, max_epochs, 0.04, 0.4) for e in range(max_epochs + 50)]
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert values[0] == pytest.approx(0.04) and values[-1] == pytest.approx(0.4)


def test_ramp_ends_at_200_for_long_runs() -> None:
    assert expansion_fraction(199, 300, 0.0, 0.4) < 0.4
    assert all(expansion_fraction(e, 300, 0.0, 0.4) == pytest.approx(0.4) for e in (200, 250, 299))
    assert expansion_fraction(100, 300, 0.0, 0.4) == pytest.approx(0.2)


def test_fraction_unscheduled_and_invalid() -> None:
    assert expansion_fraction(0, 100, 0.04, 0.4, scheduled=False) == 0.4
    with pytest.raises(ValueError, match="p_min"):
        expansion_fraction(0, 100, 0.5, 0.4)
    with pytest.raises(ValueError, match="max_epochs"):
        expansion_fraction(0, 0, 0.0, 0.4)


def test_threshold_decays_and_is_floored() -> None:
    values = [expansion_threshold(e, 100, 0.4, 0.0, floor=-1.0) for e in range(101)]
    assert values[0] == pytest.approx(0.4) and values[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(b <= a for a, b in zip(values, values[1:]))
    half = 0.2 * (math.cos(math.pi * 0.5) + 1)
    assert values[50] == pytest.approx(half)
    assert expansion_threshold(100, 100, 0.4, 0.0, floor=0.1) == 0.1
    assert expansion_threshold(0, 100, 0.4, 0.0, floor=0.1) == pytest.approx(0.4)


def test_threshold_decays_over_the_whole_run_as_the_authors() -> None:
    """The authors cap the top-fraction ramp at epoch 200, not the threshold decay."""
    t = [expansion_threshold(e, 300, 0.4, 0.0, floor=-1.0) for e in (200, 250, 300)]
    assert t[0] == pytest.approx(0.2 * (math.cos(math.pi * 200 / 300) + 1))  # 0.1, not 0.0
    assert t[0] > t[1] > t[2] == pytest.approx(0.0, abs=1e-12)
    # the cap is still there when asked for
    assert expansion_threshold(200, 300, 0.4, 0.0, floor=-1.0, ramp_end=200) == pytest.approx(
        0.0, abs=1e-12)


def test_fractional_epochs_follow_the_same_curve() -> None:
    """Training by steps passes epochs as step / steps_per_epoch."""
    assert expansion_fraction(12.5, 25.0, 0.0, 0.4) == pytest.approx(0.2)
    assert expansion_fraction(2.5, 10, 0.0, 0.4) == pytest.approx(
        0.4 - 0.2 * (math.cos(math.pi / 4) + 1))
    assert expansion_fraction(250.0, 300.0, 0.0, 0.4) == pytest.approx(0.4)  # the cap


def test_select_top_fraction_picks_highest_with_stable_ties() -> None:
    cos = torch.tensor([0.1, 0.9, 0.5, 0.9, -0.3, 0.5])
    assert torch.equal(select_top_fraction(cos, 0.5), torch.tensor([1, 3, 2]))
    assert torch.equal(select_top_fraction(cos, 4 / 6), torch.tensor([1, 3, 2, 5]))
    assert select_top_fraction(cos, 0.0).numel() == 0
    assert torch.equal(select_top_fraction(cos, 1.0), torch.tensor([1, 3, 2, 5, 0, 4]))
    # round(B·p) half up: 4 · 0.375 = 1.5 -> 2; 180 · 0.4 = 72.
    assert select_top_fraction(cos[:4], 0.375).numel() == 2
    assert select_top_fraction(torch.rand(180), 0.4).numel() == 72
    with pytest.raises(ValueError, match="fraction"):
        select_top_fraction(cos, 1.5)


def test_select_threshold() -> None:
    cos = torch.tensor([0.1, 0.9, 0.5, 0.9, -0.3, 0.5])
    assert torch.equal(select_threshold(cos, 0.5), torch.tensor([1, 2, 3, 5]))
    assert select_threshold(cos, 0.95).numel() == 0
    assert torch.equal(select_threshold(cos, -1.0), torch.arange(6))

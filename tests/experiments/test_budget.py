"""experiments/budget.py: a paper table's images per run, counted by hand from the official
split sizes, and GPU hours only from a given rate."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("budget", REPO / "experiments" / "budget.py")
budget = importlib.util.module_from_spec(_spec)
sys.modules["budget"] = budget  # its dataclass looks itself up there
_spec.loader.exec_module(budget)


def test_resnet50_table_counts_match_a_hand_count(capsys):
    costs = {c.setting: c for c in budget.table_costs("resnet50")}
    assert sorted(costs) == ["resnet50_512_cars", "resnet50_512_cub", "resnet50_512_inshop",
                             "resnet50_512_sop"]
    cub = costs["resnet50_512_cub"]
    # CUB: 5,864 training images, 10% held out (586), 60 epochs; test 5,924 images every
    # epoch (test_every_epoch) and twice at the end
    assert (cub.runs, cub.gpus, cub.epochs) == (6, 1, 60)
    assert cub.train_images == (5864 - 586) * 60 == 316_680
    assert cub.eval_images == (586 + 5924) * 60 + 2 * 5924 == 402_448
    inshop = costs["resnet50_512_inshop"]  # the test split is query + gallery
    assert inshop.eval_images == (2588 + 14218 + 12612) * 60 + 2 * (14218 + 12612)
    assert cub.gpu_hours(None) is None
    # 6 runs x 719,128 images at 1,000 images/s: 1.20 GPU hours
    assert cub.gpu_hours(1000.0) == pytest.approx(6 * 719_128 / 1000 / 3600)
    budget.main(["resnet50", "--images-per-s", "resnet50=1000"])
    out = capsys.readouterr().out
    assert "| resnet50_512_cub | 6 | 1 | 60 | 0.32 | 0.40 | 1.2 |" in out
    total = sum(6 * (c.train_images + c.eval_images) for c in costs.values()) / 1000 / 3600
    assert out.splitlines()[-1].endswith(f"| {total:,.1f} |")
    budget.main(["vit128"])  # no rate for the ViTs: said, not guessed
    out = capsys.readouterr().out
    assert "| deit_small_128_sop | 6 | 2 | 150 |" in out
    assert out.count("not measured") == 13  # 12 settings and the total


def test_bad_arguments_name_what_is_wrong():
    with pytest.raises(SystemExit, match="BACKBONE=N"):
        budget.parse_rates(["resnet50"])
    with pytest.raises(SystemExit, match="BACKBONE=N"):
        budget.parse_rates(["resnet50=-3"])
    with pytest.raises(SystemExit):
        budget.main(["table_that_does_not_exist"])

"""experiments/budget.py: a paper table's images per run, counted by hand from the official
split sizes, and GPU hours only from a given rate."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("budget", REPO / "experiments" / "budget.py")
budget = importlib.util.module_from_spec(_spec)
sys.modules["budget"] = budget  # its dataclass looks itself up there
_spec.loader.exec_module(budget)


@pytest.mark.slow
def test_resnet50_table_counts_match_a_hand_count(capsys):
    costs = {c.setting: c for c in budget.table_costs("resnet50")}
    assert sorted(costs) == ["resnet50_512_cars", "resnet50_512_cub", "resnet50_512_inshop",
                             "resnet50_512_sop"]
    cub = costs["resnet50_512_cub"]
    # CUB under the authors' protocol (the settings' default): all 5,864 training images, no
    # validation classes, 60 epochs; test 5,924 images every epoch and twice at the end
    assert (cub.runs, cub.gpus, cub.epochs) == (6, 1, 60)
    assert cub.train_images == 5864 * 60 == 351_840
    assert cub.eval_images == 5924 * 60 + 2 * 5924 == 367_288
    inshop = costs["resnet50_512_inshop"]  # the test split is query + gallery
    assert inshop.eval_images == (14218 + 12612) * 60 + 2 * (14218 + 12612)
    assert cub.gpu_hours(None) is None
    # 6 runs x 719,128 images at 1,000 images/s: 1.20 GPU hours
    assert cub.gpu_hours(1000.0) == pytest.approx(6 * 719_128 / 1000 / 3600)
    budget.main(["resnet50", "--images-per-s", "resnet50=1000"])
    out = capsys.readouterr().out
    assert "| resnet50_512_cub | 6 | 1 | 60 | 0.35 | 0.37 | 1.2 |" in out
    total = sum(6 * (c.train_images + c.eval_images) for c in costs.values()) / 1000 / 3600
    assert out.splitlines()[-1].endswith(f"| {total:,.1f} |")
    # the ViT recipe's SOP: the test split scored as the authors' script does, every 5 epochs
    # from epoch 40 of 150 (40, 45, ..., 145: 22 epochs); no validation classes
    sop = {c.setting: c for c in budget.table_costs("vit128")}["deit_small_128_sop"]
    assert sop.epochs == 150
    assert sop.eval_images == 60502 * 22 + 2 * 60502 == 1_452_048
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


@pytest.mark.slow
def test_rates_file_gives_the_hours_and_images_per_s_wins(tmp_path, capsys):
    rates = tmp_path / "throughput.json"
    rates.write_text(json.dumps({"device": "NVIDIA Test GPU", "details": [], "rates": {
        "resnet50": 500, "deit_small_distilled_patch16_224": 1000.0}}))
    budget.main(["resnet50"])  # without the file: no line above the tables, as before
    assert capsys.readouterr().out.startswith("### table_resnet50\n")
    budget.main(["resnet50", "--rates-file", str(rates)])
    out = capsys.readouterr().out
    first = out.splitlines()[0]
    assert str(rates) in first and "measured on NVIDIA Test GPU" in first
    assert "--images-per-s" not in first and "not GPU hours" not in first
    # CUB, 6 runs x (351,840 trained + 367,288 evaluated) images at 500 images/s: 2.40 h
    assert round(6 * (351_840 + 367_288) / 500 / 3600, 3) == 2.397
    assert "| resnet50_512_cub | 6 | 1 | 60 | 0.35 | 0.37 | 2.4 |" in out
    # --images-per-s wins over the file for its backbone (1,000 images/s: 1.20 h)
    budget.main(["resnet50", "--rates-file", str(rates), "--images-per-s", "resnet50=1000"])
    out = capsys.readouterr().out
    assert "| resnet50_512_cub | 6 | 1 | 60 | 0.35 | 0.37 | 1.2 |" in out
    assert "Given by --images-per-s instead: resnet50." in out.splitlines()[0]
    # the ViT table: DeiT-S from the file, the two backbones it lacks stay "not measured"
    budget.main(["vit128", "--rates-file", str(rates)])
    out = capsys.readouterr().out
    # CUB, 100 epochs: 5,864 x 100 trained, 5,924 x 99 (from the end of the warm-up) + 2 x
    # 5,924 evaluated = 1,184,724 images a run, 6 runs at 1,000 images/s: 1.97 h
    run = 5864 * 100 + 5924 * 99 + 2 * 5924
    assert run == 1_184_724 and round(6 * run / 1000 / 3600, 3) == 1.975
    assert "| deit_small_128_cub | 6 | 2 | 100 | 0.59 | 0.60 | 2.0 |" in out
    assert out.count("not measured") == 9  # 8 ViT-S settings and the total


def test_rates_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"device": "cpu", "rates": {"resnet50": 0}}))
    with pytest.raises(SystemExit, match="bad.json.*resnet50.*> 0"):
        budget.main(["resnet50", "--rates-file", str(bad)])
    bad.write_text(json.dumps([{"resnet50": 10}]))
    with pytest.raises(SystemExit, match='bad.json has no "rates"'):
        budget.main(["resnet50", "--rates-file", str(bad)])
    with pytest.raises(SystemExit, match="missing.json"):
        budget.main(["resnet50", "--rates-file", str(tmp_path / "missing.json")])

"""The paper kit: every published setting of conf/experiment/paper composes with its recipe's
per-dataset values, SEE off and on differ in nothing else, experiments/published.yaml has a
number for each, each backbone family trains on a fixture, and make_table prints the
published column."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import yaml
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from dataset_fixtures import make_fixture
from see_dml.config import CONFIG_DIR, flatten, validate_config
from see_dml.train import train

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("make_table", REPO / "experiments" / "make_table.py")
make_table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_table)

TABLES = {"resnet50": 24, "vit128": 72, "vit384": 72}  # runs: settings x SEE off/on x 3 seeds
# docs/method.md, "Training recipe": (epochs, warm-up epochs, head lr x, weight decay, lr)
VIT = {"CUB200": (100, 1, 1, 1e-2, 1e-5), "Cars196": (100, 1, 1, 1e-2, 1e-5),
       "StanfordOnlineProducts": (150, 5, 100, 1e-4, 1e-5), "InShop": (300, 5, 100, 1e-4, 1e-5)}
# Proxy-Anchor's README: (epochs, warm-up, frozen BN, lr, StepLR step, gamma)
RESNET = {"CUB200": (60, 5, True, 1e-4, 5, 0.5), "Cars196": (60, 5, True, 1e-4, 10, 0.5),
          "StanfordOnlineProducts": (60, 5, False, 6e-4, 20, 0.25),
          "InShop": (60, 5, False, 6e-4, 20, 0.25)}


def _jobs(table: str) -> list[list[str]]:
    """The job overrides Hydra's basic sweeper makes of the table's hydra.sweeper.params."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", [f"experiment=paper/{table}"], return_hydra_config=True)
    params = [f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()]
    parsed = OverridesParser.create().parse_overrides(params)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


@pytest.mark.parametrize("table", sorted(TABLES))
def test_every_setting_composes_with_its_dataset_values_and_see_is_the_only_difference(
        make_cfg, table):
    jobs = _jobs(table)
    assert len(jobs) == TABLES[table]
    published = make_table.load_published(REPO / "experiments" / "published.yaml")
    settings = set()
    for job in jobs:
        if "seed=0" not in job or "see.enabled=True" not in job:  # how the sweeper writes it
            continue
        on = make_cfg(f"experiment=paper/{table}", *job, fast=False)
        off = make_cfg(f"experiment=paper/{table}", *[o.replace("=True", "=False")
                                                      for o in job], fast=False)
        validate_config(on)
        assert on.see.enabled and not off.see.enabled
        flat_on, flat_off = (flatten(OmegaConf.to_container(c)) for c in (on, off))
        assert {k for k in flat_on if flat_on[k] != flat_off.get(k)} == {"see.enabled"}
        dataset = on.dataset._target_.rsplit(".", 1)[-1]
        if table == "resnet50":
            assert (on.model.backbone.name, on.model.embed_dim) == ("resnet50", 512)
            assert (on.trainer.max_epochs, on.model.warmup_epochs, on.model.freeze_bn,
                    on.optimizer.lr, on.scheduler.step_size, on.scheduler.gamma
                    ) == RESNET[dataset]
        else:
            assert on.model.embed_dim == int(table[3:])
            assert on.model.head.pooling == "cls" and on.model.head.layer_norm
            assert (on.trainer.max_epochs, on.model.warmup_epochs, on.model.head_lr_mult,
                    on.optimizer.weight_decay, on.optimizer.lr) == VIT[dataset]
        # every SEE setting has its published number, found as make_table finds it
        row = dict(zip(make_table.KEY_NAMES,
                       make_table.named_columns(OmegaConf.to_container(on))))
        match = make_table._published_entry(row, published)
        assert match is not None and match[1], row
        settings.add((row["backbone"], row["dataset"]))
    assert len(settings) == TABLES[table] // 6  # each (backbone, dataset) of the table, once


# --- one fast-dev-run per backbone family, on a fixture CUB with a tiny timm backbone ---

TINY = {"resnet50": ["model.backbone.name=resnet18", "data.transforms.image_size=32",
                     "data.transforms.resize=36"],
        "vit128": ["model.backbone.name=test_vit", "data.transforms.image_size=160",
                   "data.transforms.resize=160"]}


# a timm ResNet-18 at 32 px and timm's test_vit at 160 px, one batch each: 8-13 s a case on
# 2 busy cores
@pytest.mark.parametrize("table", sorted(TINY))
def test_each_backbone_family_trains_one_batch_on_a_fixture(make_cfg, tmp_path, table):
    data_dir = tmp_path / "data"
    make_fixture("cub", data_dir, n_classes=6, per_class=4)
    cfg = make_cfg(f"experiment=paper/{table}", *TINY[table], "model.backbone.pretrained=false",
                   f"paths.data_dir={data_dir}", "dataset.strict_counts=false",
                   "dataset.val_fraction=0.2", "see.p_min=0.4", "see.n_points=4",
                   "+trainer.fast_dev_run=true", "trainer.devices=1", "trainer.strategy=auto",
                   "trainer.precision=32-true", "data.num_workers=0", "data.pin_memory=false",
                   "data.batch_size=8", "data.m_per_class=2", "data.eval_batch_size=16")
    assert cfg.see.enabled and cfg.loss.name == "proxy_anchor"
    metrics = train(cfg)
    assert 0.0 <= metrics["test/recall@1"] <= 1.0
    assert math.isfinite(metrics["test/map@r"])


# --- make_table.py: the published column and the paired SEE - no-SEE difference ---

def _run(root: Path, name: str, seed: int, recall: float, *, see: bool,
         backbone: str = "deit_small_patch16_224", dim: int = 128) -> None:
    run_dir = root / name
    run_dir.mkdir(parents=True)
    cfg = {"seed": seed, "paths": {"run_dir": str(run_dir)},
           "dataset": {"_target_": "see_dml.data.cub.CUB200", "seed": seed},
           "model": {"backbone": {"name": backbone}, "embed_dim": dim},
           "loss": {"name": "proxy_anchor"}, "see": {"enabled": see, "n_points": 8},
           "synthesis": None, "trainer": {"max_epochs": 100}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run_dir / "metrics.json").write_text(json.dumps({"test/recall@1": recall,
                                                      "test/map@r": recall / 2}))


def test_make_table_prints_published_r1_and_paired_see_difference(tmp_path, capsys):
    # DeiT-S/128 on CUB, two seeds without and with SEE; ResNet-50/512 without SEE
    for seed, (plain, see) in enumerate([(0.70, 0.74), (0.72, 0.77)]):
        _run(tmp_path, f"none{seed}", seed, plain, see=False)
        _run(tmp_path, f"see{seed}", seed, see, see=True)
    _run(tmp_path, "r50", 0, 0.68, see=False, backbone="resnet50", dim=512)
    make_table.main([str(tmp_path)])
    lines = capsys.readouterr().out.splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[header.index("R@1") + 1:header.index("R@1") + 3] == ["R@1 paper",
                                                                       "ΔR@1 paper"]
    rows = {(cells[1], cells[4]): cells for cells in
            ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:5])}
    col = {name: header.index(name) for name in ("R@1", "R@1 paper", "ΔR@1 paper", "ΔR@1")}
    see = rows[("deit_small_patch16_224", "SEE")]
    # ours 74 and 77: mean 75.50; published 75.1 (Le & Woo): +0.40
    assert see[col["R@1"]] == "75.50 ± 2.12"
    assert (see[col["R@1 paper"]], see[col["ΔR@1 paper"]]) == ("75.1", "+0.40")
    # SEE - none per seed: 4 and 5 points; mean 4.5, sd 0.7071, t(0.975, 1) = 12.7062:
    # half width 12.7062 * 0.7071 / sqrt(2) = 6.353
    assert see[col["ΔR@1"]] == "+4.50 [-1.85, +10.85]"
    plain = rows[("deit_small_patch16_224", "none")]  # no published row without SEE
    assert (plain[col["R@1 paper"]], plain[col["ΔR@1 paper"]]) == ("–", "–")
    r50 = rows[("resnet50", "none")]  # Proxy-Anchor's BN-Inception row stands in, named
    assert (r50[col["R@1 paper"]], r50[col["ΔR@1 paper"]]) == ("68.4 (bn_inception)", "-0.40")
    notes = "\n".join(lines[5:])
    assert "10.1007/978-981-97-2253-2_11" in notes and "arxiv.org/abs/2003.13911" in notes
    make_table.main([str(tmp_path), "--published", "none"])
    assert "R@1 paper" not in capsys.readouterr().out

"""The paper kit: every published setting has its file in conf/experiment/paper and is swept
by one table; it composes with its recipe's per-dataset values, SEE off and on differ in
nothing else, src/see_dml/reporting/published.yaml has a number for it, it trains one batch on a
fixture of its dataset, and make_table prints the published column."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from helpers.dataset_fixtures import make_fixture
from see_dml.runtime.config import CONFIG_DIR, compose, flatten, sweep_jobs
from see_dml.runtime.errors import ConfigError
from see_dml.train import train
from see_dml.training.config_checks import validate_config

REPO = Path(__file__).resolve().parents[2]
from see_dml.reporting import tables as make_table  # noqa: E402

PAPER = CONFIG_DIR / "experiment" / "paper"
#: the published settings, one file each: <model>_<dim>_<dataset>
SETTINGS = sorted(p.stem for p in PAPER.glob("*.yaml") if not p.stem.startswith("table_"))
TABLES = {"resnet50": 4, "vit128": 12, "vit384": 12}  # settings a table sweeps
MODELS = {"resnet50": "resnet50.tv_in1k", "deit_small": "deit_small_distilled_patch16_224",
          "vit_small_dino": "vit_small_patch16_224.dino", "vit_small": "vit_small_patch16_224"}
DATASETS = {"cub": "CUB200", "cars": "Cars196", "sop": "StanfordOnlineProducts",
            "inshop": "InShop"}
# docs/method.md, "Training recipe": (epochs, warm-up epochs, head lr x, weight decay, lr)
VIT = {"CUB200": (100, 1, 1, 1e-2, 1e-5), "Cars196": (100, 1, 1, 1e-2, 1e-5),
       "StanfordOnlineProducts": (150, 5, 100, 1e-4, 1e-5), "InShop": (300, 5, 100, 1e-4, 1e-5)}
TEST_EPOCHS = {"CUB200": (1, 1), "Cars196": (1, 1), "StanfordOnlineProducts": (40, 5),
               "InShop": (40, 1)}
# Proxy-Anchor's README: (epochs, warm-up, frozen BN, lr, StepLR step, gamma)
RESNET = {"CUB200": (60, 5, True, 1e-4, 5, 0.5), "Cars196": (60, 5, True, 1e-4, 10, 0.5),
          "StanfordOnlineProducts": (60, 5, False, 6e-4, 20, 0.25),
          "InShop": (60, 5, False, 6e-4, 20, 0.25)}


def _split(setting: str) -> tuple[str, int, str]:
    """``vit_small_dino_384_sop`` -> (``vit_small_dino``, 384, ``sop``)."""
    model, dim, dataset = setting.rsplit("_", 2)
    return model, int(dim), dataset


def _jobs(table: str) -> list[list[str]]:
    """The job overrides Hydra's basic sweeper makes of the table's hydra.sweeper.params."""
    return sweep_jobs([f"experiment=paper/table_{table}"])


def _flat(cfg) -> dict:
    return flatten(OmegaConf.to_container(cfg))


def test_every_published_setting_has_one_file_and_one_table():
    published = yaml.safe_load(make_table.PUBLISHED_FILE.read_text())
    model_of = {timm: name for name, timm in MODELS.items()}
    expected = {f"{model_of[entry['backbone']]}_{entry['dim']}_{short}"
                for entry in published["results"] if entry["source"] == "see"
                for short in DATASETS}
    assert len(expected) == 28 and set(SETTINGS) == expected
    swept = []
    for table, n in TABLES.items():
        jobs = _jobs(table)
        assert len(jobs) == n * 2 * 3  # settings x SEE off/on x 3 seeds
        names = {o.split("=", 1)[1] for job in jobs for o in job
                 if o.startswith("+experiment/paper@_global_=")}
        assert len(names) == n
        swept += names
    assert sorted(swept) == SETTINGS  # each setting in exactly one table


@pytest.mark.parametrize("table", sorted(TABLES))
def test_slurm_asks_for_the_gpus_each_job_trains_on(make_cfg, table):
    """The launcher is configured once for the whole sweep, from the table's config: it must
    request the GPUs (one DDP task each) that every job's recipe sets in trainer.devices."""
    sweep = compose([f"experiment=paper/table_{table}", "hydra/launcher=slurm"], hydra=True)
    launcher = sweep.hydra.launcher
    job = _jobs(table)[0]
    devices = make_cfg(f"experiment=paper/table_{table}", *job, fast=False).trainer.devices
    assert devices == (1 if table == "resnet50" else 2)
    assert launcher.gpus_per_node == launcher.tasks_per_node == devices


@pytest.mark.parametrize("setting", SETTINGS)
def test_setting_has_its_dataset_values_and_see_is_the_only_difference(make_cfg, setting):
    model, dim, short = _split(setting)
    on = make_cfg(f"experiment=paper/{setting}", fast=False)
    off = make_cfg(f"experiment=paper/{setting}", "see.enabled=false", fast=False)
    validate_config(on)
    validate_config(off)
    assert on.see.enabled and not off.see.enabled
    flat_on, flat_off = _flat(on), _flat(off)
    assert {k for k in flat_on if flat_on[k] != flat_off.get(k)} == {"see.enabled"}
    dataset = on.dataset._target_.rsplit(".", 1)[-1]
    assert dataset == DATASETS[short] == on.recipe_dataset
    assert (on.model.backbone.name, on.model.embed_dim) == (MODELS[model], dim)
    if model == "resnet50":
        assert (on.trainer.max_epochs, on.model.warmup_epochs, on.model.freeze_bn,
                on.optimizer.lr, on.scheduler.step_size, on.scheduler.gamma) == RESNET[dataset]
        # Proxy-Anchor's train.py: clip_grad_value_(..., 10) on the model and the proxies;
        # its transforms leave torchvision's default, PIL's bilinear interpolation
        assert (on.trainer.gradient_clip_val, on.trainer.gradient_clip_algorithm) == (10, "value")
        assert on.data.transforms.interpolation == "bilinear"
        assert on.data.batch_size == 120 and on.data.sampler == "random"
    else:
        # the authors' code: the class token; for the distilled DeiT-S the class token in
        # training and the mean of class and distillation tokens in eval (timm 0.4.12);
        # the patch embedding stays frozen
        assert on.model.head.pooling == ("distilled" if model == "deit_small" else "cls")
        assert on.model.head.layer_norm and list(on.model.backbone.frozen) == ["patch_embed"]
        assert on.optimizer.eps == 1e-4  # the authors' AdamW eps under fp16
        assert (on.trainer.max_epochs, on.model.warmup_epochs, on.model.head_lr_mult,
                on.optimizer.weight_decay, on.optimizer.lr) == VIT[dataset]
    # the best-on-test number over the epochs the authors' scripts evaluate: Proxy-Anchor's
    # every epoch; SEE's from the warm-up's end, on SOP and In-Shop from 40, on SOP every 5
    assert on.test_every_epoch
    assert (on.test_epochs.start, on.test_epochs.every) == (
        (0, 1) if model == "resnet50" else TEST_EPOCHS[dataset])
    # the table's job is this file, nothing else: the same config
    table = "resnet50" if model == "resnet50" else f"vit{dim}"
    job = make_cfg(f"experiment=paper/table_{table}", f"+experiment/paper@_global_={setting}",
                   fast=False)
    assert _flat(job) == flat_on
    # its published number, found as make_table finds it
    published = make_table.load_published(make_table.PUBLISHED_FILE)
    row = dict(zip(make_table.KEY_NAMES,
                   make_table.named_columns(OmegaConf.to_container(on))))
    match = make_table.published_entry(row, published)
    assert match is not None and match[1], row


def test_a_table_alone_and_another_dataset_fail_before_training(make_cfg):
    with pytest.raises(ConfigError, match="only lists a sweep.*-m"):
        validate_config(make_cfg("experiment=paper/table_vit128", fast=False))
    cfg = make_cfg("experiment=paper/deit_small_128_cub", "dataset=sop", fast=False)
    with pytest.raises(ConfigError, match="for CUB200 .*chose StanfordOnlineProducts"):
        validate_config(cfg)
    cfg = make_cfg("experiment=paper/deit_small_128_cub", "dataset=sop", "recipe_dataset=null",
                   fast=False)
    validate_config(cfg)  # on purpose: CUB's values on SOP
    assert cfg.trainer.max_epochs == 100


# --- every setting fast-dev-runs on a fixture of its dataset with a tiny timm backbone ---

TINY = {"resnet50": ["model.backbone.name=resnet18", "data.transforms.image_size=32",
                     "data.transforms.resize=36"],
        "vit": ["model.backbone.name=test_vit", "data.transforms.image_size=160",
                "data.transforms.resize=160"]}


@pytest.fixture(scope="module")
def fixture_data(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("paper_data")
    for short in ("cub", "cars", "sop"):
        make_fixture(short, data_dir, n_classes=6, per_class=4)
    make_fixture("inshop", data_dir, n_train=6, n_test=4, per_item=4)
    return data_dir


def _fast_dev_run(make_cfg, setting: str, data_dir: Path) -> dict:
    model, _, _ = _split(setting)
    # test_vit has no distillation token: DeiT's pooling=distilled reads the class token
    # here (the distilled pooling on a real distilled DeiT: tests/models/test_models.py)
    deit = ["model.head.pooling=cls"] if model == "deit_small" else []
    cfg = make_cfg(f"experiment=paper/{setting}", *TINY["resnet50" if model == "resnet50"
                                                        else "vit"], *deit,
                   "model.backbone.pretrained=false", f"paths.data_dir={data_dir}",
                   "dataset.strict_counts=false",
                   "see.p_min=0.4", "see.n_points=4", "+trainer.fast_dev_run=true",
                   "trainer.devices=1", "trainer.strategy=auto", "trainer.precision=32-true",
                   "data.num_workers=0", "data.pin_memory=false", "data.batch_size=8",
                   "data.m_per_class=2", "data.eval_batch_size=16")
    assert cfg.see.enabled and cfg.loss.name == "proxy_anchor"
    return train(cfg)


#: The settings the default suite trains: each backbone and each dataset once. The others
#: (the same code on other combinations) train in the slow suite, which CI runs too.
REPRESENTATIVE = {"resnet50_512_cub", "vit_small_128_cars", "deit_small_384_sop",
                  "vit_small_dino_128_inshop"}


# one batch each, a timm ResNet-18 at 32 px or timm's test_vit at 160 px
@pytest.mark.parametrize("setting", [s if s in REPRESENTATIVE else
                                     pytest.param(s, marks=pytest.mark.slow)
                                     for s in SETTINGS])
def test_every_setting_trains_one_batch_on_a_fixture(make_cfg, fixture_data, setting):
    metrics = _fast_dev_run(make_cfg, setting, fixture_data)
    assert 0.0 <= metrics["test/recall@1"] <= 1.0
    assert math.isfinite(metrics["test/map@r"])


# --- make_table.py: the published column and the paired SEE - no-SEE difference ---

def _run(root: Path, name: str, seed: int, recall: float, *, see: bool,
         backbone: str = "deit_small_distilled_patch16_224", dim: int = 128) -> None:
    run_dir = root / name
    run_dir.mkdir(parents=True)
    cfg = {"seed": seed, "paths": {"run_dir": str(run_dir)}, "protocol": "authors",
           "dataset": {"_target_": "see_dml.data.cub.CUB200", "seed": seed},
           "model": {"backbone": {"name": backbone}, "embed_dim": dim},
           "loss": {"name": "proxy_anchor"}, "see": {"enabled": see, "n_points": 8},
           "synthesis": None, "trainer": {"max_epochs": 100}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run_dir / "metrics.json").write_text(json.dumps({
        prefix + key: value for prefix in ("test/", "best_on_test/")
        for key, value in (("recall@1", recall), ("map@r", recall / 2))}))


def test_make_table_prints_published_r1_and_paired_see_difference(tmp_path, capsys):
    # DeiT-S/128 on CUB, two seeds without and with SEE; ResNet-50/512 without SEE
    for seed, (plain, see) in enumerate([(0.70, 0.74), (0.72, 0.77)]):
        _run(tmp_path, f"none{seed}", seed, plain, see=False)
        _run(tmp_path, f"see{seed}", seed, see, see=True)
    _run(tmp_path, "r50", 0, 0.68, see=False, backbone="resnet50.tv_in1k", dim=512)
    make_table.main([str(tmp_path), "--checkpoint", "best_on_test"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("Checkpoint: best epoch on the test classes")
    lines = out[2:]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[header.index("R@1") + 1:header.index("R@1") + 3] == ["R@1 paper",
                                                                       "ΔR@1 paper"]
    rows = {(cells[1], cells[4]): cells for cells in
            ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:5])}
    col = {name: header.index(name) for name in ("R@1", "R@1 paper", "ΔR@1 paper", "ΔR@1")}
    see = rows[("deit_small_distilled_patch16_224", "SEE")]
    # ours 74 and 77: mean 75.50; published 75.1 (Le & Woo): +0.40
    assert see[col["R@1"]] == "75.50 ± 2.12"
    assert (see[col["R@1 paper"]], see[col["ΔR@1 paper"]]) == ("75.1", "+0.40")
    # SEE - none per seed: 4 and 5 points; mean 4.5, sd 0.7071, t(0.975, 1) = 12.7062:
    # half width 12.7062 * 0.7071 / sqrt(2) = 6.353
    assert see[col["ΔR@1"]] == "+4.50 [-1.85, +10.85]"
    plain = rows[("deit_small_distilled_patch16_224", "none")]  # no published row without SEE
    assert (plain[col["R@1 paper"]], plain[col["ΔR@1 paper"]]) == ("–", "–")
    r50 = rows[("resnet50.tv_in1k", "none")]  # Proxy-Anchor's BN-Inception row stands in, named
    assert (r50[col["R@1 paper"]], r50[col["ΔR@1 paper"]]) == ("68.4 (bn_inception)", "-0.40")
    notes = "\n".join(lines[5:])
    assert "10.1007/978-981-97-2253-2_11" in notes and "arxiv.org/abs/2003.13911" in notes
    make_table.main([str(tmp_path), "--checkpoint", "best_on_test", "--published", "none"])
    assert "R@1 paper" not in capsys.readouterr().out
    # validation-selected numbers are not the authors' number: no published column
    make_table.main([str(tmp_path)])
    out = capsys.readouterr().out
    assert "| R@1 paper |" not in out and "not shown beside 2 row(s)" in out


@pytest.mark.slow  # a subprocess sweep of 8 one-epoch ResNet-50 trainings at 32 px: ~2 min
def test_a_table_sweeps_on_fixtures_and_renders_beside_the_published_numbers(tmp_path):
    """``-m experiment=paper/table_resnet50`` (one seed) on fixtures of the four datasets,
    then make_table.py on the sweep: the paper layout, our R@1 beside the published one."""
    import subprocess
    import sys

    data_dir = tmp_path / "data"
    for short in ("cub", "cars", "sop"):
        make_fixture(short, data_dir, n_classes=6, per_class=4)
    make_fixture("inshop", data_dir, n_train=6, n_test=4, per_item=4)
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "see_dml.train", "-m", "experiment=paper/table_resnet50",
           "hydra.sweeper.params.seed=0", f"hydra.sweep.dir={sweep}",
           "model.backbone.pretrained=false", "data.transforms.image_size=32",
           "data.transforms.resize=36", f"paths.data_dir={data_dir}",
           f"paths.cache_dir={tmp_path / 'cache'}", "dataset.strict_counts=false",
           "see.p_min=0.4", "see.n_points=4",
           "trainer.max_epochs=1", "+trainer.limit_train_batches=2", "trainer.devices=1",
           "trainer.accelerator=cpu",
           "trainer.strategy=auto", "trainer.enable_progress_bar=false",
           "data.num_workers=0", "data.pin_memory=false", "data.batch_size=8",
           "data.m_per_class=2", "data.eval_batch_size=16", "callbacks.embedding_export=null"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(sweep.rglob("metrics.json"))
    assert len(runs) == 8  # 4 settings x SEE off/on
    assert all("best_on_test/recall@1" in json.loads(r.read_text()) for r in runs)
    table = subprocess.run([sys.executable, str(REPO / "experiments" / "make_table.py"),
                            str(sweep), "--checkpoint", "best_on_test"],
                           capture_output=True, text=True, timeout=120)
    assert table.returncode == 0, table.stderr
    lines = [line for line in table.stdout.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:2] == ["method", "backbone / dim"]
    groups = [h.split()[0] for h in header if h.endswith(" R@1 paper") and "Δ" not in h]
    assert groups == ["CUB", "Cars", "SOP", "In-Shop"]
    rows = {cells[0]: cells for cells in
            ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:])}
    assert set(rows) == {"none", "SEE"} and rows["SEE"][1] == "resnet50.tv_in1k / 512"
    # the published R@1 with SEE (69.3, 88.5, 80.3, 92.8), ours minus it, per dataset
    for dataset, published in zip(groups, (69.3, 88.5, 80.3, 92.8)):
        ours = rows["SEE"][header.index(f"{dataset} R@1")]
        paper = rows["SEE"][header.index(f"{dataset} R@1 paper")]
        delta = rows["SEE"][header.index(f"{dataset} ΔR@1 paper")]
        assert paper == str(published)
        assert float(delta) == pytest.approx(float(ours.split()[0]) - published, abs=0.011)
    for name in ("results_paper.md", "results_paper.csv"):
        assert (sweep / name).stat().st_size > 0


@pytest.mark.parametrize("setting", ["deit_small_128_cub", "resnet50_512_sop"])
def test_paper_settings_follow_the_authors_protocol_unless_told(setting):
    """The authors' run trains on every training class and reports the best epoch on test;
    protocol=held_out is the same recipe with validation classes choosing the checkpoint."""
    authors = compose([f"experiment=paper/{setting}"])
    assert authors.protocol == "authors"
    assert authors.dataset.val_fraction == 0.0 and authors.test_every_epoch
    held_out = compose([f"experiment=paper/{setting}", "protocol=held_out"])
    assert held_out.protocol == "held_out" and held_out.dataset.val_fraction == 0.1
    assert compose([]).protocol == "held_out"  # every other run: ours
    with pytest.raises(ConfigError, match="dataset.val_fraction=0.2"):
        validate_config(compose([f"experiment=paper/{setting}",
                                 "dataset.val_fraction=0.2"]))
    other = compose([])
    other.protocol = "ours"
    with pytest.raises(ConfigError, match="protocol must be held_out or authors"):
        validate_config(other)

"""End-to-end: the real composed config trains, tests and writes its results."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.errors import MissingConfigException

from see_dml.runtime.config import hydra_quote
from see_dml.runtime.errors import ConfigError
from see_dml.train import train
from see_dml.training.config_checks import validate_config

LOSSES = ["proxy_anchor", "multi_similarity", "contrastive", "triplet", "norm_softmax",
          "arcface"]


# one proxy and one pair loss by default (each loss has its own unit tests in tests/losses);
# the others end to end in the slow suite
@pytest.mark.parametrize("loss", [
    loss if loss in ("proxy_anchor", "multi_similarity") else pytest.param(
        loss, marks=pytest.mark.slow) for loss in LOSSES])
def test_fast_run_every_loss(make_cfg, loss):
    cfg = make_cfg(f"loss={loss}")
    metrics = train(cfg)
    run_dir = Path(cfg.paths.run_dir)
    saved = json.loads((run_dir / "metrics.json").read_text())
    for key in ("test/recall@1", "test/recall@8", "test/map@r", "test/r_precision"):
        assert 0.0 <= saved[key] <= 1.0, key
        assert saved[key] == pytest.approx(metrics[key])
    assert (run_dir / "config.yaml").exists()
    assert (run_dir / "checkpoints" / "last.ckpt").exists()


def test_checkpoint_selected_on_validation_classes(make_cfg):
    cfg = make_cfg("trainer.max_epochs=2")
    metrics = train(cfg)
    assert "best/val/map@r" in metrics
    assert Path(metrics["best_checkpoint"]).exists()
    assert {"test_final/map@r", "test/map@r"} <= metrics.keys()
    last = Path(cfg.paths.run_dir) / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=False)["epoch"] == 1  # final


def test_nmi_option_reports_test_nmi_and_prints_it(make_cfg, capsys):
    from see_dml.metrics import nmi_score

    cfg = make_cfg("metrics.nmi=true", "test_final=false",
                   "callbacks.embedding_export.plots=false")
    metrics = train(cfg)
    assert 0.0 <= metrics["test/nmi"] <= 1.0
    # the clustering of the exported test embeddings (those of the tested weights) agrees
    exported = np.load(Path(cfg.paths.run_dir) / "embeddings_test.npz")
    assert metrics["test/nmi"] == pytest.approx(
        nmi_score(exported["embeddings"], exported["labels"], seed=0), abs=1e-6)
    assert "| MAP@R | RP | NMI |" in capsys.readouterr().out
    assert "test/nmi" not in train(make_cfg("test_final=false"))  # off by default


def test_precision_at_10_is_a_config_change(make_cfg, capsys):
    """docs/extending.md's example: ``metrics.precision_at=[1,10]`` (and ``metrics.map_at``)
    puts ``test/precision@10`` into metrics.json, its val/ twin into the log and a ``P@10``
    column into the printed table, with the numbers of the exported test embeddings."""
    from see_dml.metrics import MetricSet, retrieval_metrics

    cfg = make_cfg("metrics.precision_at=[1,10]", "metrics.map_at=[10]", "test_final=false",
                   "callbacks.embedding_export.plots=false")
    metrics = train(cfg)
    run_dir = Path(cfg.paths.run_dir)
    saved = json.loads((run_dir / "metrics.json").read_text())
    exported = np.load(run_dir / "embeddings_test.npz")
    expected = retrieval_metrics(exported["embeddings"], exported["labels"], ks=(1, 2, 4, 8),
                                 metric_set=MetricSet(precision_at=(1, 10), map_at=(10,)))
    for key in ("precision@1", "precision@10", "map@10", "recall@1", "map@r"):
        assert saved[f"test/{key}"] == metrics[f"test/{key}"], key
        assert saved[f"test/{key}"] == pytest.approx(expected[key], abs=1e-6), key
    with (run_dir / "csv" / "metrics.csv").open() as f:
        assert {"val/precision@10", "val/map@10"} <= set(next(csv.reader(f)))
    assert "| weights | R@1 | R@2 | R@4 | R@8 | P@10 | mAP@10 | MAP@R | RP |" in (
        capsys.readouterr().out)


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu",
                       weights_only=False)
    return state["state_dict"]


@pytest.mark.parametrize(("see", "workers"), [
    pytest.param("false", 0, marks=pytest.mark.slow), ("true", 0),
    pytest.param("true", 2, marks=pytest.mark.slow)])  # worker processes: slow to start
def test_resumed_run_equals_an_uninterrupted_one(make_cfg, tmp_path, see, workers):
    """2 epochs straight == 1 epoch, killed, resumed for the 2nd: same weights, bit for bit
    (proxies, optimiser, sampler epoch, SEE's generator and the augmentation RNG restored)."""
    common = ["trainer.limit_train_batches=4", f"see.enabled={see}", "see.p_min=0.4",
              f"data.num_workers={workers}",
              "see.n_points=4", "callbacks.embedding_export=null", "test_final=false"]
    straight = make_cfg(*common, "trainer.max_epochs=2", f"paths.run_dir={tmp_path / 'a'}")
    train(straight)
    train(make_cfg(*common, "trainer.max_epochs=1", f"paths.run_dir={tmp_path / 'b'}"))
    resumed = train(make_cfg(*common, "trainer.max_epochs=2", f"paths.run_dir={tmp_path / 'b'}"))
    assert resumed["epochs"] == 2
    a, b = _final_weights(tmp_path / "a"), _final_weights(tmp_path / "b")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _same_threads() -> dict[str, str]:
    """The subprocess trains with this process's torch thread count (a pytest-xdist worker
    runs one): float sums over other thread counts differ in the last bits, and the
    resumed weights are compared bit for bit with an in-process run."""
    return {"OMP_NUM_THREADS": str(torch.get_num_threads())}


def _stop_at(step: int, signum: str, marker: Path) -> list[str]:
    return ["+callbacks.stop._target_=helpers.preemption.SignalOnce",
            f"+callbacks.stop.step={step}", f"+callbacks.stop.signum={signum}",
            f"+callbacks.stop.marker={marker}"]


@pytest.mark.slow
def test_run_killed_mid_training_resumes_to_the_same_weights(tmp_path):
    """SIGKILL a `python -m see_dml.train` in its second epoch (at a fixed step), run the same
    command again (as a requeued SLURM job does): it finishes with the weights of an unbroken
    run."""
    def command(run_dir: Path, *extra: str) -> list[str]:
        return [sys.executable, "-m", "see_dml.train", "trainer.max_epochs=4",
                "+trainer.limit_train_batches=8", "data.batch_size=32", "model.embed_dim=16",
                "dataset.images_per_class=20", "see.enabled=true", "see.p_min=0.4",
                "callbacks.embedding_export=null", "test_final=false",
                "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}",
                f"paths.cache_dir={tmp_path / 'cache'}", *extra]

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), **_same_threads()}
    # all three with one environment: the same thread count, so the same float sums
    unbroken = subprocess.run(command(tmp_path / "unbroken"), capture_output=True, text=True,
                              timeout=600, env=env)
    assert unbroken.returncode == 0, unbroken.stderr[-3000:]

    run_dir = tmp_path / "killed"
    killed = subprocess.run(command(run_dir, *_stop_at(10, "SIGKILL", tmp_path / "marker")),
                            capture_output=True, text=True, timeout=600, env=env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    last = run_dir / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=False)["epoch"] == 0

    again = subprocess.run(command(run_dir), capture_output=True, text=True, timeout=600,
                           env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((run_dir / "metrics.json").read_text())["epochs"] == 4
    a, b = _final_weights(tmp_path / "unbroken"), _final_weights(run_dir)
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.slow  # a subprocess sweep: ~20 s
def test_sigterm_ends_a_local_sweep_and_says_so(tmp_path):
    """SIGTERM in the first job of a local multirun (basic launcher, one process): status
    143, the resume command of that job, and a line that the later jobs did not start."""
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "see_dml.train", "-m", "seed=0,1", "trainer.max_epochs=2",
           "+trainer.limit_train_batches=4", "data.batch_size=32", "model.embed_dim=16",
           "dataset.images_per_class=20", "callbacks.embedding_export=null",
           "trainer.enable_progress_bar=false", f"hydra.sweep.dir={sweep}",
           f"paths.cache_dir={tmp_path / 'cache'}", *_stop_at(2, "SIGTERM", tmp_path / "m")]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), **_same_threads()}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 143, proc.stderr[-3000:]
    assert "This was job 0 of a local sweep: the sweep stops here" in proc.stderr
    assert f"resume={(sweep / '0').resolve()}" in proc.stderr
    assert not (sweep / "1").exists()


@pytest.mark.slow
def test_sigterm_exits_non_zero_with_the_resume_command(make_cfg, tmp_path, capsys):
    """SIGTERM mid-epoch: status 143 (not Lightning's 0), last.ckpt holds the last finished
    epoch, no metrics are written, and the printed command resumes the run to the weights
    of an unbroken one."""
    common = ["trainer.limit_train_batches=4", "callbacks.embedding_export=null",
              "test_final=false", "trainer.max_epochs=2"]
    train(make_cfg(*common, f"paths.run_dir={tmp_path / 'unbroken'}"))
    run_dir = tmp_path / "stopped"
    cfg = make_cfg(*common, f"paths.run_dir={run_dir}",
                   *_stop_at(6, "SIGTERM", tmp_path / "marker"))
    with pytest.raises(SystemExit) as stop:
        train(cfg)
    assert stop.value.code == 143
    err = capsys.readouterr().err
    assert "SIGTERM: stopped at epoch 1, step 7" in err  # after the step it arrived in
    assert f"resume={run_dir.resolve()}" in err
    assert not (run_dir / "metrics.json").exists()
    last = run_dir / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=False)["epoch"] == 0
    resumed = train(make_cfg(*common, f"paths.run_dir={run_dir}"))  # what resume= runs
    assert resumed["epochs"] == 2
    a, b = _final_weights(tmp_path / "unbroken"), _final_weights(run_dir)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_resume_with_another_config_fails_before_touching_the_run(make_cfg):
    cfg = make_cfg("trainer.max_epochs=1", "callbacks.embedding_export=null")
    train(cfg)
    run_dir = Path(cfg.paths.run_dir)
    config_before = (run_dir / "config.yaml").read_text()
    changed = make_cfg("trainer.max_epochs=2", "model.embed_dim=32", "loss.loss.margin=0.2",
                       "callbacks.embedding_export=null")
    with pytest.raises(ConfigError) as err:
        train(changed)
    message = str(err.value)
    for key in ("model.embed_dim (checkpoint 16, now 32)", "loss.loss.margin", "ckpt_path=null"):
        assert key in message
    assert "trainer.max_epochs" not in message  # training longer is what resuming is for
    assert (run_dir / "config.yaml").read_text() == config_before


def test_a_moved_run_directory_resumes_with_its_checkpoint_record(make_cfg, tmp_path):
    """Paths say where a run lives, not what it is: a run directory moved elsewhere resumes
    (trainer.default_root_dir, the callbacks' dirpath and paths.* differ), and its
    checkpoint callback keeps the epochs before the move in its top-k record."""
    import shutil

    common = ["callbacks.embedding_export=null", "test_final=false",
              "callbacks.model_checkpoint.save_top_k=2"]
    first = tmp_path / "first"
    train(make_cfg(*common, "trainer.max_epochs=1", f"paths.run_dir={first}"))
    moved = tmp_path / "elsewhere" / "moved"
    shutil.move(first, moved)
    resumed = train(make_cfg(*common, "trainer.max_epochs=2", f"paths.run_dir={moved}"))
    assert resumed["epochs"] == 2
    assert Path(resumed["best_checkpoint"]).is_file()
    assert Path(resumed["best_checkpoint"]).parent == (moved / "checkpoints").resolve()
    state = torch.load(moved / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    [record] = [v for k, v in state["callbacks"].items()
                if k.startswith("ModelCheckpoint") and "best_k_models" in v and v["best_k_models"]]
    # top 2 of 2 epochs: the record of the epoch before the move was kept (Lightning drops
    # it when the dirpath changed)
    assert sorted(Path(p).name for p in record["best_k_models"]) == ["epoch000.ckpt",
                                                                      "epoch001.ckpt"]
    assert all(str(moved.resolve()) in p for p in record["best_k_models"])


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow  # three trainings; the resume itself is covered by the SIGTERM test
def test_killed_run_resumes_from_last_checkpoint(make_cfg):
    """ckpt_path=auto picks up the run directory's last.ckpt instead of starting again."""
    cfg = make_cfg("trainer.max_epochs=1")
    first = train(cfg)
    log = Path(cfg.paths.run_dir) / "csv" / "metrics.csv"
    rows_before = _csv_rows(log)
    assert any(r.get("train/loss_epoch") for r in rows_before)
    # Same run directory, nothing left to train: the resumed run evaluates the checkpoint's
    # weights (another seed would train others from scratch, as the fresh run below shows).
    again = train(make_cfg("trainer.max_epochs=1"))
    assert again["epochs"] == 1
    assert again["test/map@r"] == pytest.approx(first["test/map@r"], abs=1e-7)
    # the resumed run appended to the CSV log: the first run's rows are all still there
    rows_after = _csv_rows(log)
    assert len(rows_after) > len(rows_before)
    assert [{k: v for k, v in r.items() if v} for r in rows_after[:len(rows_before)]] == \
        [{k: v for k, v in r.items() if v} for r in rows_before]
    fresh = train(make_cfg("trainer.max_epochs=1", "seed=1", "ckpt_path=null",
                           "paths.run_dir=${paths.output_dir}/fresh"))
    assert fresh["test/map@r"] != pytest.approx(first["test/map@r"], abs=1e-7)


@pytest.mark.slow  # a whole training as a subprocess
def test_cli_as_a_user_types_it(tmp_path):
    out = tmp_path / "outputs"
    cmd = [sys.executable, "-m", "see_dml.train", "loss=multi_similarity", "model.embed_dim=8",
           "trainer.max_epochs=1", "+trainer.limit_train_batches=2", "dataset=mnist",
           "data.batch_size=16",
           f"paths.output_dir={out}", f"paths.cache_dir={tmp_path / 'cache'}",
           "trainer.enable_progress_bar=false"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("Run directory: ")
    run_dir = Path(last.removeprefix("Run directory: "))
    assert run_dir.is_relative_to(out.resolve())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0 <= metrics["test/map@r"] <= 1
    assert "R@1" in proc.stdout and "MAP@R" in proc.stdout


def test_cli_cfg_job_prints_config():
    proc = subprocess.run([sys.executable, "-m", "see_dml.train", "--cfg", "job",
                           "loss=triplet"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "TripletMarginLoss" in proc.stdout


def test_unknown_loss_names_the_group(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "see_dml.train", "loss=not_a_loss",
                           f"paths.output_dir={tmp_path}"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1
    assert "Could not find 'loss/not_a_loss'" in proc.stderr
    assert "proxy_anchor" in proc.stderr  # the options there are
    assert not (tmp_path / "train").exists()


def test_unknown_loss_compose_error(make_cfg):
    with pytest.raises(MissingConfigException, match="loss"):
        make_cfg("loss=not_a_loss")


@pytest.mark.parametrize("override, key", [
    ("model.embed_dim=0", "model.embed_dim"),
    ("model.embed_dim=-3", "model.embed_dim"),
    ("data.batch_size=30", "data.batch_size"),
    ("data.sampler=weird", "data.sampler"),
    ("trainer.max_epochs=-1", "trainer.max_epochs"),
    ("knn_backend=annoy", "knn_backend"),
    ("matmul_precision=low", "matmul_precision"),
])
def test_bad_config_fails_before_training_naming_the_key(make_cfg, override, key):
    cfg = make_cfg(override)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_config(cfg)
    with pytest.raises(ConfigError):
        train(cfg)
    assert not (Path(cfg.paths.run_dir) / "checkpoints").exists()


def test_bad_component_option_fails_before_training_naming_the_key(make_cfg):
    """Single-key options are checked once, by the component their node builds."""
    cfg = make_cfg("model.head.pooling=median")
    with pytest.raises(Exception, match=r"model\.head\.pooling='median': must be one of"):
        train(cfg)
    assert not (Path(cfg.paths.run_dir) / "checkpoints").exists()


def test_training_by_steps(make_cfg):
    """trainer.max_epochs=-1 with max_steps trains by steps (SEE's schedule follows them)."""
    cfg = make_cfg("trainer.max_epochs=-1", "+trainer.max_steps=5", "see.enabled=true",
                   "callbacks.embedding_export=null", "test_final=false")
    validate_config(cfg)
    metrics = train(cfg)
    state = torch.load(Path(cfg.paths.run_dir) / "checkpoints" / "last.ckpt",
                       map_location="cpu", weights_only=False)
    assert state["global_step"] == 5 and metrics["epochs"] == 2  # 3 batches an epoch
    with pytest.raises(ConfigError, match=r"trainer\.max_epochs"):
        validate_config(make_cfg("trainer.max_epochs=-1"))  # no max_steps: endless


def test_untrained_network_baseline(make_cfg):
    """max_epochs=0 evaluates the network as initialised (the README's 'untrained' row)."""
    metrics = train(make_cfg("trainer.max_epochs=0"))
    assert metrics["epochs"] == 0
    assert 0 <= metrics["test/recall@1"] <= 1


def test_too_few_classes_for_a_batch_fails_before_training(make_cfg):
    cfg = make_cfg("dataset=mnist", "data.batch_size=32", "data.m_per_class=4")
    with pytest.raises(ValueError, match=r"data\.batch_size=32"):
        train(cfg)
    assert not (Path(cfg.paths.run_dir) / "checkpoints").exists()


def test_cli_help_lists_the_config_groups():
    proc = subprocess.run([sys.executable, "-m", "see_dml.train", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for line in ("loss: arcface, contrastive, multi_similarity", "synthesis: embedding_expansion",
                 "dataset: cars, csv, cub, double_mnist, emoji_styles, folder, inshop, mnist, sop"):
        assert line in proc.stdout


# -- checkpoints are whole or absent --------------------------------------------------------
_ATOMIC = ["trainer.limit_train_batches=4", "callbacks.embedding_export=null",
           "test_final=false"]


@pytest.mark.slow  # a training subprocess and two in-process ones: ~35 s
def test_checkpoint_write_killed_at_a_fixed_byte_count_resumes_bit_exactly(make_cfg, tmp_path):
    """A `python -m see_dml.train` killed while it writes its second epoch's checkpoint
    (SIGXFSZ at 64 KiB of a larger file): the first epoch's last.ckpt is intact, nothing is
    left in $TMPDIR, and the resumed run ends with the weights of an unbroken one."""
    from conftest import FAST

    train(make_cfg(*_ATOMIC, "trainer.max_epochs=2", f"paths.run_dir={tmp_path / 'a'}"))
    assert (tmp_path / "a" / "checkpoints" / "last.ckpt").stat().st_size > 65536
    run_dir, tmpdir = tmp_path / "b", tmp_path / "tmpdir"
    tmpdir.mkdir()
    cmd = [sys.executable, "-m", "see_dml.train", *FAST, "dataset.images_per_class=20",
           *_ATOMIC, "trainer.max_epochs=2", f"hydra.run.dir={run_dir}",
           f"paths.cache_dir={tmp_path.parent / 'see_dml_cache'}",
           "+callbacks.kill._target_=helpers.preemption.FileSizeLimitAt",
           f"+callbacks.kill.marker={tmp_path / 'marker'}", "+callbacks.kill.max_bytes=65536"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "TMPDIR": str(tmpdir),
           **_same_threads()}
    killed = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert killed.returncode == -signal.SIGXFSZ, killed.stderr[-3000:]
    ckpts = run_dir / "checkpoints"
    partial = [p for p in ckpts.iterdir() if ".tmp-" in p.name]
    assert [p.stat().st_size for p in partial] == [65536]  # the write it was killed in
    assert [p for p in tmpdir.rglob("*") if p.is_file()] == []  # (wandb leaves empty dirs)
    assert torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=False)["epoch"] == 0
    resumed = train(make_cfg(*_ATOMIC, "trainer.max_epochs=2", f"paths.run_dir={run_dir}"))
    assert resumed["epochs"] == 2
    assert not [p for p in ckpts.iterdir() if ".tmp-" in p.name]  # removed on resume
    a, b = _final_weights(tmp_path / "a"), _final_weights(run_dir)
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.slow
def test_damaged_last_checkpoint_is_named_and_the_newest_intact_one_resumed(make_cfg, tmp_path,
                                                                            caplog):
    import logging

    train(make_cfg(*_ATOMIC, "trainer.max_epochs=2", f"paths.run_dir={tmp_path / 'a'}"))
    run_dir = tmp_path / "b"
    train(make_cfg(*_ATOMIC, "trainer.max_epochs=1", f"paths.run_dir={run_dir}"))
    last = run_dir / "checkpoints" / "last.ckpt"
    with last.open("r+b") as f:  # a truncated write of another tool, a full disk
        f.truncate(69632)
    with caplog.at_level(logging.WARNING, logger="see_dml.checkpoints.write"):
        resumed = train(make_cfg(*_ATOMIC, "trainer.max_epochs=2", f"paths.run_dir={run_dir}"))
    assert f"'{last}' is damaged" in caplog.text and "epoch000.ckpt" in caplog.text
    assert resumed["epochs"] == 2
    a, b = _final_weights(tmp_path / "a"), _final_weights(run_dir)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_resume_command_keeps_every_override_hydra_ones_too(tmp_path):
    """A loss from hydra.searchpath resumes only with it: the printed command keeps every
    override the run was given, but places the run with resume= alone."""
    import shlex

    from hydra.core.hydra_config import HydraConfig

    from see_dml.runtime.config import compose
    from see_dml.train import resume_command

    given = ["seed=3", "loss.loss.margin=0.2", f"ckpt_path={tmp_path / 'x.ckpt'}",
             "hydra.searchpath=[file:///my/losses]", "hydra.job.chdir=false",
             f"hydra.run.dir={tmp_path / 'run'}", f"paths.run_dir={tmp_path / 'run'}"]
    cfg = compose([*given, "hydra.mode=RUN"], hydra=True)
    HydraConfig.instance().set_config(cfg)
    try:
        words = shlex.split(resume_command(cfg))
    finally:
        HydraConfig.instance().cfg = None
    assert words[:3] == [sys.executable, "-m", "see_dml.train"]  # works un-activated
    assert set(words[3:]) == {"hydra.searchpath=[file:///my/losses]", "hydra.job.chdir=false",
                              "seed=3", "loss.loss.margin=0.2",
                              f"paths.run_dir={tmp_path / 'run'}",
                              f"resume={(tmp_path / 'run').resolve()}"}


def test_resume_command_of_a_non_ascii_path_works_as_printed(tmp_path):
    """A run directory with a non-ASCII letter, a space and a quote: the printed command,
    run by a shell, reaches the run (Hydra parses it: no LexerNoViableAltException), and
    composing its overrides gives back the path."""
    import shlex

    from hydra.core.hydra_config import HydraConfig

    from see_dml.runtime.config import compose
    from see_dml.train import resume_command

    run_dir = tmp_path / "résumé d'été" / "run"
    cfg = compose([f"hydra.run.dir={hydra_quote(str(run_dir))}", "seed=3",
                   f"paths.run_dir={hydra_quote(str(run_dir))}", "hydra.mode=RUN"], hydra=True)
    HydraConfig.instance().set_config(cfg)
    try:
        command = resume_command(cfg)
    finally:
        HydraConfig.instance().cfg = None
    words = shlex.split(command)
    assert compose(words[3:]).resume == str(run_dir.resolve())
    # as printed, by a shell: the run directory is read (here: not a run yet, one error line)
    proc = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"error: resume='{run_dir.resolve()}' is not a run directory")
    assert not run_dir.exists()


@pytest.mark.slow  # two trainings as subprocesses: ~1 min
def test_make_train_gives_the_same_numbers_with_1_and_2_threads(tmp_path):
    """make train's configuration (small CNN, Proxy-Anchor, SEE on Double-MNIST), shrunk in
    length only, in two processes whose torch would take 1 and 2 CPU threads: the threads
    key pins them, so the weights and every metric agree bit for bit (without it, float
    sums split over 1 and 2 threads trained other weights), and provenance records it."""
    def run(n: int) -> tuple[dict, dict]:
        run_dir = tmp_path / f"threads{n}"
        env = {**os.environ, "OMP_NUM_THREADS": str(n), "MKL_NUM_THREADS": str(n)}
        proc = subprocess.run(
            [sys.executable, "-m", "see_dml.train", "loss=proxy_anchor", "see.enabled=true",
             "trainer.max_epochs=2", "+trainer.limit_train_batches=8",
             "dataset.images_per_class=20", "callbacks.embedding_export=null",
             "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}",
             f"paths.cache_dir={tmp_path / 'cache'}"],
            capture_output=True, text=True, timeout=600, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        metrics = json.loads((run_dir / "metrics.json").read_text())
        state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu",
                           weights_only=True)["state_dict"]
        return metrics, state

    (m1, w1), (m2, w2) = run(1), run(2)
    assert m1["provenance/threads"] == m2["provenance/threads"] == 1
    scores = [k for k in m1 if k.startswith(("test/", "test_final/", "best/"))]
    assert scores and {k: m1[k] for k in scores} == {k: m2[k] for k in scores}
    for key in w1:
        assert torch.equal(w1[key], w2[key]), key

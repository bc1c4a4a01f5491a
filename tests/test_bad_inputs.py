"""Bad inputs a new user gives, each answered by one error (or warning) naming the key or file.

In-process where the message is the point (milliseconds to seconds each); a CLI subprocess
only where the exit status is. Groups: config, data, checkpoint, retrieve / evaluate.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.errors import InstantiationException, MissingConfigException
from hydra.utils import instantiate
from PIL import Image

from conftest import FAST, compose_config
from see_dml.checkpoints.read import read_checkpoint
from see_dml.data.base import RetrievalDataset, Split
from see_dml.evaluate import evaluate
from see_dml.retrieve import retrieve_images
from see_dml.runtime.config import warn_ignored_keys
from see_dml.runtime.errors import (
    CheckpointError,
    ConfigError,
    DatasetNotFoundError,
    UnreadableImageError,
)
from see_dml.train import train
from see_dml.training.components import build_datamodule
from see_dml.training.config_checks import validate_config


# -- config ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("overrides", "key"), [
    (["model.embed_dim=0"], "model.embed_dim"),
    (["data.batch_size=-4"], "data.batch_size"),
    (["data.batch_size=30", "data.m_per_class=4"], "data.m_per_class"),
    (["data.sampler=shuffled"], "data.sampler"),
    (["trainer.max_epochs=-2"], "trainer.max_epochs"),
    (["matmul_precision=ultra"], "matmul_precision"),
    (["threads=0"], "threads"),
    (["threads=all"], "threads"),
    (["knn_backend=annoy"], "knn_backend"),
    (["optimizer.lr=-0.001"], "optimizer.lr"),
    (["optimizer.lr=fast"], "optimizer.lr"),
    (["see.enabled=true", "see.weight=-0.5"], "see.weight"),
    (["see.enabled=true", "see.n_points=100"], "see.n_points"),
    (["see.enabled=true", "see.p_min=0.5", "see.p_max=0.2"], "see.p_min"),
    (["see.enabled=true", "synthesis=embedding_expansion"], "synthesis"),
    (["test_epochs.every=0"], "test_epochs.every"),
    (["test_epochs.start=-1"], "test_epochs.start"),
    (["+optimizer.betaz=[0.9,0.99]"], "~optimizer.betaz"),
    (["scheduler=step", "+scheduler.T_max=5"], "~scheduler.T_max"),
    (["scheduler=step", "scheduler._target_=torch.optim.lr_scheduler.NoSuchLR"],
     "scheduler._target_"),
])
def test_bad_config_is_rejected_naming_the_key(make_cfg, overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_config(make_cfg(*overrides))


def test_unknown_config_option_names_the_group(make_cfg):
    with pytest.raises(MissingConfigException, match="loss"):
        make_cfg("loss=not_a_loss")


def test_see_that_expands_nothing_in_the_whole_run_is_warned_about(make_cfg, caplog):
    # one epoch: the ramp sits at p_min=0 for its only epoch, so SEE never expands a sample
    with caplog.at_level(logging.WARNING, logger="see_dml.runtime.config"):
        validate_config(make_cfg("see.enabled=true", "trainer.max_epochs=1"))
    assert "see.p_min=0.0" in caplog.text and "trainer.max_epochs=1" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="see_dml.runtime.config"):
        validate_config(make_cfg("see.enabled=true", "trainer.max_epochs=2"))  # p(1) = 0.2
        validate_config(make_cfg("see.enabled=true", "trainer.max_epochs=1", "see.p_min=0.1"))
        validate_config(make_cfg("trainer.max_epochs=1"))  # SEE off: nothing to say
    assert caplog.text == ""


def test_see_weight_zero_is_warned_about(make_cfg, caplog):
    with caplog.at_level(logging.WARNING, logger="see_dml.runtime.config"):
        validate_config(make_cfg("see.enabled=true", "see.weight=0", "trainer.max_epochs=4"))
    assert "see.weight=0" in caplog.text


def test_model_overrides_that_evaluate_ignores_are_named(caplog):
    cfg = compose_config(["ckpt_path=x.ckpt", "+model.embed_dim=32", "+optimizer.lr=0.1",
                          "dataset.root=/data"], config_name="evaluate")
    with caplog.at_level(logging.WARNING, logger="see_dml.runtime.config"):
        keys = warn_ignored_keys(cfg, "evaluate")
    assert keys == ["model.embed_dim", "optimizer.lr"]  # dataset.root is evaluate's own key
    assert "model.embed_dim, optimizer.lr" in caplog.text
    assert warn_ignored_keys(compose_config(["ckpt_path=x.ckpt"], "evaluate"), "evaluate") == []


# -- data -----------------------------------------------------------------------------------
def test_m_per_class_above_the_images_of_a_class_is_named(make_cfg, caplog):
    cfg = make_cfg("dataset.images_per_class=3")  # data.m_per_class=4 draws repeats
    with caplog.at_level(logging.WARNING, logger="see_dml.data.datamodule"):
        build_datamodule(cfg)
    assert "data.m_per_class=4" in caplog.text
    assert "64 of 64 classes" in caplog.text and "with 3" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="see_dml.data.datamodule"):
        build_datamodule(make_cfg("dataset.images_per_class=3", "data.m_per_class=3",
                                  "data.batch_size=30"))
    assert "data.m_per_class" not in caplog.text


@pytest.mark.parametrize(("overrides", "message"), [
    (["trainer=gpu"], r"trainer\.accelerator=gpu .*no CUDA GPU"),
    (["experiment=paper/deit_small_128_cub"], r"trainer\.accelerator=gpu .*no CUDA GPU"),
    (["trainer.accelerator=cpu", "trainer.precision=16-mixed"],
     r"trainer\.precision=16-mixed needs a GPU"),
])
def test_a_gpu_trainer_on_a_machine_without_one_fails_first(make_cfg, monkeypatch, tmp_path,
                                                             overrides, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = make_cfg(*overrides, f"paths.run_dir={tmp_path / 'run'}", fast=False)
    with pytest.raises(ConfigError, match=message):
        train(cfg)
    assert not (tmp_path / "run").exists()  # before the run directory and the data


def test_too_few_classes_for_a_batch(make_cfg):
    with pytest.raises(ValueError, match=r"data\.batch_size|data\.m_per_class"):
        build_datamodule(make_cfg("dataset=mnist", "data.batch_size=32", "data.m_per_class=4"))


@pytest.mark.parametrize(("overrides", "key"), [
    (["dataset.class_split=[60,16,20]"], "dataset.class_split"),
    (["dataset.val_fraction=0.2"], "dataset.val_fraction"),
    (["dataset.on_error=explode"], "dataset.on_error"),
])
def test_bad_dataset_option_names_the_key(make_cfg, overrides, key):
    # raised in the constructor, instantiate wraps it (the message keeps the key)
    with pytest.raises((ValueError, InstantiationException), match=key.replace(".", r"\.")):
        instantiate(make_cfg(*overrides).dataset).splits()


def test_missing_dataset_names_the_root(make_cfg, tmp_path):
    root = tmp_path / "no_cub_here"
    with pytest.raises(DatasetNotFoundError, match=str(root)):
        instantiate(make_cfg("dataset=cub", f"dataset.root={root}").dataset).splits()


def test_empty_cache_file_is_named_and_rebuilt(make_cfg, caplog):
    cfg = make_cfg()
    source = instantiate(cfg.dataset)
    source.splits()
    cache = source._cache_path()
    cache.write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="see_dml.data.cache"):
        instantiate(cfg.dataset).splits()
    assert str(cache) in caplog.text and cache.stat().st_size > 0


def test_unreadable_image_names_the_file(tmp_path):
    bad = tmp_path / "cat" / "001.jpg"
    bad.parent.mkdir()
    bad.write_text("not a jpeg")
    dataset = RetrievalDataset(Split([bad], np.zeros(1), "train"), None, "RGB", "fail")
    with pytest.raises(UnreadableImageError, match=str(bad)):
        dataset[0]


# -- checkpoint -----------------------------------------------------------------------------
def _file(tmp_path: Path, kind: str) -> Path | str | None:
    path = tmp_path / "model.ckpt"
    if kind == "text":
        path.write_text("a config, not a checkpoint")
    elif kind == "empty":
        path.touch()
    elif kind == "no_state_dict":
        torch.save({"epoch": 3}, path)
    elif kind == "not_see_dml":
        torch.save({"state_dict": {}}, path)
    elif kind == "folder":
        return tmp_path
    elif kind == "missing":
        return tmp_path / "nope.ckpt"
    elif kind == "none":
        return None
    return path


@pytest.mark.parametrize(("kind", "message"), [
    ("none", "ckpt_path is required"),
    ("missing", "nope.ckpt' does not exist"),
    ("folder", "is not a file"),
    ("text", "model.ckpt' is not a readable checkpoint"),
    ("empty", "model.ckpt' is not a readable checkpoint"),
    ("no_state_dict", "no 'state_dict'"),
    ("not_see_dml", "no 'see_dml_config'"),
])
def test_bad_checkpoint_names_ckpt_path(tmp_path, kind, message):
    with pytest.raises(CheckpointError, match=message):
        read_checkpoint(_file(tmp_path, kind))


# -- evaluate / retrieve --------------------------------------------------------------------
@pytest.fixture(scope="module")
def ckpt(tiny_run: dict) -> str:
    """last.ckpt of the session's seconds-long Double-MNIST run."""
    return tiny_run["last"]


def test_checkpoint_of_the_old_flat_config_is_named(ckpt, tmp_path):
    """A checkpoint from before the backbone / head / loss ``_target_`` nodes: one clear
    error, not an OmegaConf traceback from deep inside the rebuild."""
    from see_dml.module import load_module_from_checkpoint

    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    model = state["see_dml_config"]["model"]
    state["see_dml_config"]["model"] = {"backbone": model["backbone"]["name"],
                                        "embed_dim": model["embed_dim"], "pooling": "avg+max"}
    old = tmp_path / "old.ckpt"
    torch.save(state, old)
    with pytest.raises(CheckpointError, match=r"old\.ckpt' was written by an older see_dml.*"
                                              r"model\.backbone: small_cnn"):
        load_module_from_checkpoint(old)


@pytest.mark.parametrize(("overrides", "key"), [
    (["split=train"], "split"),
    (["export.format=csv"], "export.format"),
    (["knn_backend=annoy"], "knn_backend"),
])
def test_bad_evaluate_option_names_the_key(tmp_path, overrides, key):
    cfg = compose_config([f"ckpt_path={tmp_path / 'x.ckpt'}", f"paths.run_dir={tmp_path}",
                          *overrides], config_name="evaluate")
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        evaluate(cfg)


def _retrieve(tmp_path: Path, ckpt: str, query: str, gallery: str, *overrides: str) -> dict:
    cfg = compose_config([f"ckpt_path={ckpt}", f"query={query}", f"gallery={gallery}",
                          f"paths.run_dir={tmp_path / 'out'}", "progress=false", *overrides],
                         config_name="retrieve")
    return retrieve_images(cfg)


@pytest.mark.parametrize(("query", "extra", "message"), [
    ("no_such_folder", [], "query='no_such_folder' is neither a split"),
    ("EMPTY", [], "holds no image file"),
    ("test", ["k=0"], "k must be a positive integer"),
    ("test", ["knn_backend=annoy"], "knn_backend"),
])
def test_bad_retrieve_input_names_the_key(tmp_path, query, extra, message):
    (tmp_path / "empty").mkdir()
    dummy = tmp_path / "x.ckpt"
    dummy.touch()  # these fail before the checkpoint is read
    query = str(tmp_path / "empty") if query == "EMPTY" else query
    with pytest.raises(ConfigError, match=message):
        _retrieve(tmp_path, str(dummy), query, "test", *extra)


def test_retrieve_non_image_file_names_it(tmp_path, ckpt):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("L", (28, 56)).save(folder / "ok.png")
    (folder / "notes.png").write_text("not an image")
    with pytest.raises((ConfigError, UnreadableImageError), match="notes.png"):
        _retrieve(tmp_path, ckpt, str(folder), str(folder))


def test_retrieve_user_images_of_mixed_sizes_and_modes(tmp_path, ckpt):
    # Used to crash in torch.stack ("stack expects each tensor to be equal size").
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, shape in [("a.png", (28, 56)), ("b.png", (40, 40, 3)), ("c.png", (17, 90, 4)),
                        ("d.png", (64, 128))]:
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(folder / name)
    report = _retrieve(tmp_path, ckpt, str(folder), str(folder), "k=2")
    assert len(report["results"]) == 4
    for res in report["results"]:  # each image finds itself first
        assert res["neighbours"][0]["item"] == res["query"]


def _folder_with_unreadable_images(tmp_path: Path) -> tuple[Path, list[Path]]:
    """``images/``: three readable PNGs (Double-MNIST's size), a truncated JPEG (its headers
    are whole: ``verify`` passed it) and a file no decoder accepts; returns both bad ones."""
    from helpers.dataset_fixtures import corrupt_image, truncate_image

    folder = tmp_path / "images"
    (folder / "cat").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png", "cat/c.png"):
        Image.fromarray(rng.integers(0, 255, (28, 56), dtype=np.uint8)).save(folder / name)
    Image.fromarray(rng.integers(0, 255, (56, 56, 3), dtype=np.uint8)).save(folder / "cat" /
                                                                            "d.jpg")
    (folder / "e.png").write_bytes(b"")
    return folder, [truncate_image(folder / "cat" / "d.jpg"), corrupt_image(folder / "e.png")]


def test_unreadable_files_of_a_folder_fail_before_the_model_naming_file_and_key(tmp_path):
    folder, (truncated, _) = _folder_with_unreadable_images(tmp_path)
    dummy = tmp_path / "x.ckpt"
    dummy.touch()  # never read: the pre-check decodes every file first
    with pytest.raises(ConfigError, match=rf"query: '{truncated}' is not a readable image "
                                          r"\(OSError: image file is truncated.*nor are 1 more "
                                          r"of the 5 files.*on_error=skip"):
        _retrieve(tmp_path, str(dummy), str(folder), "test")
    with pytest.raises(ConfigError, match="on_error must be one of fail, skip"):
        _retrieve(tmp_path, str(dummy), str(folder), "test", "on_error=ignore")
    assert not (tmp_path / "out").exists()


def test_retrieve_and_index_on_error_skip_leave_unreadable_files_out_and_list_them(
        tmp_path, ckpt, capsys):
    import json

    from see_dml.index import run as index_run

    folder, bad = _folder_with_unreadable_images(tmp_path)
    listed = [str(f.resolve()) for f in bad]
    report = _retrieve(tmp_path, ckpt, str(folder), str(folder), "k=2", "on_error=skip")
    assert sorted(r["query"] for r in report["results"]) == sorted(
        str(folder / n) for n in ("a.png", "b.png", "cat/c.png"))
    saved = json.loads((tmp_path / "out" / "retrieval.json").read_text())
    for key in ("query", "gallery"):
        assert sorted(u["path"] for u in saved["unreadable"][key]) == sorted(listed)
    assert "truncated" in str(saved["unreadable"]["query"])
    assert "Skipped unreadable images (on_error=skip): 2 of query, 2 of gallery; listed in " \
        f"{(tmp_path / 'out' / 'retrieval.json').resolve()}" in capsys.readouterr().out
    assert _retrieve(tmp_path, ckpt, "test", "test", "k=1")["unreadable"] == {
        "query": [], "gallery": []}

    path = tmp_path / "gallery.faiss"
    meta = index_run(compose_config(["action=build", f"ckpt_path={ckpt}", f"gallery={folder}",
                                     f"index.path={path}", "progress=false", "on_error=skip"],
                                    config_name="index"))
    assert meta["count"] == 3
    assert sorted(u["path"] for u in meta["sources"][0]["unreadable"]) == sorted(listed)
    side = json.loads((tmp_path / "gallery.faiss.json").read_text())
    assert side["sources"] == meta["sources"]
    assert "Skipped unreadable images (on_error=skip): 2 of gallery" in capsys.readouterr().out
    with pytest.raises(ConfigError, match=rf"gallery: '{bad[0]}' is not a readable image"):
        index_run(compose_config(["action=add", f"ckpt_path={ckpt}", f"gallery={folder}",
                                  f"index.path={path}", "progress=false"], config_name="index"))


# -- exit status of the CLIs ----------------------------------------------------------------
def _cli_error_line(module: str, *args: str, timeout: int = 120) -> str:
    """Run ``python -m <module> <args>``; assert it failed as a user error (status 2, no
    traceback) and return its last stderr line, the one 'error:' line."""
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    return proc.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(("module", "args", "message"), [
    ("see_dml.evaluate", ["ckpt_path=/no/such.ckpt"], "ckpt_path='/no/such.ckpt' does not exist"),
    ("see_dml.retrieve", ["ckpt_path=/no/such.ckpt", "query=test"], "ckpt_path='/no/such.ckpt'"),
    ("see_dml.index", ["build", "ckpt_path=/no/such.ckpt", "index.path=x.faiss"],
     "ckpt_path='/no/such.ckpt'"),
    ("see_dml.export", ["ckpt_path=/no/such.ckpt"], "ckpt_path='/no/such.ckpt'"),
])
def test_cli_exits_2_with_one_error_line(tmp_path, module, args, message):
    last = _cli_error_line(module, *args, f"paths.output_dir={tmp_path}")
    assert last.startswith(f"error: {message}")
    # no run directory left behind (it used to stay, holding Hydra's files alone)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_cli_index_of_a_folder_with_a_truncated_jpeg_exits_2_writing_nothing(tmp_path):
    folder, (truncated, _) = _folder_with_unreadable_images(tmp_path)
    dummy = tmp_path / "x.ckpt"
    dummy.touch()
    index = tmp_path / "index" / "gallery.faiss"
    last = _cli_error_line("see_dml.index", "build", f"ckpt_path={dummy}", f"gallery={folder}",
                           f"index.path={index}", f"paths.output_dir={tmp_path / 'out'}")
    assert last.startswith(f"error: gallery: '{truncated}' is not a readable image") and \
        "on_error=skip" in last
    assert not index.parent.exists()
    assert [p for p in (tmp_path / "out").rglob("*") if p.is_file()] == []  # no run directory


def test_cli_config_error_does_not_load_lightning(tmp_path):
    """A mistyped value is answered without importing Lightning (seconds) or torch."""
    probe = ("import atexit, runpy, sys\n"
             "atexit.register(lambda: print('loaded:', 'lightning' in sys.modules,\n"
             "                              'torch' in sys.modules, file=sys.stderr))\n"
             "sys.argv = ['train', 'model.embed_dim=0', f'paths.output_dir={sys.argv[1]}']\n"
             "runpy.run_module('see_dml.train', run_name='__main__')\n")
    proc = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[-2].startswith("error: model.embed_dim must be a positive integer")
    assert lines[-1] == "loaded: False False"
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


@pytest.mark.slow  # a subprocess sweep with one short training: ~30 s (submitit: ~45 s)
@pytest.mark.parametrize("launcher", ["basic", "submitit_local"])
def test_a_sweep_with_a_failing_job_ends_with_the_list_and_its_error(tmp_path, launcher):
    """Two jobs, the second a config error: the first still trains; the sweep ends with the
    run directories (finished, failed) and the failed job's one line, status 2, no
    traceback (the basic sweeper re-raised the first failure after the last job). Under
    submitit the jobs are processes of their own: the failed one's line reaches the sweep
    through its run directory."""
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [sys.executable, "-m", "see_dml.train", "-m", f"hydra/launcher={launcher}", *FAST,
         "model.embed_dim=16,0",
         "dataset.images_per_class=20", "callbacks.embedding_export=null", "test_final=false",
         f"hydra.sweep.dir={sweep}", f"paths.cache_dir={tmp_path / 'cache'}"],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    done, failed = (sweep / "0").resolve(), (sweep / "1").resolve()
    assert (done / "metrics.json").is_file()
    tail = proc.stdout.strip().splitlines()[-3:]
    assert tail[0].startswith(f"{done}  R@1 ")
    assert tail[1].startswith(f"{failed}  failed: model.embed_dim must be a positive integer")
    assert tail[2] == f"Sweep directory: {sweep.resolve()}"
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "error: job 1 of the sweep failed: model.embed_dim must be a positive integer")


# -- run directory --------------------------------------------------------------------------
_HOLD = ("import sys; from see_dml.runtime.lock import lock_run_dir\n"
         "with lock_run_dir(sys.argv[1]):\n"
         "    print('held', flush=True)\n"
         "    sys.stdin.read()\n")


@pytest.fixture
def held_run_dir(tmp_path: Path):
    """A run directory another process (a stand-in for a running training) holds."""
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(run_dir)], text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert holder.stdout.readline().strip() == "held"
    (run_dir / "config.yaml").write_text("the first run's config\n")
    yield run_dir, holder.pid
    holder.communicate("", timeout=30)


def test_second_run_in_a_held_run_directory_fails_naming_the_holder(make_cfg, held_run_dir):
    from see_dml.runtime.errors import RunDirectoryLockedError

    run_dir, pid = held_run_dir
    with pytest.raises(RunDirectoryLockedError, match=rf"'{run_dir}' is in use by pid {pid} "):
        train(make_cfg(f"paths.run_dir={run_dir}"))
    assert (run_dir / "config.yaml").read_text() == "the first run's config\n"
    assert not (run_dir / "checkpoints").exists()


def test_cli_second_run_in_a_held_run_directory_exits_2(tmp_path, held_run_dir):
    run_dir, pid = held_run_dir
    last = _cli_error_line("see_dml.train", f"hydra.run.dir={run_dir}",
                           f"paths.cache_dir={tmp_path / 'cache'}")
    assert last.startswith(f"error: run directory '{run_dir}' is in use by pid {pid} ")
    # the holder's directory is neither removed nor written into (Hydra's files included)
    assert (run_dir / "config.yaml").read_text() == "the first run's config\n"
    assert not (run_dir / "checkpoints").exists() and not (run_dir / ".hydra").exists()


def test_lock_of_a_killed_run_is_not_stale(tmp_path):
    """A run killed while it holds its directory (SIGKILL) does not lock it out for good."""
    from see_dml.runtime.lock import HOLDER_NAME, lock_run_dir

    run_dir = tmp_path / "run"
    killed = subprocess.run([sys.executable, "-c", "import os, signal, sys\n"
                             "from see_dml.runtime.lock import lock_run_dir\n"
                             "with lock_run_dir(sys.argv[1]):\n"
                             "    os.kill(os.getpid(), signal.SIGKILL)\n", str(run_dir)],
                            timeout=60)
    assert killed.returncode == -9
    assert '"pid"' in (run_dir / HOLDER_NAME).read_text()  # what the dead run left
    with lock_run_dir(run_dir):
        assert f'"pid": {os.getpid()}' in (run_dir / HOLDER_NAME).read_text()
    assert not (run_dir / HOLDER_NAME).exists()


def test_damaged_last_checkpoint_without_an_intact_one_is_named(make_cfg, tmp_path):
    from see_dml.checkpoints.write import DamagedCheckpointError

    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"PK\x03\x04 the first 69,632 bytes of a checkpoint")
    (last.parent / "epoch000.ckpt").write_text("not one either")
    with pytest.raises(DamagedCheckpointError, match=rf"'{last}' is damaged .*ckpt_path="):
        train(make_cfg(f"paths.run_dir={run_dir}"))
    assert not (run_dir / "config.yaml").exists()  # before anything is written


def test_cli_index_build_onto_an_existing_index_exits_2(tmp_path, ckpt):
    from see_dml.index import run as index_run

    path = tmp_path / "gallery.faiss"
    index_run(compose_config(["action=build", f"ckpt_path={ckpt}", "gallery=test",
                              f"index.path={path}", "progress=false"], config_name="index"))
    before = path.read_bytes()
    last = _cli_error_line("see_dml.index", "build", f"ckpt_path={ckpt}", "gallery=val",
                           f"index.path={path}", f"paths.output_dir={tmp_path}",
                           "progress=false")
    assert last.startswith(f"error: index.path='{path}' already exists") and \
        "index.overwrite=true" in last
    assert path.read_bytes() == before


@pytest.mark.slow
def test_cli_relative_index_path_is_where_the_user_ran_the_command(tmp_path, ckpt):
    """Not the process's working directory, which hydra.job.chdir=true moves into the run
    directory; the path written is printed absolute."""
    here = tmp_path / "here"
    here.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "see_dml.index", "build", f"ckpt_path={ckpt}", "gallery=test",
         "index.path=sub/gallery.faiss", "hydra.job.chdir=true", "progress=false",
         f"paths.output_dir={tmp_path / 'out'}"],
        cwd=here, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = here / "sub" / "gallery.faiss"
    assert written.is_file() and (here / "sub" / "gallery.faiss.json").is_file()
    assert f"Wrote {written} (flat, " in proc.stdout
    assert list((tmp_path / "out").rglob("*.faiss")) == []


# -- plots never cost the metrics -----------------------------------------------------------
@pytest.mark.slow  # train, evaluate and retrieve on a CUB fixture: ~25 s
def test_on_error_skip_is_honoured_by_every_plot_and_metrics_come_first(make_cfg, tmp_path,
                                                                        monkeypatch, caplog):
    """A listed image that cannot be read, with dataset.on_error=skip: training, testing, the
    retrieval grid (train's, evaluate's and retrieve's) all skip it, and a plot that fails
    for another reason costs nothing but itself."""
    import json

    import see_dml.evaluation.plots as plots
    from helpers.dataset_fixtures import corrupt_image, make_fixture
    from see_dml.evaluate import evaluate

    fx = make_fixture("cub", tmp_path / "data", n_classes=4, per_class=4)
    gone = corrupt_image(fx.images["test"][1])  # (a file not on disk: the loader refuses)
    cfg = make_cfg("dataset=cub", f"paths.data_dir={tmp_path / 'data'}",
                   "dataset.val_fraction=0", "dataset.strict_counts=false",
                   "dataset.on_error=skip", "data.transforms.image_size=32",
                   "data.transforms.resize=36", "data.batch_size=8", "data.m_per_class=2",
                   "data.eval_batch_size=16", "test_final=false",
                   "callbacks.embedding_export.projection=pca")

    def broken(*args, **kwargs):
        raise RuntimeError("no room for a plot")

    monkeypatch.setattr(plots, "plot_recall_curve", broken)
    with caplog.at_level(logging.WARNING):
        train(cfg)
    run_dir = Path(cfg.paths.run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert "test/map@r" in metrics
    # the unreadable test image is left out and counted, never replaced by another
    assert metrics["test/skipped_images"] == 1
    exported = np.load(run_dir / "embeddings_test.npz")
    assert str(gone) not in [str(p) for p in exported["paths"]]
    assert len(exported["labels"]) == len(fx.images["test"]) - 1
    assert (run_dir / "retrieval_grid_test.png").exists()
    assert str(gone) in caplog.text and "could not draw recall_at_k.png" in caplog.text

    seen = []

    def grid_after_metrics(*args, **kwargs):
        seen.append((tmp_path / "eval" / "metrics.json").exists())
        raise RuntimeError("grid too large")

    monkeypatch.setattr(plots, "plot_retrieval_examples", grid_after_metrics)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    evaluate(compose_config([f"ckpt_path={ckpt}", f"paths.run_dir={tmp_path / 'eval'}",
                             "plots.enabled=true", "plots.projection=pca", "progress=false"],
                            config_name="evaluate"))
    assert seen == [True] and (tmp_path / "eval" / "metrics.json").exists()
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())[
        "test/skipped_images"] == 1
    monkeypatch.undo()
    report = _retrieve(tmp_path, str(ckpt), "test", "test", "k=3")
    assert len(report["results"]) == len(fx.images["test"]) - 1
    assert str(gone) not in [r["query"] for r in report["results"]]
    assert (tmp_path / "out" / "retrieval_grid.png").exists()


def test_trains_metrics_are_written_before_its_plots(make_cfg, monkeypatch):
    """A projection that never ends well (a crash, Ctrl-C in a long t-SNE) after the tests:
    metrics.json is already whole; the embeddings and plots are drawn after it."""
    import json

    import see_dml.evaluation.plots as plots

    cfg = make_cfg("test_final=false", "callbacks.embedding_export.projection=pca")
    metrics_file = Path(cfg.paths.run_dir) / "metrics.json"
    seen = []

    def interrupted(*args, **kwargs):
        seen.append(metrics_file.exists())
        raise KeyboardInterrupt

    monkeypatch.setattr(plots, "plot_projection", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    assert seen == [True]
    assert 0.0 <= json.loads(metrics_file.read_text())["test/map@r"] <= 1.0
    assert (metrics_file.parent / "embeddings_test.npz").is_file()  # the export before it


@pytest.mark.slow
def test_retrieve_grid_is_capped_whatever_k(tmp_path, ckpt, monkeypatch):
    """k=100000: neighbours/ holds every neighbour (retrieval.json the first json_k), the
    grid only grid_k columns."""
    import see_dml.evaluation.plots as plots

    drawn = []
    real = plots.retrieval_grid

    def spy(queries, neighbours, *args, **kwargs):
        drawn.append((len(queries), max(len(row) for row in neighbours)))
        return real(queries, neighbours, *args, **kwargs)

    monkeypatch.setattr(plots, "retrieval_grid", spy)
    report = _retrieve(tmp_path, ckpt, "test", "test", "k=100000", "grid_queries=4")
    every = np.load(tmp_path / "out" / "neighbours" / "indices.npy", mmap_mode="r")
    assert every.shape == (report["num_queries"], report["k"]) and report["k"] > 10
    assert len(report["results"][0]["neighbours"]) == 10  # json_k
    assert drawn == [(4, 10)]
    _retrieve(tmp_path, ckpt, "test", "test", "k=100000", "grid_queries=2", "grid_k=3")
    assert drawn[-1] == (2, 3)
    with pytest.raises(ConfigError, match="grid_k must be a positive integer"):
        _retrieve(tmp_path, ckpt, "test", "test", "grid_k=0")


# -- resume= --------------------------------------------------------------------------------
def test_resume_of_a_folder_that_is_no_run_is_refused(make_cfg, tmp_path):
    from see_dml.runtime.errors import NotARunError

    folder = tmp_path / "mine"
    folder.mkdir()
    with pytest.raises(NotARunError, match=rf"resume='{folder}' is not a run directory"):
        train(make_cfg(f"resume={folder}", f"paths.run_dir={folder}"))
    assert list(folder.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["missing", "other folder"])
def test_cli_resume_of_no_run_exits_2_leaving_nothing(tmp_path, kind):
    target = tmp_path / ("nope" if kind == "missing" else "mine")
    if kind != "missing":
        target.mkdir()
        (target / "notes.txt").write_text("the user's own file\n")
    last = _cli_error_line("see_dml.train", f"resume={target}",
                           f"paths.output_dir={tmp_path / 'out'}")
    assert last.startswith(f"error: resume='{target}' is not a run directory")
    if kind == "missing":
        assert not target.exists()
    else:  # Hydra's files of the attempt removed, the user's kept
        assert [p.name for p in target.iterdir()] == ["notes.txt"]
    assert not (tmp_path / "out").exists()


def test_checkpoint_on_a_dataset_of_another_image_mode_is_named(tmp_path, ckpt):
    """A Double-MNIST (1-channel) model on CUB's RGB images: one line, before any data is
    read (it used to die in conv2d)."""
    cfg = compose_config([f"ckpt_path={ckpt}", f"paths.run_dir={tmp_path / 'eval'}",
                          "dataset=cub", f"dataset.root={tmp_path / 'no_cub_needed'}",
                          "progress=false"], config_name="evaluate")
    with pytest.raises(ConfigError, match=r"takes 1-channel images \(trained on DoubleMNIST\)"
                                          r", but CUB200's are 3-channel \(RGB\)"):
        evaluate(cfg)
    with pytest.raises(ConfigError, match="takes 1-channel images"):
        _retrieve(tmp_path, ckpt, "test", "test", "dataset=cub",
                  f"dataset.root={tmp_path / 'no_cub_needed'}")


# -- W&B ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("mode", "offline"), [(None, True), ("offline", True),
                                               ("online", False), ("disabled", False)])
def test_wandb_follows_wandb_mode(monkeypatch, mode, offline):
    if mode is None:
        monkeypatch.delenv("WANDB_MODE", raising=False)
    else:
        monkeypatch.setenv("WANDB_MODE", mode)
    assert compose_config(["logger=wandb"]).logger.wandb.offline is offline


def test_wandb_online_without_a_key_is_one_error_saying_what_to_do(make_cfg, tmp_path,
                                                                   monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc, no W&B settings
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg = make_cfg("logger=wandb")
    assert cfg.logger.wandb.offline is False
    with pytest.raises(ConfigError, match=r"W&B online \(WANDB_MODE=online, logger=wandb\) did "
                                          r"not start after \d+ s.*: .*API key.*wandb login.*"
                                          r"WANDB_MODE=offline"):
        train(cfg)
    assert not (Path(cfg.paths.run_dir) / "checkpoints").exists()
    # wandb keeps the online settings of this attempt in a process-wide singleton: later
    # in-process offline runs would start online (no API key) without this
    import wandb

    wandb.teardown()


def test_wandb_online_that_cannot_reach_its_server_leaves_no_wandb_folder(make_cfg, tmp_path,
                                                                         monkeypatch):
    """With a key but no server, wandb.init writes its run folder and logs before it gives up;
    the failed start removes them, and the empty run directory goes as train's does."""
    from see_dml.runtime.lock import remove_if_empty

    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WANDB_API_KEY", "a" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "3")
    cfg = make_cfg("logger=wandb", "callbacks.embedding_export=null")
    run_dir = Path(cfg.paths.run_dir)
    with pytest.raises(ConfigError, match=r"W&B online .* did not start after \d+ s"):
        train(cfg)
    assert not (run_dir / "wandb").exists()
    remove_if_empty(run_dir)
    assert not run_dir.exists()


def test_wandb_online_asked_by_the_config_is_bounded_by_its_key_and_named(make_cfg, tmp_path,
                                                                           monkeypatch):
    """The config asked for online (logger.wandb.offline=false), not WANDB_MODE: the message
    says so, and logger.wandb.settings.init_timeout bounds the wait (wandb's own default
    waited 108 s). No network: the server is a closed port on this machine."""
    import wandb

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WANDB_API_KEY", "a" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.delenv("WANDB_INIT_TIMEOUT", raising=False)
    cfg = make_cfg("logger=wandb", "logger.wandb.offline=false",
                   "logger.wandb.settings.init_timeout=2", "callbacks.embedding_export=null")
    try:
        with pytest.raises(ConfigError) as err:
            train(cfg)
    finally:
        wandb.teardown()
    line = str(err.value)
    assert line.startswith("W&B online (logger.wandb.offline=false, logger=wandb) did not "
                           "start after ")
    assert "(logger.wandb.settings.init_timeout=2 s)" in line and "WANDB_MODE=online" not in line
    assert int(line.split("did not start after ")[1].split(" s")[0]) < 60
    assert not (Path(cfg.paths.run_dir) / "wandb").exists()


def test_a_failed_wandb_start_keeps_the_earlier_runs_of_a_resumed_run(tmp_path, monkeypatch):
    """A resumed run's wandb/ holds its earlier (offline) W&B runs: only the new one goes,
    and the latest-run link points where it did."""
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    from see_dml.train import start_online_loggers

    folder = tmp_path / "wandb"
    (folder / "offline-run-1" / "logs").mkdir(parents=True)
    (folder / "latest-run").symlink_to("offline-run-1")

    def failed_start(self):
        (folder / "run-2" / "logs").mkdir(parents=True)
        (folder / "run-2" / "logs" / "debug.log").write_text("...")
        (folder / "latest-run").unlink()
        (folder / "latest-run").symlink_to("run-2")
        (folder / "debug.log").symlink_to("run-2/logs/debug.log")
        raise wandb.errors.CommError("context deadline exceeded")

    monkeypatch.setattr(WandbLogger, "experiment", property(failed_start))
    with pytest.raises(ConfigError, match="context deadline exceeded"):
        start_online_loggers([WandbLogger(save_dir=str(tmp_path), offline=False)])
    assert sorted(p.name for p in folder.iterdir()) == ["latest-run", "offline-run-1"]
    assert os.readlink(folder / "latest-run") == "offline-run-1"


# -- the machine's errors: a full disk, a place that may not be written ---------------------
def test_full_disk_is_one_line_naming_the_file(capsys):
    import errno

    from see_dml.runtime.cli import run_cli

    def task(cfg):
        raise OSError(errno.ENOSPC, "No space left on device", "/runs/x/checkpoints/last.ckpt")

    with pytest.raises(SystemExit) as stop:
        run_cli(task, None)
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: No space left on device '/runs/x/checkpoints/last.ckpt': free some space, or "
        "write elsewhere (paths.output_dir=..., the tool's output=...)"]

    def bug(cfg):
        raise OSError(errno.EBADF, "Bad file descriptor")  # a bug: traced as ever

    with pytest.raises(OSError, match="Bad file descriptor"):
        run_cli(bug, None)


def test_cli_export_to_a_place_that_may_not_be_written_exits_2_before_exporting(tmp_path):
    """Refused before the checkpoint is even read (it came after the whole export): the
    stand-in checkpoint here is no checkpoint at all, and is never opened."""
    target = "/sys/see_dml_test/model.onnx"  # EPERM even for root
    dummy = tmp_path / "model.ckpt"
    dummy.touch()
    last = _cli_error_line("see_dml.export", f"ckpt_path={dummy}", f"output={target}",
                           f"paths.output_dir={tmp_path / 'out'}", timeout=300)
    assert last == ("error: Operation not permitted '/sys/see_dml_test': give output=<a file "
                    "where you may write> (by default the export goes beside the checkpoint)")
    assert [p for p in (tmp_path / "out").rglob("*") if p.is_file()] == []


@pytest.mark.parametrize(("module", "args", "kind"), [
    ("see_dml.train", [], "run"),
    ("see_dml.train", ["-m"], "sweep"),
    ("see_dml.evaluate", ["ckpt_path=/no/such.ckpt"], "run"),
    ("see_dml.index", ["build", "ckpt_path=/no/such.ckpt", "index.path=x.faiss"], "run"),
])
def test_cli_output_dir_that_cannot_be_created_exits_2_naming_it(module, args, kind):
    """Hydra's own mkdir of the run (or sweep) directory traced back before any of ours."""
    last = _cli_error_line(module, *args, "paths.output_dir=/proc/see_dml_test")
    assert last.startswith(f"error: cannot create or write the {kind} directory "
                           "'/proc/see_dml_test/")
    assert "'/proc/see_dml_test'" in last and "give paths.output_dir a folder" in last


def test_a_run_directory_that_is_not_writable_is_refused_and_not_left(tmp_path, capsys,
                                                                     monkeypatch):
    import tempfile

    from omegaconf import OmegaConf

    from see_dml.runtime.hydra_hooks import RunDirectoryCreatable

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", kwargs.get("dir"))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)  # as a read-only mount answers
    run_dir = tmp_path / "out" / "train" / "runs" / "x"
    config = OmegaConf.create({"paths": {"output_dir": str(tmp_path / "out")},
                               "hydra": {"run": {"dir": str(run_dir)}}})
    with pytest.raises(SystemExit) as stop:
        RunDirectoryCreatable().on_run_start(config)
    assert stop.value.code == 2 and not run_dir.exists()
    assert f"Permission denied: '{run_dir}'" in capsys.readouterr().err
    monkeypatch.undo()
    RunDirectoryCreatable().on_run_start(config)  # writable: made, as Hydra would, and empty
    assert list(run_dir.iterdir()) == []


def test_truncated_jpeg_met_in_training_names_the_file_and_data_check(make_cfg, tmp_path):
    from helpers.dataset_fixtures import make_fixture, truncate_image

    fx = make_fixture("cub", tmp_path / "data", n_classes=4, per_class=4)
    bad = truncate_image(fx.images["train"][2])
    cfg = make_cfg("dataset=cub", f"paths.data_dir={tmp_path / 'data'}",
                   "dataset.val_fraction=0", "dataset.strict_counts=false",
                   "data.transforms.image_size=32", "data.transforms.resize=36",
                   "data.batch_size=8", "data.m_per_class=2", "data.eval_batch_size=16",
                   "callbacks.embedding_export=null", "test_final=false")
    with pytest.raises(UnreadableImageError) as err:
        train(cfg)
    for part in (str(bad), "python -m see_dml.data.check", "dataset.on_error=skip"):
        assert part in str(err.value)


def test_an_unreadable_image_from_a_dataloader_worker_is_one_line():
    from see_dml.runtime.errors import data_error_line

    wrapped = UnreadableImageError(  # as torch re-raises a worker's exception
        "Caught UnreadableImageError in DataLoader worker process 0.\nOriginal Traceback "
        "(most recent call last):\n  File \"x.py\", line 1, in <module>\n"
        "see_dml.data.base.UnreadableImageError: cannot read image '/d/a.jpg': truncated. "
        "Find every such file with python -m see_dml.data.check")
    assert data_error_line(wrapped) == ("cannot read image '/d/a.jpg': truncated. Find every "
                                        "such file with python -m see_dml.data.check")
    assert data_error_line(ValueError("x")) is None


def test_lightnings_usual_load_from_checkpoint_works(ckpt):
    from see_dml.module import DMLModule

    model = DMLModule.load_from_checkpoint(ckpt)
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    assert not model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    with torch.no_grad():
        out = model(torch.zeros(2, 1, 28, 56))
    assert out.shape == (2, 16) and torch.allclose(out.norm(dim=1), torch.ones(2))
    with pytest.raises(TypeError, match="takes no hparams_file or __init__ arguments"):
        DMLModule.load_from_checkpoint(ckpt, embed_dim=8)


def test_proxy_synthesis_with_a_loss_without_proxies_is_a_config_error(make_cfg):
    """A ConfigError (one 'error:' line from the CLI), not a ValueError traceback."""
    cfg = make_cfg("synthesis=proxy_synthesis", "loss=multi_similarity",
                   "callbacks.embedding_export=null")
    with pytest.raises(ConfigError, match="synthesis=proxy_synthesis mixes proxies, but "
                                          "loss=multi_similarity has none"):
        train(cfg)
    # before the data is built (it came after, ~100 s on a real dataset): no run directory
    assert not Path(cfg.paths.run_dir).exists()


@pytest.mark.parametrize("variable", ["LOCAL_RANK", "SLURM_PROCID", "NODE_RANK"])
def test_ddps_other_ranks_do_not_take_the_run_directory_lock(held_run_dir, monkeypatch,
                                                             variable):
    """DDP's other ranks run the script in the directory their rank zero holds."""
    from contextlib import nullcontext

    from omegaconf import OmegaConf

    from see_dml.runtime.hydra_hooks import RunDirectoryInUse
    from see_dml.train import _run_dir_lock

    run_dir, _ = held_run_dir
    monkeypatch.setenv(variable, "1")
    assert isinstance(_run_dir_lock(run_dir), nullcontext)
    RunDirectoryInUse().on_run_start(OmegaConf.create(  # no SystemExit
        {"task_name": "train", "hydra": {"run": {"dir": str(run_dir)}}}))
    monkeypatch.setenv(variable, "0")
    with pytest.raises(SystemExit):
        RunDirectoryInUse().on_run_start(OmegaConf.create(
            {"task_name": "train", "hydra": {"run": {"dir": str(run_dir)}}}))


# -- a checkpoint someone sent --------------------------------------------------------------
_EVIL = ("import os, sys, torch\n"
         "class Evil:\n"
         "    def __reduce__(self):\n"
         "        return (os.system, ('touch ' + sys.argv[2],))\n"
         "state = torch.load(sys.argv[3], map_location='cpu', weights_only=True)\n"
         "state['see_dml_config'] = Evil()\n"
         "torch.save(state, sys.argv[1])\n")


@pytest.fixture
def evil_ckpt(tmp_path: Path, ckpt: str) -> tuple[Path, Path]:
    """``(checkpoint, marker)``: a real checkpoint whose config unpickles by running a shell
    command that creates ``marker`` (written by a process of its own, as a stranger's file)."""
    evil, marker = tmp_path / "evil.ckpt", tmp_path / "PWNED"
    subprocess.run([sys.executable, "-c", _EVIL, str(evil), str(marker), ckpt], check=True,
                   timeout=120)
    assert evil.is_file() and not marker.exists()
    return evil, marker


def test_a_checkpoint_with_code_in_it_runs_nothing_in_any_reader(evil_ckpt, make_cfg):
    from see_dml.checkpoints.read import UnsafeCheckpointError
    from see_dml.checkpoints.write import DamagedCheckpointError, find_resumable
    from see_dml.module import DMLModule, load_module_from_checkpoint
    from see_dml.train import check_resume_config

    evil, marker = evil_ckpt
    readers = [read_checkpoint, load_module_from_checkpoint, DMLModule.load_from_checkpoint,
               lambda p: check_resume_config(make_cfg(), p)]
    for reader in readers:
        with pytest.raises(UnsafeCheckpointError) as err:
            reader(evil)
        line = str(err.value)
        assert "\n" not in line and f"'{evil}' holds 'posix.system'" in line, line
    with pytest.raises(DamagedCheckpointError, match="posix.system"):
        find_resumable(evil)  # resume's ckpt_path=auto: taken for damaged, not run
    assert not marker.exists()


@pytest.mark.parametrize(("module", "args"), [
    ("see_dml.evaluate", []),
    pytest.param("see_dml.index", ["build", "gallery=test"], marks=pytest.mark.slow),
    pytest.param("see_dml.retrieve", ["query=test"], marks=pytest.mark.slow),
    pytest.param("see_dml.export", [], marks=pytest.mark.slow),
])
def test_cli_of_a_checkpoint_with_code_in_it_exits_2_running_nothing(tmp_path, evil_ckpt,
                                                                     module, args):
    evil, marker = evil_ckpt
    extra = [f"index.path={tmp_path / 'x.faiss'}"] if module == "see_dml.index" else []
    last = _cli_error_line(module, *args, f"ckpt_path={evil}", *extra,
                           f"paths.output_dir={tmp_path / 'out'}")
    assert last.startswith(f"error: ckpt_path='{evil}' holds 'posix.system'")
    assert not marker.exists()
    assert [p for p in (tmp_path / "out").rglob("*") if p.is_file()] == []


def test_checkpoints_hold_only_what_the_safe_loader_reads(ckpt):
    """A checkpoint of this version loads with torch's weights_only=True as it is (no
    allowed globals): its config is plain containers."""
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert isinstance(state["see_dml_config"], dict)
    assert state["see_dml_config"]["model"]["embed_dim"] == 16


def test_a_checkpoint_of_an_older_see_dml_with_a_dictconfig_still_loads(ckpt, tmp_path):
    """Older see_dml stored the config as a DictConfig: its omegaconf types are allowed by
    name (see_dml.checkpoints.read.OMEGACONF_GLOBALS), nothing else."""
    from omegaconf import DictConfig, OmegaConf

    from see_dml.module import load_module_from_checkpoint

    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    state["see_dml_config"] = OmegaConf.create(state["see_dml_config"])
    old = tmp_path / "old.ckpt"
    torch.save(state, old)
    with pytest.raises(Exception, match="DictConfig"):  # torch alone refuses it
        torch.load(old, map_location="cpu", weights_only=True)
    assert isinstance(read_checkpoint(old)["see_dml_config"], DictConfig)
    module, cfg = load_module_from_checkpoint(old)
    assert cfg.model.embed_dim == 16 and not module.training


def test_a_run_refused_for_a_held_directory_writes_none_of_hydras_files_there(tmp_path):
    """Two trainings into one hydra.run.dir: the first is paused just after Hydra wrote its
    .hydra files (before its task runs); the second is refused, and the first run's
    config.yaml, hydra.yaml and overrides.yaml are still the first run's (the second used
    to pass the check before the first held the lock, and wrote its own over them)."""
    import time

    run_dir, ready, go = tmp_path / "run", tmp_path / "ready", tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    first = subprocess.Popen(
        [sys.executable, "-m", "see_dml.train", f"hydra.run.dir={run_dir}", "seed=1",
         "+hydra.callbacks.pause._target_=helpers.hydra_pause.PauseAtJobStart",
         f"+hydra.callbacks.pause.ready={ready}", f"+hydra.callbacks.pause.go={go}",
         f"paths.cache_dir={tmp_path / 'cache'}"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        end = time.monotonic() + 120
        while not ready.exists() and first.poll() is None and time.monotonic() < end:
            time.sleep(0.05)
        assert ready.exists(), first.stderr.read() if first.poll() is not None else "timeout"
        hydra_files = {name: (run_dir / name).read_text() for name in (
            ".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", "train.log")}
        assert "seed=1" in hydra_files[".hydra/overrides.yaml"]
        second = subprocess.run(
            [sys.executable, "-m", "see_dml.train", f"hydra.run.dir={run_dir}", "seed=2", *FAST,
             "dataset.images_per_class=20", "callbacks.embedding_export=null",
             f"paths.cache_dir={tmp_path / 'cache'}"], env=env, capture_output=True, text=True,
            timeout=300)
        assert second.returncode == 2, second.stderr[-2000:]
        assert "Traceback" not in second.stderr
        assert second.stderr.strip().splitlines()[-1].startswith(
            f"error: run directory '{run_dir}' is in use by pid {first.pid} ")
        for name, text in hydra_files.items():
            assert (run_dir / name).read_text() == text, name
        assert sorted(p.name for p in run_dir.iterdir()) == [  # nothing of the second's
            ".hydra", ".see_dml.lock", ".see_dml.lock.holder", "train.log"]
    finally:
        go.touch()
        first.wait(timeout=60)


def test_a_run_that_fails_after_its_data_is_built_leaves_the_error_in_its_log(tmp_path):
    """A run directory that stays (its csv log was written) holds the error in train.log."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "see_dml.train", f"hydra.run.dir={run_dir}", *FAST,
         "dataset.images_per_class=20", "+callbacks.fail._target_=helpers.preemption.FailAt",
         f"paths.cache_dir={tmp_path / 'cache'}"], env=env, capture_output=True, text=True,
        timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == "error: failing on cue at step 1"
    assert (run_dir / "csv").is_dir()  # the directory stays: its log says why it stopped
    assert (run_dir / "train.log").read_text().strip().splitlines()[-1].endswith(
        "error: failing on cue at step 1")
    assert not (run_dir / ".see_dml.lock.holder").exists()


def test_on_error_skip_leaves_an_unreadable_test_image_out_and_counts_it(tmp_path, capsys):
    """dataset.on_error=skip in an evaluation split: the unreadable image has no row (it
    used to be replaced by another image of its class: an exact duplicate, a free Recall@1
    hit for both, and the unreadable file's path on the other image's embedding); the
    metrics count it, and the table says so."""
    from see_dml.evaluation.report import evaluate_embeddings, format_results
    from see_dml.serving.inference import embed_split

    files = []
    for i, colour in enumerate([(255, 0, 0), (250, 5, 0), (0, 0, 255), (0, 5, 250)]):
        files.append(tmp_path / f"{i}.png")
        Image.new("RGB", (8, 8), colour).save(files[-1])
    files[1].write_bytes(b"not an image")
    split = Split(files, np.array([0, 0, 1, 1]), "test")
    dataset = RetrievalDataset(split, lambda im: torch.from_numpy(np.asarray(im, np.float32)
                                                                  ).permute(2, 0, 1).flatten(),
                               "RGB", "skip")
    module = torch.nn.Sequential(torch.nn.Linear(192, 4), torch.nn.Identity())
    emb, labels, idx = embed_split(module, dataset, batch_size=4, device="cpu", progress=False)
    assert idx.tolist() == [0, 2, 3] and labels.tolist() == [0, 1, 1] and len(emb) == 3
    result = evaluate_embeddings("test", {"test": (emb, labels, idx)}, [1],
                                 skipped={"test": len(dataset) - len(idx)})
    assert result.metrics["skipped_images"] == 1
    table = format_results(result.prefixed_metrics(), {"test": "selected"})
    assert table.splitlines()[-1] == ("(selected: 1 unreadable image left out and not scored, "
                                      "dataset.on_error=skip)")
    # training still trains on the class's next image in its place
    train_set = RetrievalDataset(split, None, "RGB", "skip", substitute=True)
    assert train_set[1][2] == 1 and np.array_equal(np.asarray(train_set[1][0]),
                                                   np.asarray(Image.open(files[0])))


def test_full_disk_during_a_checkpoint_write_names_the_directory_and_the_space(tmp_path,
                                                                               monkeypatch):
    """torch's writer raises 'RuntimeError: ... unexpected pos' around the ENOSPC of a full
    disk (a 60-line traceback from inside the fit): one line naming the directory, what was
    written and what is free; the partial file is gone and the previous checkpoint kept."""
    import errno

    from see_dml.checkpoints import write as checkpoint_io
    from see_dml.runtime.errors import user_error_line

    target = tmp_path / "checkpoints" / "last.ckpt"
    checkpoint_io.atomic_torch_save({"epoch": 0}, target)

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"x" * 4096)
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos "
                               "704 vs 598") from None

    monkeypatch.setattr(checkpoint_io.torch, "save", full_disk)
    with pytest.raises(OSError) as err:
        checkpoint_io.AtomicCheckpointIO().save_checkpoint({"epoch": 1}, target)
    line = user_error_line(err.value)
    assert line is not None and "\n" not in line
    assert line.startswith(f"No space left on device while writing a checkpoint into "
                           f"'{target.parent}' (4.0 KB written when it failed, ")
    assert " free there) " in line and "paths.output_dir" in line
    monkeypatch.undo()
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]
    assert torch.load(target, weights_only=True) == {"epoch": 0}


def test_cli_cache_dir_that_cannot_be_written_names_its_key(tmp_path):
    """A dataset cache that cannot be written is blamed on paths.cache_dir /
    SEE_DML_CACHE_DIR (it was blamed on paths.output_dir), before the data is built; no run
    directory is left."""
    out = tmp_path / "out"
    last = _cli_error_line("see_dml.train", "paths.cache_dir=/sys/see_dml_cache",
                           f"paths.output_dir={out}")
    assert last.startswith("error: Operation not permitted '/sys/see_dml_cache': the dataset "
                           "cache '/sys/see_dml_cache' is dataset.root, by default "
                           "paths.cache_dir (or the environment's SEE_DML_CACHE_DIR)")
    assert "paths.output_dir" not in last
    assert [p for p in out.rglob("*") if p.is_file()] == []


def test_cli_config_dir_variable_pointing_nowhere_is_named(tmp_path):
    env = {**os.environ, "SEE_DML_CONFIG_DIR": str(tmp_path / "no_conf")}
    for module in ("see_dml.train", "see_dml.evaluate"):
        proc = subprocess.run([sys.executable, "-m", module, f"paths.output_dir={tmp_path}"],
                              capture_output=True, text=True, timeout=120, env=env)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert proc.stderr.strip().splitlines() == [
            f"error: SEE_DML_CONFIG_DIR='{tmp_path / 'no_conf'}' is not a folder, so it has "
            f"no {module.split('.')[-1]}.yaml: point it at a whole config tree of your own (a "
            "copy of the package's conf/ folder), or unset it to use the package's configs"]
    assert list(tmp_path.iterdir()) == []


def test_cli_unreachable_server_is_one_short_line(tmp_path):
    """A closed port on this machine (no network needed): one short error line, status 2."""
    root = tmp_path / "data" / "cub"
    run = subprocess.run([sys.executable, "-m", "see_dml.data.download", "dataset=cub",
                          f"dataset.root={root}", "base_url=http://127.0.0.1:9", "retries=1",
                          "progress=false"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1] == (
        "error: CUB_200_2011.tgz: could not be fetched (http://127.0.0.1:9/CUB_200_2011.tgz: "
        "cannot connect (Connection refused) (2 tries))")
    assert not (tmp_path / "data").exists()

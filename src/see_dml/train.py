"""Train an embedding: ``python -m see_dml.train [group=option ...] [key=value ...]``.

Builds everything from the composed Hydra config, fits with checkpoint selection on the
validation classes, then evaluates the selected checkpoint (``test/...``) and the final
weights (``test_final/...``) on the test classes; with ``test_every_epoch=true`` also the
papers' best epoch on the test classes (``best_on_test/...``, for comparison with published
numbers only: it selects nothing). The run directory gets the resolved
``config.yaml``, ``metrics.json``, checkpoints and logs; the last line printed names it.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from see_dml.evaluation.report import best_on_test, format_results, write_metrics
from see_dml.runtime.cli import FailurePolicy, run_cli
from see_dml.runtime.config import ADDED_KEYS, flatten, hydra_main, hydra_quote
from see_dml.runtime.errors import (
    ConfigError,
    NotARunError,
    RunDirectoryLockedError,
)
from see_dml.runtime.hydra_hooks import FAILURE_FILE, record_failed_job
from see_dml.runtime.lock import is_rank_zero, lock_run_dir, remove_if_empty
from see_dml.serving.inference import torch_threads
from see_dml.training.components import build_callbacks, build_datamodule, build_loggers
from see_dml.training.config_checks import NO_VALIDATION_CLASSES, objective_value, validate_config

# torch, Lightning, timm and faiss are imported where they are used: they take seconds to
# load, and a mistyped key, option or value must fail (or --help answer) before that.
if TYPE_CHECKING:
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from see_dml.data.base import DatasetSource
    from see_dml.data.datamodule import RetrievalDataModule
    from see_dml.module import DMLModule

log = logging.getLogger(__name__)


def start_online_loggers(loggers: list[Any]) -> None:
    """Start an online W&B run now, so that no API key or no network is one
    :class:`ConfigError` saying what to do and how long it waited, before training (and not
    a traceback from inside ``trainer.fit``). What the failed start wrote (its ``wandb/``
    run folder and logs) is removed: a failed run leaves nothing behind."""
    if "wandb" not in sys.modules:  # only WandbLogger imports it
        return
    import time

    import wandb
    from lightning.pytorch.loggers import WandbLogger

    for logger in loggers:
        if not isinstance(logger, WandbLogger) or getattr(logger, "_offline", True):
            continue
        folder = Path(logger.save_dir) / "wandb" if logger.save_dir else None
        before = _folder_entries(folder)
        start = time.monotonic()
        try:
            _ = logger.experiment
        except wandb.errors.Error as err:
            waited = time.monotonic() - start
            if folder is not None:
                _undo_failed_start(folder, before)
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            settings = getattr(logger, "_wandb_init", {}).get("settings")
            timeout = getattr(settings, "init_timeout", None)
            bound = (f" (logger.wandb.settings.init_timeout={timeout:g} s)"
                     if isinstance(timeout, (int, float)) else "")
            raise ConfigError(
                f"W&B online ({_online_asked_by()}, logger=wandb) did not start after "
                f"{waited:.0f} s{bound}: {first}. Log in with `wandb login` (or set "
                "WANDB_API_KEY) and check the network (WANDB_BASE_URL), or run offline with "
                "WANDB_MODE=offline and upload later with `wandb sync`") from err


def _online_asked_by() -> str:
    """What asked for W&B online: the environment (``WANDB_MODE=online``), else the config
    (``logger.wandb.offline=false``; W&B's default mode is online)."""
    mode = os.environ.get("WANDB_MODE")
    return f"WANDB_MODE={mode}" if mode else "logger.wandb.offline=false"


def _folder_entries(folder: Path | None) -> dict[str, str | None] | None:
    """``{name: symlink target, or None}`` of what ``folder`` holds; None if it does not
    exist."""
    if folder is None or not folder.is_dir():
        return None
    return {p.name: os.readlink(p) if p.is_symlink() else None for p in folder.iterdir()}


def _undo_failed_start(folder: Path, before: dict[str, str | None] | None) -> None:
    """Remove what a failed ``wandb.init`` wrote into ``folder`` (``<run dir>/wandb``): all of
    it when it made the folder, else its new entries, with the ``latest-run`` and
    ``debug*.log`` links pointed back where they were (a resumed run's earlier W&B runs,
    offline ones to ``wandb sync``, are kept). W&B's service is stopped first, so that it
    writes no more into it (and a later run in this process starts afresh)."""
    import shutil
    from contextlib import suppress

    import wandb

    with suppress(Exception):  # a half-started service may already be gone
        wandb.teardown()
    if before is None:
        shutil.rmtree(folder, ignore_errors=True)
        return
    for entry in list(folder.iterdir()) if folder.is_dir() else []:
        if entry.name not in before:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            continue
        target = before[entry.name]
        if target is not None and entry.is_symlink() and os.readlink(entry) != target:
            entry.unlink()
            entry.symlink_to(target)


def _checkpoint_callback(trainer: L.Trainer) -> ModelCheckpoint | None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    # Lightning sets Trainer.callbacks in its connector without declaring the attribute
    callbacks = trainer.callbacks  # type: ignore[attr-defined]
    return next((c for c in callbacks if isinstance(c, ModelCheckpoint)), None)


def _last_checkpoint_file(callbacks: list[Any]) -> Path | None:
    """Where ``callbacks.last_checkpoint`` writes the final epoch every epoch
    (``<dirpath>/last.ckpt``): ``ckpt_path=auto`` resumes from it, ``test_final`` tests it.
    None without such a callback."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    for cb in callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.filename == "last" and cb.dirpath:
            return Path(cb.dirpath) / f"last{cb.FILE_EXTENSION}"
    return None


def _epochs_run(trainer: L.Trainer, ckpt_cb: ModelCheckpoint | None, last: Path | None) -> int:
    """Epochs run. Under ``ddp_spawn`` the fit runs in worker processes that hand back only
    ``best_model_path`` (this process's trainer stays at step 0): the best score and the epoch
    count are then read from ``last.ckpt``."""
    if trainer.global_step > 0 or ckpt_cb is None or last is None:
        return trainer.current_epoch
    from see_dml.checkpoints.read import load_checkpoint_file

    state = load_checkpoint_file(last)
    if ckpt_cb.best_model_score is None:
        ckpt_cb.best_model_score = state.get("callbacks", {}).get(ckpt_cb.state_key, {}).get(
            "best_model_score")
    return int(state["epoch"]) + 1


def _test_history(trainer: L.Trainer, model: DMLModule, last: Path | None
                  ) -> dict[int, dict[str, float]]:
    """The per-epoch test metrics of ``test_every_epoch`` (the module's ``test_history``,
    restored on resume). Read before any ``trainer.test`` loads another checkpoint into the
    module; under ``ddp_spawn`` the fit ran in worker processes: read from ``last.ckpt``."""
    if trainer.global_step > 0 or last is None:
        return dict(model.test_history)
    from see_dml.checkpoints.read import load_checkpoint_file

    state = load_checkpoint_file(last)
    return {int(e): dict(m) for e, m in state.get("see_dml_test_history", {}).items()}


def _resolve_ckpt_path(ckpt_path: str | None, last: Path | None) -> str | None:
    """``ckpt_path=auto``: ``last.ckpt`` when it exists; a damaged one is named, and the newest
    intact checkpoint beside it is used (:func:`see_dml.checkpoints.write.find_resumable`)."""
    if ckpt_path != "auto":
        return ckpt_path
    if last is None or not last.exists():
        return None
    from see_dml.checkpoints.write import find_resumable

    return str(find_resumable(last))


#: Keys a resumed run may change: where things go, how long it trains, how it reports.
RESUMABLE_CHANGES = ("ckpt_path", "resume", "paths.", "logger.", "callbacks.", "hydra.",
                     "trainer.max_epochs", "trainer.max_steps", "trainer.enable_progress_bar",
                     "data.num_workers", "data.eval_batch_size", "tags", "test_final", "nmi",
                     "metrics.", "knn_backend", "model.compile", "test_every_epoch", "test_epochs",
                     "objective", "threads")

#: The last part of a key that says where something lives, not what the run is: a run
#: directory that was moved or copied (another ``trainer.default_root_dir``), a dataset or
#: weights file found under another folder, resume with them changed. (The weights file
#: only starts a run: a resumed one takes its weights from the checkpoint.)
PATH_KEYS = ("default_root_dir", "root", "dirpath", "save_dir", "weights_path", "data_dir",
             "output_dir", "cache_dir", "run_dir")


def _changes_training(key: str) -> bool:
    """Whether a resumed run whose config differs at ``key`` trains another experiment
    (see :data:`RESUMABLE_CHANGES` and :data:`PATH_KEYS`)."""
    return not key.startswith(RESUMABLE_CHANGES) and key.rsplit(".", 1)[-1] not in PATH_KEYS


def check_resume_config(cfg: DictConfig, ckpt: str | Path) -> None:
    """Fail, naming the keys, when ``ckpt`` was trained with another config than ``cfg``.

    Runs before anything in the run directory is written. Only what changes the training
    is compared: the keys of :data:`RESUMABLE_CHANGES` (paths, loggers, training length,
    reporting) and of :data:`PATH_KEYS` (where a run, its data or its weights live: a
    moved run directory resumes) may differ; anything else (a model, loss or data key)
    would resume into another experiment, or fail later with a raw ``size mismatch``.
    """
    from see_dml.checkpoints.read import load_checkpoint_file

    # weights only, as every tool reads a checkpoint: ckpt_path may be someone else's file
    stored = load_checkpoint_file(ckpt, mmap=True)
    if not isinstance(stored, dict) or "state_dict" not in stored:
        raise ConfigError(f"ckpt_path='{ckpt}' is not a Lightning checkpoint (no 'state_dict')")
    before = stored.get("see_dml_config")
    if before is None:
        return  # a checkpoint from elsewhere: Lightning itself checks what it can
    if isinstance(before, DictConfig):  # an older see_dml stored the DictConfig itself
        before = OmegaConf.to_container(before, resolve=False)
    old = flatten(before)
    new = flatten(OmegaConf.to_container(cfg, resolve=True))
    old = {**{k: v for k, v in ADDED_KEYS.items() if k not in old and k in new}, **old}
    differ = sorted(k for k in old.keys() | new.keys()
                    if old.get(k, "<absent>") != new.get(k, "<absent>") and _changes_training(k))
    if differ:
        shown = ", ".join(f"{k} (checkpoint {old.get(k, '<absent>')!r}, now "
                          f"{new.get(k, '<absent>')!r})" for k in differ[:8])
        more = f" and {len(differ) - 8} more" if len(differ) > 8 else ""
        raise ConfigError(
            f"ckpt_path='{ckpt}' was trained with another config: {shown}{more}. Resume with "
            "the run's own settings (its config.yaml), or start a new run with ckpt_path=null")


#: Hydra overrides that place one run of a sweep (or are Hydra's own): the resumed run gets
#: its place from ``resume=``.
_PLACEMENT = ("hydra.mode=", "hydra.run.dir=", "hydra.sweep.dir=", "hydra.sweep.subdir=",
              "hydra.job.num=", "hydra.job.id=")


def resume_command(cfg: DictConfig) -> str:
    """The command that resumes (or extends, with a larger ``trainer.max_epochs``) this run
    in its own directory: this interpreter (``sys.executable``), every command-line override
    of the run as it was given, ``hydra.*`` ones too (a loss found through
    ``hydra.searchpath`` resumes only with it), plus ``resume=<run dir>``; quoted for the
    shell, and the run directory for Hydra (:func:`see_dml.runtime.config.hydra_quote`), so that it
    works as printed."""
    try:
        from hydra.core.hydra_config import HydraConfig

        given = HydraConfig.get().overrides
        overrides = [*(o for o in given.hydra if not o.startswith(_PLACEMENT)),
                     *(o for o in given.task if not o.startswith(("resume=", "ckpt_path=")))]
    except ValueError:  # called outside a Hydra app (tests, notebooks)
        overrides = []
    run_dir = str(Path(cfg.paths.run_dir).resolve())
    # the running interpreter by its full path: the command works from a shell where the
    # virtual environment is not activated; quoted for the shell, and the run directory
    # for Hydra too (a non-ASCII letter or a space is no plain Hydra value)
    return shlex.join([sys.executable or "python", "-m", "see_dml.train", *overrides,
                       f"resume={hydra_quote(run_dir)}"])


def _fit(trainer: L.Trainer, model: DMLModule, dm: RetrievalDataModule, ckpt: str | None,
         cfg: DictConfig) -> None:
    """``trainer.fit``; a SIGTERM or Ctrl-C ends the process non-zero with the resume command.

    Lightning turns SIGTERM into a ``SystemExit`` with status 0 (and Ctrl-C into status 1),
    which schedulers and ``train && evaluate`` chains take for success. ``last.ckpt`` holds
    the last finished epoch (written at every epoch's end); the resumed run redoes the epoch
    that was cut short, bit for bit as an unbroken run would.
    """
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from see_dml.checkpoints.read import safe_loading

    try:
        # Lightning's resume loads weights only too (the omegaconf types of an older
        # see_dml's config allowed by name): resuming needs nothing more
        with safe_loading():
            trainer.fit(model, datamodule=dm, ckpt_path=ckpt, weights_only=True)
    except SIGTERMException:
        status, why = 143, "SIGTERM"
    except SystemExit as stop:
        # Lightning's sys.exit(1) after Ctrl-C; any other exit (submitit's requeue on a
        # preemption signal, say) is not ours to change
        if not isinstance(stop.__context__, KeyboardInterrupt):
            raise
        status, why = 130, "interrupted"
    else:
        return
    if trainer.is_global_zero:
        sweep = ""
        if _in_multirun():
            from hydra.core.hydra_config import HydraConfig

            hc = HydraConfig.get()
            # the basic launcher runs the jobs one after another in this process: the exit
            # ends the sweep (submitit's jobs are processes of their own, and go on)
            if hc.runtime.choices.get("hydra/launcher") == "basic":
                sweep = (f"\nThis was job {hc.job.num} of a local sweep: the sweep stops here, "
                         "and its later jobs did not start.")
        print(f"\n{why}: stopped at epoch {trainer.current_epoch}, step {trainer.global_step}; "
              f"last.ckpt holds the last finished epoch.{sweep}\n"
              f"Resume with: {resume_command(cfg)}", file=sys.stderr, flush=True)
    sys.exit(status)


def check_accelerator(cfg: DictConfig) -> None:
    """:class:`ConfigError` when the trainer asks for GPUs (``trainer=gpu``/``ddp``, the paper
    recipes) on a machine without one: Lightning's own error says only "No supported gpu
    backend found!", after the data is built."""
    import torch

    accelerator = str(OmegaConf.select(cfg, "trainer.accelerator", default="auto"))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={accelerator} (trainer=gpu / ddp, and the paper recipes) but "
            "this machine has no CUDA GPU: run it on a GPU node, or on the CPU with "
            "trainer.accelerator=cpu (with trainer.strategy=auto trainer.devices=1 for a "
            "DDP recipe, and trainer.precision=32-true or bf16-mixed)")
    precision = str(OmegaConf.select(cfg, "trainer.precision", default="32-true"))
    if accelerator == "cpu" and precision in ("16-mixed", "16", "16-true"):
        raise ConfigError(f"trainer.precision={precision} needs a GPU; on the CPU use "
                          "trainer.precision=32-true or bf16-mixed")


def check_synthesis_fits_loss(cfg: DictConfig) -> None:
    """:class:`ConfigError` for ``synthesis=proxy_synthesis`` with a loss that has no
    proxies, before the data is built (the callback's own check comes at the fit, after
    it). The loss is built for 2 classes to see whether it has class weights, with the
    random state set back (its proxies' initialisation draws from it)."""
    target = str(OmegaConf.select(cfg, "synthesis._target_", default="") or "")
    if not target.endswith(".ProxySynthesisCallback"):
        return
    import torch

    from see_dml.losses import build_metric_loss

    with torch.random.fork_rng(devices=[]):
        kind = build_metric_loss(cfg.loss, 2, int(cfg.model.embed_dim)).kind
    if kind != "proxy":
        raise ConfigError(f"synthesis=proxy_synthesis mixes proxies, but loss="
                          f"{OmegaConf.select(cfg, 'loss.name', default='?')} has none; use "
                          "loss=proxy_anchor, norm_softmax or arcface")


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit and test as configured; return the flat metrics written to ``metrics.json``."""
    validate_config(cfg)
    check_resume_dir(cfg)
    check_accelerator(cfg)
    check_synthesis_fits_loss(cfg)
    with _run_dir_lock(Path(cfg.paths.run_dir)), torch_threads(cfg.get("threads")):
        return _train_locked(cfg)


def check_resume_dir(cfg: DictConfig) -> None:
    """:class:`NotARunError` when ``resume=<dir>`` is not a run directory (no ``config.yaml``,
    no ``checkpoints/``): a typo, or another folder, would else train from scratch there.
    Hydra has made the directory by now, so existing is no sign."""
    resume = cfg.get("resume")
    if resume is None:
        return
    path = Path(str(resume)).expanduser()
    if (path / "config.yaml").is_file() or (path / "checkpoints").is_dir():
        return
    raise NotARunError(
        f"resume='{resume}' is not a run directory (no config.yaml or checkpoints/ in it): "
        "give a directory a training printed as 'Run directory: ...', or leave resume out "
        "to start a new run")


def _global_rank_zero() -> bool:
    """Whether this process is DDP's global rank zero, before a trainer says so: DDP's other
    ranks run this script too, in the same run directory (Lightning's subprocess launcher on
    one node; every task of a multi-node SLURM job, whose node-local rank zero is not the
    global one), and the run directory's files are the global rank zero's alone."""
    from lightning.pytorch.utilities import rank_zero_only

    # Lightning sets rank_zero_only.rank at import (0 when no launcher says otherwise)
    return getattr(rank_zero_only, "rank", 0) == 0 and is_rank_zero()


def _run_dir_lock(run_dir: Path) -> AbstractContextManager[None]:
    """The run directory's lock (:func:`see_dml.runtime.lock.lock_run_dir`), taken by the global
    rank zero only (:func:`_global_rank_zero`)."""
    return lock_run_dir(run_dir) if _global_rank_zero() else nullcontext()


def _train_locked(cfg: DictConfig) -> dict[str, Any]:
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

    from see_dml.module import DMLModule, build_backbone
    from see_dml.runtime.cli import one_lightning_console

    one_lightning_console()
    L.seed_everything(cfg.seed, workers=True)
    if cfg.get("matmul_precision"):
        torch.set_float32_matmul_precision(cfg.matmul_precision)
    run_dir = Path(cfg.paths.run_dir)
    callbacks = build_callbacks(cfg)
    last_file = _last_checkpoint_file(callbacks)
    # every file of the run directory is written (and removed) by the global rank zero
    # alone; the other ranks read what it wrote
    rank_zero = _global_rank_zero()
    if last_file is not None and rank_zero:  # what a killed checkpoint write left (ours)
        from see_dml.checkpoints.write import remove_partial_checkpoints

        remove_partial_checkpoints(last_file.parent)
    ckpt = _resolve_ckpt_path(cfg.get("ckpt_path"), last_file)
    if ckpt is not None:  # before anything in the run directory is touched
        check_resume_config(cfg, ckpt)
    if rank_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / FAILURE_FILE).unlink(missing_ok=True)  # an earlier attempt's error line
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))

    source: DatasetSource = instantiate(cfg.dataset)
    source.splits()  # a missing dataset fails here, before a backbone fetches its weights
    backbone = build_backbone(cfg, source.image_mode)
    dm = build_datamodule(cfg, backbone, source)
    log.info("data: %s", dm.describe_line())
    model = DMLModule.from_config(cfg, dm.num_classes, backbone, source)

    trainer_kwargs: dict[str, Any] = {}
    test_every_epoch = bool(cfg.get("test_every_epoch", False))
    if not dm.has_val:
        # No validation classes (val_fraction=0, the papers' protocol): keep the last epoch.
        if not test_every_epoch:  # else the validation loop scores the test split(s) alone
            trainer_kwargs["limit_val_batches"] = 0
        for cb in callbacks:
            if isinstance(cb, ModelCheckpoint):
                cb.monitor, cb.save_top_k = None, 1
    loggers = build_loggers(cfg)
    start_online_loggers(loggers)
    if not loggers:  # logger=none: LearningRateMonitor refuses to run without a logger
        callbacks = [cb for cb in callbacks if not isinstance(cb, LearningRateMonitor)]
    # every checkpoint whole or absent: written beside its target, fsync'ed, renamed
    from see_dml.checkpoints.write import AtomicCheckpointIO

    plugins = [*(instantiate(cfg.trainer.get("plugins")) or []), AtomicCheckpointIO()]
    # a SIGTERM (or SLURM's requeue signal) that reaches one DDP task stops them all at the
    # same step; Lightning's own handlers would mismatch the tasks' collectives
    from see_dml.callbacks.signals import SynchronizedSignals

    callbacks = [*callbacks, SynchronizedSignals()]
    if ckpt is not None:  # a run moved since: its checkpoints' paths follow it
        from see_dml.callbacks.relocated import RelocatedRun

        callbacks = [*callbacks, RelocatedRun(run_dir)]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, plugins=plugins,
                                     logger=loggers or False, **trainer_kwargs)
    _fit(trainer, model, dm, ckpt, cfg)

    metrics: dict[str, Any] = {}
    ckpt_cb = _checkpoint_callback(trainer)
    last = last_file if last_file is not None and last_file.exists() else None
    epochs = _epochs_run(trainer, ckpt_cb, last)
    best = ckpt_cb.best_model_path if ckpt_cb and ckpt_cb.best_model_path else None
    # before the tests: each loads a checkpoint, and with it that checkpoint's history
    history = _test_history(trainer, model, last) if test_every_epoch else {}
    runs: list[tuple[str, str | None]] = [("test", best)]
    # the embedding export's files and plots come after metrics.json, which they never cost
    from see_dml.callbacks.embedding_export import EmbeddingExport

    export = next((cb for cb in trainer.callbacks  # type: ignore[attr-defined]
                   if isinstance(cb, EmbeddingExport)), None)
    if export is not None:
        export.hold()
    if cfg.get("test_final", True) and best and last and Path(best) != Path(last):
        runs.append(("test_final", str(last)))
    from see_dml.checkpoints.read import safe_loading

    for prefix, ckpt in runs:
        with model.test_metrics_prefix(prefix), safe_loading():
            trainer.test(model, datamodule=dm, ckpt_path=ckpt, weights_only=True)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()
                        if k.startswith(prefix + "/")})
    if best and ckpt_cb is not None and ckpt_cb.best_model_score is not None:
        metrics[f"best/{ckpt_cb.monitor}"] = float(ckpt_cb.best_model_score)
    metrics["best_checkpoint"] = best
    metrics["epochs"] = epochs
    if not any(k.startswith("test_final/") for k in metrics):  # selected == final weights
        metrics.update({k.replace("test/", "test_final/"): v for k, v in metrics.items()
                        if k.startswith("test/")})
    # the papers' protocol, for comparison only: the epoch with the best test recall@1
    # (best_on_test/epoch, 0-based as the checkpoint names); it selected nothing
    metrics.update(best_on_test(history))
    if test_every_epoch and not history:
        log.warning("test_every_epoch=true but no epoch was tested: no best_on_test/...")
    if trainer.is_global_zero:  # every rank has the metrics; rank zero writes the files
        write_metrics(run_dir, metrics, trainer)  # with its provenance (code, libraries, devices)
        if export is not None:
            export.release(trainer, dm)  # embeddings_<split>.npz, projection, recall curve, grid

    if "wandb" in sys.modules and sys.modules["wandb"].run is not None:
        # W&B prints its sync hints when its run finishes: before our last lines, not after
        sys.modules["wandb"].finish()
    if trainer.is_global_zero:
        print(f"\nResults on {source.name} test classes ({dm.describe_line()}):")
        print(format_results(metrics))
        print(f"Resume or extend (a larger trainer.max_epochs): {resume_command(cfg)}")
        print(f"Run directory: {run_dir.resolve()}")
    return metrics


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _in_basic_sweep() -> bool:
    """A multirun of Hydra's basic sweeper, which ends the sweep with the first failed job's
    traceback (see :mod:`see_dml.runtime.hydra_hooks`), whichever launcher runs the jobs (in
    this process, or submitit's processes of their own). Other sweepers read the job's return
    value (optuna's objective): a failure is raised."""
    if not _in_multirun():
        return False
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.choices.get("hydra/sweeper") == "basic"


def _remove_hydra_output() -> None:
    """Remove the ``.hydra/resume-<time>_<run uid>`` folder Hydra wrote for this process
    (``.hydra`` too when that leaves it empty) and its job log when nothing was logged."""
    from hydra.core.hydra_config import HydraConfig

    from see_dml.runtime.config import RUN_UID

    if not HydraConfig.initialized():
        return
    import shutil

    hydra_dir = Path(HydraConfig.get().runtime.output_dir) / ".hydra"
    for ours in hydra_dir.glob(f"resume-*_{RUN_UID}"):
        shutil.rmtree(ours, ignore_errors=True)
    if hydra_dir.is_dir() and not any(hydra_dir.iterdir()):
        hydra_dir.rmdir()
    job_log = hydra_dir.parent / f"{HydraConfig.get().job.name}.log"
    if job_log.is_file() and job_log.stat().st_size == 0:  # opened by Hydra, nothing in it
        job_log.unlink()


def _log_to_file(line: str | None, err: BaseException) -> None:
    """Write why the run failed into its log file (Hydra's ``<run dir>/train.log``), which
    a run directory that stays keeps beside its other files: the error line, or a bug's
    traceback. Only to the file: the console gets the ``error:`` line (or the traceback)
    from the caller."""
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    if not handlers:
        return
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "error: %s",
                            (line or f"{type(err).__name__}: {err}",),
                            None if line else (type(err), err, err.__traceback__))
    for handler in handlers:
        handler.handle(record)


def _release_run_dirs(cfg: DictConfig) -> None:
    """Give up the run directory this process took at Hydra's run start (and the one of
    ``paths.run_dir``): the process ends next, and the directory may be removed."""
    from see_dml.runtime.lock import release_run_dir

    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            release_run_dir(HydraConfig.get().run.dir)
        release_run_dir(cfg.paths.run_dir)
    except Exception:  # noqa: BLE001 - an unresolvable path: nothing of ours to give up
        pass


class TrainFailure(FailurePolicy):
    """What a failed training does around :func:`~see_dml.runtime.cli.run_cli`'s error path,
    for what sweeps and DDP need."""

    def recorded(self, err: Exception, line: str | None) -> bool:
        if not _in_basic_sweep():
            return False
        # recorded: the sweep goes on, and ends listing this job
        from hydra.core.hydra_config import HydraConfig

        if line is None:  # a bug: its traceback now, in this job's output
            import traceback

            traceback.print_exc()
        else:
            print(f"error: {line}", file=sys.stderr)
        # a locked run directory is another run's: the record stays in memory; DDP's other
        # ranks (a multi-task SLURM job) leave the file to the global rank zero
        if not isinstance(err, RunDirectoryLockedError):
            _log_to_file(line, err)
        record_failed_job(HydraConfig.get().runtime.output_dir,
                          line or f"{type(err).__name__}: {err} (traceback in the job's "
                          "output)", user_error=line is not None,
                          write=not isinstance(err, RunDirectoryLockedError) and is_rank_zero())
        return True

    def before_report(self, err: Exception, line: str | None) -> None:
        # the directory stays (a bug, a sweep's job): its log says why
        if ((line is None or _in_multirun())
                and not isinstance(err, (RunDirectoryLockedError, NotARunError))):
            _log_to_file(line, err)

    def reraise(self, err: Exception, line: str) -> bool:
        return _in_multirun()  # the sweep goes on with its other jobs and lists this one

    def cleanup(self, cfg: DictConfig, err: Exception, line: str) -> None:
        if not is_rank_zero():  # DDP's other ranks: the run directory is rank zero's
            return
        if isinstance(err, NotARunError):  # Hydra's files of this attempt go with it
            _remove_hydra_output()
        if isinstance(err, RunDirectoryLockedError):  # the directory is another run's
            return
        _release_run_dirs(cfg)
        # a run directory that stays (a failure after its logs were written) keeps the error
        # in its train.log; else it goes, as if the run never started
        if (not remove_if_empty(cfg.paths.run_dir, cfg.paths.output_dir)
                and not isinstance(err, NotARunError)):  # that folder is not a run's
            _log_to_file(line, err)


@hydra_main("train")
def main(cfg: DictConfig) -> float | None:
    metrics = run_cli(train, cfg, TrainFailure())
    if metrics is None:  # recorded for the basic sweeper, which lists it at the end
        return None
    value = objective_value(cfg, metrics)
    if value is None and _in_multirun() and not _in_basic_sweep():
        # an optimising sweeper (optuna's) reads this value: nothing to give it is an error
        print(f"error: {NO_VALIDATION_CLASSES}", file=sys.stderr)
        raise ConfigError(NO_VALIDATION_CLASSES)
    return value


if __name__ == "__main__":
    main()

"""Tune the training config on the validation classes: ``python -m see_dml.tune study=<name>``.

A study (``conf/study/<name>.yaml``) names the searched keys and their ranges, the trials, the
sampler (TPE by default) and the training overrides every trial shares. Each trial is a
normal training, ``python -m see_dml.train <overrides> hydra.run.dir=<study>/trials/<n>`` in
a process of its own (the same code path, run directory, logs and resume as any run); its
objective is the validation metric of the checkpoint chosen on the validation classes
(``best/<objective>`` in its ``metrics.json``, default ``val/map@r``). A test metric is never
read, and a ``test/`` objective is refused before anything trains
(:func:`see_dml.training.config_checks.check_objective`). With ``folds: K`` a trial trains the K
class-disjoint folds of the training classes (``dataset.folds``) and its objective is their
mean.

The study lives in ``study_dir`` (``<output_dir>/tune/<name>``) as an Optuna journal file
(``journal.log``, :class:`optuna.storages.journal.JournalFileBackend`): the same command again
resumes it, and several processes share it (``-m worker=0,1,2`` under the local, submitit
local or SLURM launcher: each runs trials until the study has ``n_trials``). A trial that was
running when its process was killed is marked failed (``interrupted``) and its parameters are
queued again; the new trial resumes the killed one's run directory from its ``last.ckpt``
(bit for bit as an unbroken run), so a killed study ends with the same trials as an unbroken
one. After every trial the summary is rewritten: ``trials.csv`` (every trial: state,
objective, parameters, run directory), ``history.png`` (objective per trial and best so far)
and ``best.yaml`` (the best trial, its parameters and the full training overrides).

Why Optuna directly and not ``hydra-optuna-sweeper``: its last release (1.3.0) pins
``optuna<3`` (pip resolves it to optuna 2.10.1 beside SQLAlchemy 2.1 here), which has no
journal storage (Optuna >= 3.1; ``JournalFileBackend`` >= 4.0), so neither a file-based study
that SLURM jobs share without a database nor a resumable study; and a Hydra sweeper runs its
study inside one process, so it cannot resume a killed sweep. Driving Optuna's ask/tell here
adds the resume of killed trials, the space checks before training and the summary.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import math
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from see_dml.runtime.atomic import atomic_write
from see_dml.runtime.config import CONFIG_DIR, hydra_main, to_dict
from see_dml.runtime.errors import ConfigError
from see_dml.training.config_checks import NO_VALIDATION_CLASSES, check_objective, validate_config

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

SPACE_TYPES = ("float", "int", "categorical")
SAMPLERS = ("tpe", "random")
DIRECTIONS = ("maximize", "minimize")
#: the study's files in study_dir
JOURNAL, TRIALS_CSV, HISTORY_PNG, BEST_YAML = ("journal.log", "trials.csv", "history.png",
                                               "best.yaml")
#: a trial's worker holds this lock in the trial's folder while it runs the trial
TRIAL_LOCK = ".tune_trial.lock"
#: a RUNNING trial with no folder yet is taken for a dead worker's after this many seconds
STARTING_GRACE_S = 120.0


@dataclass
class Param:
    """One searched key: ``type`` float / int (``low``, ``high``, ``log``, ``step``) or
    categorical (``choices``)."""

    key: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] = field(default_factory=list)

    def extremes(self) -> list[Any]:
        """The values checked before training: the ends of a range, every choice."""
        if self.type == "categorical":
            return list(self.choices)
        low, high = float(self.low or 0), float(self.high or 0)
        return [int(low), int(high)] if self.type == "int" else [low, high]


@dataclass
class StudySpec:
    """A study file (``conf/study/<name>.yaml``), checked by :func:`parse_study`."""

    name: str
    objective: str
    direction: str
    n_trials: int
    folds: int | None
    sampler: str
    seed: int
    n_startup_trials: int
    train: list[str]
    space: list[Param]

    def fingerprint(self) -> str:
        """What a resumed study must share with the stored one: its trials' objective,
        direction, folds, training overrides and space."""
        what = {"objective": self.objective, "direction": self.direction,
                "folds": self.folds, "train": self.train,
                "space": [vars(p) for p in self.space]}
        return hashlib.sha1(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where} must be a finite number, got {value!r}")
    return float(value)


def parse_param(key: str, node: Any) -> Param:
    """One entry of ``study.space``, checked: a known type, ``low < high``, ``log`` only with
    ``low > 0``, int bounds integers, a non-empty ``choices`` list."""
    where = f"study.space.{key}"
    if not isinstance(node, dict):
        raise ConfigError(f"{where} must be a mapping (type: float|int|categorical, low/high "
                          f"or choices), got {node!r}")
    kind = node.get("type")
    if kind not in SPACE_TYPES:
        raise ConfigError(f"{where}.type={kind!r} is not a known distribution: one of "
                          f"{', '.join(SPACE_TYPES)}")
    allowed = {"type", "choices"} if kind == "categorical" else {"type", "low", "high", "log",
                                                                  "step"}
    extra = sorted(set(node) - allowed)
    if extra:
        raise ConfigError(f"{where}: a {kind} takes no {', '.join(extra)} (it takes "
                          f"{', '.join(sorted(allowed))})")
    if kind == "categorical":
        choices = node.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}.choices must be a non-empty list, got {choices!r}")
        bad = [c for c in choices if not (c is None or isinstance(c, (bool, int, float, str)))]
        if bad:
            raise ConfigError(f"{where}.choices must be numbers, strings, booleans or null, "
                              f"got {bad[0]!r}")
        return Param(key, kind, choices=list(choices))
    low = _number(node.get("low"), f"{where}.low")
    high = _number(node.get("high"), f"{where}.high")
    log_scale = node.get("log", False)
    if not isinstance(log_scale, bool):
        raise ConfigError(f"{where}.log must be true or false, got {log_scale!r}")
    if low >= high:
        raise ConfigError(f"{where}: low={node['low']} must be below high={node['high']}")
    if log_scale and low <= 0:
        raise ConfigError(f"{where}: a log scale needs low > 0, got low={node['low']}")
    step = node.get("step")
    if step is not None:
        step = _number(step, f"{where}.step")
        if step <= 0 or log_scale:
            raise ConfigError(f"{where}.step={step} must be positive and without log: true")
    if kind == "int":
        for name in ("low", "high", "step"):
            value = node.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ConfigError(f"{where}.{name} of an int must be an integer, got {value!r}")
    return Param(key, kind, low, high, log_scale, step)


def parse_study(node: DictConfig) -> StudySpec:
    """The ``study`` node, checked (one :class:`ConfigError` line naming the key)."""
    study = to_dict(node)
    known = {"name", "objective", "direction", "n_trials", "folds", "sampler", "train", "space"}
    extra = sorted(set(study) - known)
    if extra:
        raise ConfigError(f"study: unknown key(s) {', '.join(extra)} (known: "
                          f"{', '.join(sorted(known))})")
    name = study.get("name")
    if not isinstance(name, str) or not name or "/" in name:
        raise ConfigError(f"study.name must be a name (no '/'), got {name!r}")
    objective = study.get("objective", "val/map@r")
    check_objective(OmegaConf.create({"objective": objective}))  # never a test metric
    direction = study.get("direction", "maximize")
    if direction not in DIRECTIONS:
        raise ConfigError(f"study.direction must be maximize or minimize, got {direction!r}")
    n_trials = study.get("n_trials")
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise ConfigError(f"study.n_trials must be a positive integer, got {n_trials!r}")
    folds = study.get("folds")
    if folds is not None and (isinstance(folds, bool) or not isinstance(folds, int)
                              or folds < 2):
        raise ConfigError(f"study.folds must be an integer >= 2 (or null), got {folds!r}")
    sampler = dict(study.get("sampler") or {})
    kind = sampler.get("name", "tpe")
    if kind not in SAMPLERS:
        raise ConfigError(f"study.sampler.name must be one of {', '.join(SAMPLERS)}, got "
                          f"{kind!r}")
    seed = sampler.get("seed", 0)
    startup = sampler.get("n_startup_trials", 10)
    for key, value in (("seed", seed), ("n_startup_trials", startup)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"study.sampler.{key} must be a non-negative integer, got "
                              f"{value!r}")
    train = study.get("train") or []
    if not isinstance(train, list) or not all(isinstance(o, str) for o in train):
        raise ConfigError("study.train must be a list of training overrides (key=value)")
    space = study.get("space")
    if not isinstance(space, dict) or not space:
        raise ConfigError("study.space must map at least one training key to its range")
    return StudySpec(name, objective, direction, n_trials, folds, kind, seed, startup,
                     list(train), [parse_param(k, v) for k, v in _space_entries(space)])


def _space_entries(node: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """``study.space`` as ``(dotted key, entry)``: an entry is a mapping with a ``type``; the
    keys above it nest (``optimizer: {lr: {type: ...}}`` is ``optimizer.lr``, which a
    command line can override: ``study.space.optimizer.lr.high=1e-2``)."""
    out: list[tuple[str, Any]] = []
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and "type" not in value and value and all(
                isinstance(v, dict) for v in value.values()):
            out += _space_entries(value, name + ".")
        else:
            out.append((name, value))
    return out


def _format(value: Any) -> str:
    """A value as a Hydra override writes it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def fold_overrides(spec: StudySpec, fold: int | None) -> list[str]:
    if fold is None:
        return []
    return [f"dataset.folds={spec.folds}", f"dataset.fold={fold}", "dataset.val_fraction=0"]


def trial_overrides(spec: StudySpec, params: dict[str, Any], fold: int | None = None
                    ) -> list[str]:
    """The training overrides of one trial (one fold of it): the study's ``train``, the
    objective, the fold's, then the sampled values."""
    return [*spec.train, f"objective={spec.objective}", *fold_overrides(spec, fold),
            *(f"{k}={_format(v)}" for k, v in params.items())]


def _compose_train(overrides: Sequence[str]) -> DictConfig:
    """``conf/train.yaml`` with ``overrides``, inside the running Hydra app when there is one
    (its config search path), else as :func:`see_dml.runtime.config.compose`."""
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        from hydra import compose

        return compose("train", overrides=list(overrides))
    from see_dml.runtime.config import compose as compose_outside

    return compose_outside(overrides)


_ABSENT = object()


def check_space(spec: StudySpec, compose: Callable[[Sequence[str]], DictConfig] = _compose_train,
                check_data: bool = True) -> DictConfig:
    """Fail before any training when a trial could not train: the study's ``train``
    overrides compose; every searched key is a key of that config (or a config group, for
    categorical options); the config at each end of every range and at every choice passes
    :func:`see_dml.training.config_checks.validate_config`; and (``check_data``) the dataset
    has validation classes. Returns the composed config of the first trial's settings."""
    groups = {p.name for p in CONFIG_DIR.iterdir() if p.is_dir()}
    try:
        base = compose(trial_overrides(spec, {}, 0 if spec.folds else None))
    except Exception as err:  # Hydra's override and missing-config errors
        raise ConfigError(f"study {spec.name}: its train overrides do not compose: "
                          f"{str(err).splitlines()[0]}") from err
    for param in spec.space:
        in_config = OmegaConf.select(base, param.key, default=_ABSENT) is not _ABSENT
        if not in_config and not (param.type == "categorical" and param.key in groups):
            raise ConfigError(
                f"study.space.{param.key} is not a key of the training config (with the "
                f"study's train overrides): a misspelt key, or one to add with the study's "
                "train overrides first")
    settings = [{p.key: p.extremes()[0] for p in spec.space},
                {p.key: p.extremes()[-1] for p in spec.space}]
    for param in spec.space:
        for value in param.extremes()[1:-1]:
            settings.append({**settings[0], param.key: value})
    for params in settings:
        shown = ", ".join(f"{k}={_format(v)}" for k, v in params.items())
        try:
            cfg = compose(trial_overrides(spec, params, 0 if spec.folds else None))
            validate_config(cfg)
        except ConfigError as err:
            raise ConfigError(f"study {spec.name} at {shown}: {err}") from err
        except Exception as err:  # a value Hydra cannot take for the key
            raise ConfigError(f"study {spec.name} at {shown}: "
                              f"{str(err).splitlines()[0]}") from err
    if check_data:
        from hydra.utils import instantiate

        try:
            has_val = "val" in instantiate(base.dataset).splits()
        except ValueError as err:  # a dataset's own check (instantiate wraps it)
            raise ConfigError(f"study {spec.name}: {str(err).splitlines()[0]}") from err
        if not has_val:
            raise ConfigError(f"study {spec.name}: {NO_VALIDATION_CLASSES}")
    return base


def distributions(spec: StudySpec) -> dict[str, optuna.distributions.BaseDistribution]:
    from see_dml.runtime.extras import require

    optuna = require("optuna", "tune", "python -m see_dml.tune")
    out: dict[str, Any] = {}
    for p in spec.space:
        if p.type == "categorical":
            out[p.key] = optuna.distributions.CategoricalDistribution(p.choices)
        elif p.type == "int":
            out[p.key] = optuna.distributions.IntDistribution(
                int(p.low or 0), int(p.high or 0), log=p.log, step=int(p.step or 1))
        else:
            out[p.key] = optuna.distributions.FloatDistribution(
                float(p.low or 0), float(p.high or 0), log=p.log, step=p.step)
    return out


def open_study(spec: StudySpec, study_dir: Path, worker: int = 0) -> optuna.Study:
    """The study in ``study_dir/journal.log``, created or resumed; a resumed study must have
    been made by the same objective, direction, folds, training overrides and space."""
    from see_dml.runtime.extras import require

    optuna = require("optuna", "tune", "python -m see_dml.tune")
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study_dir.mkdir(parents=True, exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(study_dir / JOURNAL)))
    study = optuna.create_study(study_name=spec.name, storage=storage,
                                direction=spec.direction, load_if_exists=True)
    stored = study.user_attrs.get("spec")
    if stored is None:
        study.set_user_attr("spec", spec.fingerprint())
    elif stored != spec.fingerprint():
        raise ConfigError(
            f"{study_dir / JOURNAL} holds study {spec.name} made with another objective, "
            "folds, train overrides or space: resume it with its own study file, or give this "
            "one another study.name (or study_dir)")
    # the sampler keeps no state in the journal: seeded by the trials so far and the worker,
    # a resumed or second process draws anew (the same seed would repeat the first draws)
    seed = spec.seed + 1_000_003 * worker + len(study.trials)
    if spec.sampler == "tpe":
        study.sampler = optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=spec.n_startup_trials, constant_liar=True)
    else:
        study.sampler = optuna.samplers.RandomSampler(seed=seed)
    return study


def _counts(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a trial counts toward ``n_trials``: finished, failed (a divergence, a bug) or
    running; an interrupted one does not (its parameters run again)."""
    from optuna.trial import TrialState

    if trial.state == TrialState.FAIL:
        return not trial.user_attrs.get("interrupted", False)
    return trial.state in (TrialState.COMPLETE, TrialState.RUNNING, TrialState.PRUNED)


def _lock_is_free(folder: Path) -> bool:
    """Whether no live worker holds ``folder``'s trial lock (a folder that is gone, say the
    study's journal copied to another machine without its runs, is held by none)."""
    from filelock import FileLock, Timeout

    if not folder.is_dir():
        return True

    lock = FileLock(str(folder / TRIAL_LOCK), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return False
    lock.release()
    return True


def requeue_interrupted(study: optuna.Study) -> list[int]:
    """Mark the RUNNING trials whose process is gone (no live lock on their folder) failed
    and ``interrupted``, and queue their parameters again with their folder to resume;
    also re-queue an ``interrupted`` failed trial no later trial took up. Returns the
    numbers of the trials re-queued."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    taken = {t.user_attrs["requeued_from"] for t in trials
             if t.user_attrs.get("requeued_from") is not None}
    out = []
    for t in trials:
        folder = t.user_attrs.get("trial_dir")
        if t.state == TrialState.RUNNING:
            if folder is None:
                started = t.datetime_start.timestamp() if t.datetime_start else 0.0
                if time.time() - started < STARTING_GRACE_S:
                    continue
            elif not _lock_is_free(Path(folder)):
                continue  # its worker is alive
            try:
                study._storage.set_trial_user_attr(t._trial_id, "interrupted", True)
                study.tell(t.number, state=TrialState.FAIL)
            except (RuntimeError, ValueError):  # another worker took it up first
                continue
        elif not (t.state == TrialState.FAIL and t.user_attrs.get("interrupted")):
            continue
        if t.number in taken:
            continue
        study.enqueue_trial(t.params, user_attrs={"resumes": folder, "requeued_from": t.number}
                            if folder else {"requeued_from": t.number})
        taken.add(t.number)
        out.append(t.number)
    return out


class Interrupted(Exception):
    """SIGTERM (a scheduler's, ``kill``) or Ctrl-C reached the tuner."""


#: what a SIGTERM / SIGINT reaching the tuner asked (``signal``), and the running trial's
#: training process (``child``), which the handler stops
_STOP: dict[str, Any] = {"signal": None, "child": None}


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    """SIGTERM and SIGINT stop the running training (it keeps its last.ckpt) and then the
    study, between two journal writes: the handler only records the signal and passes it on,
    so that no write to the journal is cut short."""
    def stop(signum: int, frame: Any) -> None:
        _STOP["signal"] = signal.Signals(signum).name
        child = _STOP["child"]
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    _STOP["signal"] = None
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _check_stop() -> None:
    if _STOP["signal"] is not None:
        raise Interrupted(_STOP["signal"])


def _die_with_parent() -> None:
    """In the trial's process (Linux): SIGTERM when the tuner dies, even by SIGKILL, so that
    a killed study leaves no training behind (it stops and keeps its last.ckpt)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _last_error(log_file: Path) -> str:
    try:
        lines = log_file.read_text(errors="replace").splitlines()
    except OSError:
        return "no output"
    errors = [line for line in lines if line.startswith("error: ")]
    if errors:
        return errors[-1][len("error: "):]
    return next((line for line in reversed(lines) if line.strip()), "no output")


def train_run(overrides: list[str], run_dir: Path, objective: str) -> float:
    """Train one run in ``run_dir`` (resumed from its last.ckpt when it has begun, skipped
    when it has finished) as ``python -m see_dml.train`` does; return ``best/<objective>``
    of its ``metrics.json`` (only that key is read: never a test metric)."""
    metrics_file = run_dir / "metrics.json"
    if not metrics_file.is_file():
        started = (run_dir / "config.yaml").is_file()
        if started:
            _wait_for_release(run_dir)
        place = f"resume={run_dir}" if started else f"hydra.run.dir={run_dir}"
        run_dir.mkdir(parents=True, exist_ok=True)
        out = run_dir / "output.log"
        cmd = [sys.executable, "-m", "see_dml.train", *overrides, place]
        with out.open("a") as sink:
            sink.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(cmd)}\n")
            sink.flush()
            child = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT,
                                     preexec_fn=_die_with_parent)
            _STOP["child"] = child
            try:
                status = child.wait()
            except BaseException:  # a signal's handler outside _interruptible: stop it too
                child.send_signal(signal.SIGTERM)
                child.wait()
                raise
            finally:
                _STOP["child"] = None
        _check_stop()
        if status in (-signal.SIGTERM, -signal.SIGINT, -signal.SIGKILL, 130, 143):
            raise Interrupted(f"the training in {run_dir} was stopped (status {status})")
        if status != 0 or not metrics_file.is_file():
            raise TrialFailed(f"training in {run_dir} failed (status {status}): "
                              f"{_last_error(out)}")
    metrics = json.loads(metrics_file.read_text())
    value = metrics.get(f"best/{objective}")
    if value is None:
        raise ConfigError(f"{metrics_file}: no best/{objective}. {NO_VALIDATION_CLASSES}")
    return float(value)


def _wait_for_release(run_dir: Path, timeout_s: float = 300.0) -> None:
    """Wait while a training still holds ``run_dir`` (the killed tuner's, stopping on its
    SIGTERM and finishing its last checkpoint write) before resuming it there."""
    from see_dml.runtime.lock import held_by_another

    deadline = time.monotonic() + timeout_s
    while held_by_another(run_dir) and time.monotonic() < deadline:
        time.sleep(1.0)


class TrialFailed(RuntimeError):
    """A trial's training ended with an error (a divergence, a bug): the trial fails and
    counts; the study goes on."""


def run_trial(study: optuna.Study, spec: StudySpec, study_dir: Path,
              dists: dict[str, Any]) -> None:
    """Ask one trial, train it (each fold), tell its objective."""
    from filelock import FileLock
    from optuna.trial import TrialState

    trial = study.ask(dists)
    resumes = trial.user_attrs.get("resumes")
    folder = Path(resumes) if resumes else study_dir / "trials" / f"{trial.number:04d}"
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / TRIAL_LOCK), timeout=0)
    lock.acquire()
    try:
        trial.set_user_attr("trial_dir", str(folder))
        shown = " ".join(f"{k}={_format(v)}" for k, v in trial.params.items())
        again = f" (resuming trial {trial.user_attrs['requeued_from']})" if resumes else ""
        print(f"{time.strftime('%H:%M:%S')} trial {trial.number}{again}: {shown}", flush=True)
        start = time.time()
        folds = range(spec.folds) if spec.folds else [None]
        values = []
        try:
            for fold in folds:
                run_dir = folder if fold is None else folder / f"fold{fold}"
                values.append(train_run(trial_overrides(spec, trial.params, fold), run_dir,
                                        spec.objective))
                if fold is not None:
                    trial.set_user_attr(f"fold{fold}", values[-1])
        except (Interrupted, KeyboardInterrupt):
            trial.set_user_attr("interrupted", True)
            study.tell(trial, state=TrialState.FAIL)
            raise
        except TrialFailed as err:
            trial.set_user_attr("error", str(err))
            study.tell(trial, state=TrialState.FAIL)
            print(f"{time.strftime('%H:%M:%S')} trial {trial.number} failed: {err}",
                  flush=True)
            return
        value = sum(values) / len(values)
        trial.set_user_attr("duration_s", round(time.time() - start, 1))
        study.tell(trial, value)
        print(f"{time.strftime('%H:%M:%S')} trial {trial.number}: {spec.objective} = "
              f"{value:.4f} ({time.time() - start:.0f} s)", flush=True)
    finally:
        lock.release()


def _write_atomic(path: Path, text: str | bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(text) if isinstance(text, bytes)
                 else tmp.write_text(text))


def summarize(study: optuna.Study, spec: StudySpec, study_dir: Path) -> dict[str, Any] | None:
    """Write ``trials.csv``, ``history.png`` and ``best.yaml`` of the study as it stands;
    return the best trial's record (None before any trial finished)."""
    import io

    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    keys = [p.key for p in spec.space]
    rows = io.StringIO()
    writer = csv.writer(rows)
    folds = [f"fold{i}" for i in range(spec.folds or 0)]
    writer.writerow(["trial", "state", spec.objective, *folds, *keys, "duration_s", "trial_dir",
                     "note"])
    for t in trials:
        note = ("interrupted" if t.user_attrs.get("interrupted") else
                t.user_attrs.get("error", ""))
        if t.user_attrs.get("requeued_from") is not None:
            note = f"re-runs trial {t.user_attrs['requeued_from']} {note}".strip()
        writer.writerow([t.number, t.state.name, "" if t.value is None else t.value,
                         *(t.user_attrs.get(f, "") for f in folds),
                         *(t.params.get(k, "") for k in keys), t.user_attrs.get("duration_s", ""),
                         t.user_attrs.get("trial_dir", ""), note])
    _write_atomic(study_dir / TRIALS_CSV, rows.getvalue())
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    _plot_history(done, spec, study_dir / HISTORY_PNG)
    if not done:
        return None
    best = study.best_trial
    record = {
        "study": spec.name, "objective": spec.objective, "direction": spec.direction,
        "trials_finished": len(done), "n_trials": spec.n_trials,
        "best_trial": best.number, "value": best.value, "params": dict(best.params),
        "trial_dir": best.user_attrs.get("trial_dir"),
        "overrides": trial_overrides(spec, dict(best.params)),
    }
    _write_atomic(study_dir / BEST_YAML, OmegaConf.to_yaml(OmegaConf.create(record)))
    return record


def _plot_history(done: list[optuna.trial.FrozenTrial], spec: StudySpec, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    if done:
        xs = [t.number for t in done]
        ys = [float(t.value) for t in done if t.value is not None]
        pick = max if spec.direction == "maximize" else min
        best = [pick(ys[: i + 1]) for i in range(len(ys))]
        ax.scatter(xs, ys, s=14, label="trial")
        ax.step(xs, best, where="post", color="C1", label="best so far")
        ax.legend(loc="best", fontsize=8)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # trial numbers
    ax.set_xlabel("trial")
    ax.set_ylabel(f"{spec.objective} (validation classes)")
    ax.set_title(f"study {spec.name}: {len(done)} of {spec.n_trials} trials finished",
                 fontsize=9)
    buffer = __import__("io").BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    _write_atomic(path, buffer.getvalue())


def tune(cfg: DictConfig) -> dict[str, Any] | None:
    """Check the study, then run trials until it has ``n_trials`` (with other workers);
    write and print the summary. Returns the best trial's record."""
    from see_dml.runtime.extras import check

    check("tune", "python -m see_dml.tune")
    spec = parse_study(cfg.study)
    study_dir = Path(str(cfg.study_dir)).expanduser()
    worker = cfg.get("worker", 0)
    if isinstance(worker, bool) or not isinstance(worker, int) or worker < 0:
        raise ConfigError(f"worker must be a non-negative integer, got {worker!r}")
    if cfg.get("summary_only", False):
        if not (study_dir / JOURNAL).is_file():
            raise ConfigError(f"summary_only=true but {study_dir} holds no study ({JOURNAL})")
        study = open_study(spec, study_dir, worker)
    else:
        check_space(spec)
        study = open_study(spec, study_dir, worker)
        dists = distributions(spec)
        with _interruptible():
            try:
                while True:
                    _check_stop()
                    requeued = requeue_interrupted(study)
                    if requeued:
                        print(f"re-running interrupted trial(s) {requeued}", flush=True)
                    counted = sum(_counts(t) for t in study.get_trials(deepcopy=False))
                    if counted >= spec.n_trials:
                        break
                    run_trial(study, spec, study_dir, dists)
                    summarize(study, spec, study_dir)
            except (Interrupted, KeyboardInterrupt) as err:
                summarize(study, spec, study_dir)
                print(f"\n{err or 'interrupted'}: study {spec.name} stopped; the trial that "
                      f"was running re-runs (resuming its run) when the same command runs "
                      f"again, in {study_dir}", file=sys.stderr, flush=True)
                sys.exit(130 if _STOP["signal"] == "SIGINT" or isinstance(
                    err, KeyboardInterrupt) else 143)
    record = summarize(study, spec, study_dir)
    _print_summary(spec, study_dir, record)
    return record


def _print_summary(spec: StudySpec, study_dir: Path, record: dict[str, Any] | None) -> None:
    if record is None:
        print(f"study {spec.name}: no trial finished yet ({study_dir})")
        return
    shown = " ".join(f"{k}={_format(v)}" for k, v in record["params"].items())
    print(f"study {spec.name}: {record['trials_finished']} of {spec.n_trials} trials finished; "
          f"best trial {record['best_trial']}: {spec.objective} = {record['value']:.4f}\n"
          f"  {shown}\n  run: {record['trial_dir']}\n"
          f"  {TRIALS_CSV}, {HISTORY_PNG}, {BEST_YAML} in {study_dir}")


def usage() -> str:
    """``--help`` without a study: how to call the tuner and the studies there are (Hydra's
    own help needs the mandatory ``study`` to compose the config it prints)."""
    studies = sorted(p.stem for p in (CONFIG_DIR / "study").glob("*.yaml"))
    return "\n\n".join([
        "see-dml-tune (python -m see_dml.tune): " + (__doc__ or "").split("\n\n")[0],
        f"study: one of {', '.join(studies)} (required; conf/study/<name>.yaml).",
        "Options (key=value; `--help study=NAME` prints the whole config): study_dir, worker, "
        "summary_only, paths.output_dir, study.n_trials, ...; several workers: -m worker=0,1 "
        "hydra/launcher=submitit_local (or slurm_tune).",
        "How to tune, resume and read a study: docs/tuning.md.",
    ])


@hydra_main("tune")
def _main(cfg: DictConfig) -> float | None:
    from see_dml.runtime.cli import run_cli

    record = run_cli(tune, cfg)
    return None if record is None else float(record["value"])


def main() -> float | None:
    """``python -m see_dml.tune`` / ``see-dml-tune``."""
    argv = sys.argv[1:]
    if ({"--help", "-h"} & set(argv)) and not any(a.startswith("study=") for a in argv):
        print(usage())
        return None
    return _main()


if __name__ == "__main__":
    main()

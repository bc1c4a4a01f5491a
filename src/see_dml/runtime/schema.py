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

Reading a component's signature imports it, and the synthesis callbacks import Lightning and
torch: seconds, before a bad key could be named. So the signatures read from the package's
own components are kept in a small JSON file under ``paths.cache_dir``
(``schema-<digest>.json``, the digest of the package's source files): a later check reads
that file and imports nothing, and any edit to the package's code makes a new digest, so
the file is never stale. A component from outside the package (a user's own ``_target_``)
is read anew each time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import hashlib
import inspect
import json
import sys
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from see_dml.runtime.atomic import atomic_write
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


def check_schema(cfg: DictConfig, keys: Iterable[str] | None = None) -> None:
    """Raise :class:`ConfigError` for the first key of an owned group that its component
    does not take, or whose value has the wrong type or is not one of its choices.

    ``keys``: only these of :data:`OWNED_GROUPS` (a tool's config holds some of them:
    ``evaluate`` has ``metrics``); default all, and ``data.transforms``."""
    only = None if keys is None else set(keys)
    cache = _SignatureCache(OmegaConf.select(cfg, "paths.cache_dir", default=None,
                                             throw_on_resolution_failure=False))
    try:
        for key, extra in OWNED_GROUPS:
            if only is not None and key not in only:
                continue
            node = OmegaConf.select(cfg, key, default=None)
            if not isinstance(node, DictConfig) or "_target_" not in node:
                continue
            params = cache.parameters(str(node._target_), key)
            if params is None:
                continue
            for (group, name), hint in SUBSTITUTED.items():
                if group == key and name in params:
                    params[name] = _spec(hint)
            values = _resolved(node, key)
            _check(values, params, key, str(node._target_), extra)
        transforms = OmegaConf.select(cfg, "data.transforms", default=None)
        if isinstance(transforms, DictConfig) and (only is None or "data.transforms" in only):
            fields = cache.parameters(TRANSFORMS_SCHEMA, "data.transforms")
            _check(_resolved(transforms, "data.transforms"), fields or {}, "data.transforms",
                   TRANSFORMS_SCHEMA, frozenset())
    finally:
        cache.save()


Spec = Any  # a JSON-able type: "bool" | "int" | "float" | "str" | "none" | "any" |
#           {"choices": [...]} | {"any_of": [Spec, ...]} | {"list_of": Spec}


def _spec(hint: Any) -> Spec:
    """A type hint as the JSON the checks read (hints this does not check become "any")."""
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return {"choices": list(typing.get_args(hint))}
    if origin in (typing.Union, types.UnionType):
        return {"any_of": [_spec(b) for b in typing.get_args(hint)]}
    if hint is type(None):
        return "none"
    if hint in (bool, int, float, str):
        return hint.__name__
    if origin in (tuple, list, Sequence):  # a list in YAML
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return {"list_of": _spec(args[0]) if len(args) == 1 else "any"}
    return "any"


class _SignatureCache:
    """The keyword arguments (as :func:`_spec`) of the package's own components, kept in
    ``<cache_dir>/schema-<digest of the package's sources>.json`` (see the module doc).
    What this does not know is read from the code (which imports it) and remembered."""

    def __init__(self, cache_dir: Any) -> None:
        self.path: Path | None = None
        self.known: dict[str, dict[str, Spec] | None] = {}
        self.changed = False
        if not isinstance(cache_dir, str) or not cache_dir:
            return
        self.path = Path(cache_dir).expanduser() / f"schema-{_source_digest()}.json"
        try:
            loaded = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return  # none yet, or unreadable: read from the code and write it anew
        if isinstance(loaded, dict):
            self.known = loaded

    def parameters(self, target: str, key: str) -> dict[str, Spec] | None:
        if target in self.known:
            params = self.known[target]
            return None if params is None else dict(params)
        params = _signature(target, key)
        if target.startswith("see_dml."):  # the digest covers the package's code only
            try:
                json.dumps(params)
            except (TypeError, ValueError):
                return params  # a choice that is not plain data: not kept
            self.known[target] = params
            self.changed = True
        return None if params is None else dict(params)

    def save(self) -> None:
        if self.path is None or not self.changed:
            return
        text = json.dumps(self.known, sort_keys=True)
        with contextlib.suppress(OSError):  # a cache is never worth an error
            atomic_write(self.path, lambda tmp: tmp.write_text(text))


def _source_digest(root: Path | None = None) -> str:
    """A digest of the package's Python sources (names and bytes): milliseconds to read."""
    root = root or Path(__file__).resolve().parents[1]
    digest = hashlib.sha1()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _signature(target: str, key: str) -> dict[str, Spec] | None:
    """The arguments ``target`` takes, read from the code (the one place that imports)."""
    located = _locate(target, key)
    if target == TRANSFORMS_SCHEMA:
        hints = typing.get_type_hints(located)
        return {f.name: _spec(hints.get(f.name, Any))
                for f in dataclasses.fields(typing.cast(Any, located))
                if f.name != "native_size"}  # set by the DataModule, not by config
    params = _parameters(located)
    return None if params is None else {name: _spec(h) for name, h in params.items()}


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


def _mismatch(value: Any, spec: Spec) -> str | None:
    """Why ``value`` does not fit ``spec`` (:func:`_spec`), or None (also for "any")."""
    if isinstance(spec, dict) and "choices" in spec:
        choices = spec["choices"]
        return None if value in choices else "must be one of " + ", ".join(map(str, choices))
    if isinstance(spec, dict) and "any_of" in spec:
        branches = spec["any_of"]
        if value is None and "none" in branches:
            return None
        problems = [_mismatch(value, b) for b in branches if b != "none"]
        return None if any(p is None for p in problems) else problems[0]
    if spec == "bool":
        return None if isinstance(value, bool) else "must be true or false"
    if spec == "int":
        return None if isinstance(value, int) and not isinstance(value, bool) else (
            "must be an integer")
    if spec == "float":
        return None if isinstance(value, int | float) and not isinstance(value, bool) else (
            "must be a number")
    if spec == "str":
        return None if isinstance(value, str) else "must be a string"
    if isinstance(spec, dict) and "list_of" in spec:
        if not isinstance(value, list | tuple):
            return "must be a list"
        for item in value:
            problem = _mismatch(item, spec["list_of"])
            if problem:
                return f"every item {problem}"
    return None

"""The variant table: every `VariantDef`, in canonical order, and the plug-in hook that extends it.

Built-in variants are the modules of the `export.variants` package: each `VariantDef` at the top level
of one of them registers when the package is imported. Further variants come from plug-ins, loaded once
on first use of the table:
- the environment variable `VITSERVE_VARIANT_MODULES`: comma-separated entries, each `package.module`
  (a module that calls `register(VariantDef(...))` when imported) or `package.module:NAME` (the
  `VariantDef` called NAME in that module, registered here);
- entry points of the group `vitserve.variants` (each loads such a module or a `VariantDef`), e.g. in a
  plug-in's pyproject.toml: `[project.entry-points."vitserve.variants"] softcap = "mypkg.softcap:SOFTCAP"`.
The canonical order is `VariantDef.order`, then registration order: a plug-in that declares no order
comes after the built-ins, in the order plug-ins are loaded.
"""

from __future__ import annotations

import importlib
import os
from importlib.metadata import entry_points
from typing import Any

from export.variants.base import Option, VariantDef

__all__ = ["ENTRY_POINT_GROUP", "ENV_VAR", "register", "unregister", "variants", "get", "names", "option",
           "option_owner", "options", "load_plugins"]

ENV_VAR = "VITSERVE_VARIANT_MODULES"
ENTRY_POINT_GROUP = "vitserve.variants"

_TABLE: dict[str, VariantDef] = {}
_OPTIONS: dict[str, tuple[VariantDef, Option]] = {}
_plugins_loaded = False


def register(variant: VariantDef, *, replace: bool = False) -> VariantDef:
    """Add a variant to the table (after those already there); ValueError on a name or option clash."""
    if variant.name in _TABLE and not replace:
        raise ValueError(f"variant {variant.name!r} is already registered")
    if "+" in variant.name or "-" in variant.name or not variant.name:
        raise ValueError(f"variant name {variant.name!r} must be non-empty, without '+' or '-'")
    for opt in variant.options:
        owner = _OPTIONS.get(opt.key)
        if owner is not None and owner[0].name != variant.name:
            raise ValueError(f"option {opt.key!r} of {variant.name!r} is already an option of {owner[0].name!r}")
    if replace:
        unregister(variant.name)
    _TABLE[variant.name] = variant
    for opt in variant.options:
        _OPTIONS[opt.key] = (variant, opt)
    return variant


def unregister(name: str) -> None:
    """Remove a variant (tests that register a toy one clean up with this)."""
    variant = _TABLE.pop(name, None)
    if variant is not None:
        for opt in variant.options:
            _OPTIONS.pop(opt.key, None)


def load_plugins() -> None:
    """Import the plug-in variants named by `VITSERVE_VARIANT_MODULES` and the `vitserve.variants` entry points."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for entry in filter(None, (m.strip() for m in os.environ.get(ENV_VAR, "").split(","))):
        module_name, _, attr = entry.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ValueError(f"{ENV_VAR}: cannot import variant module {module_name!r}: {exc}") from exc
        if attr:
            _register_loaded(getattr(module, attr, None), entry)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        loaded: Any = ep.load()
        if isinstance(loaded, VariantDef):
            _register_loaded(loaded, ep.value)


def _register_loaded(loaded: object, source: str) -> None:
    if not isinstance(loaded, VariantDef):
        raise ValueError(f"{source}: expected a VariantDef, got {type(loaded).__name__}")
    if _TABLE.get(loaded.name) is not loaded:
        register(loaded)


def variants() -> tuple[VariantDef, ...]:
    """Every registered variant, in canonical order (by `order`, ties in registration order)."""
    load_plugins()
    return tuple(sorted(_TABLE.values(), key=lambda v: v.order))


def names() -> tuple[str, ...]:
    return tuple(v.name for v in variants())


def get(name: str) -> VariantDef:
    """The variant called `name`; KeyError if none is registered."""
    load_plugins()
    return _TABLE[name]


def options() -> dict[str, Option]:
    """Every option of every variant, by key."""
    load_plugins()
    return {key: opt for key, (_, opt) in _OPTIONS.items()}


def option(key: str) -> Option:
    """The option `key`; ValueError naming the known options if there is none."""
    load_plugins()
    if key not in _OPTIONS:
        raise ValueError(f"unknown option {key!r}; known options: {', '.join(sorted(_OPTIONS))}")
    return _OPTIONS[key][1]


def option_owner(key: str) -> str:
    """The name of the variant an option belongs to."""
    option(key)
    return _OPTIONS[key][0].name

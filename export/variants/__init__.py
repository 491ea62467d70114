"""The variants as data: one `VariantDef` module per variant and the table that orders them.

Adding a variant: write one module that declares a `VariantDef` (options, layer rule, module builder and
hook point, ONNX ops, cost, loss, ...; see `base.py`). A built-in one is a new module of this package:
importing the package imports every module in it but `base` and `registry` and registers each `VariantDef`
found at its top level, so nothing else is edited. A plug-in one lives anywhere and is named in
`VITSERVE_VARIANT_MODULES` or the `vitserve.variants` entry points (see `registry.py`). Spec parsing, the
model, folding, the graph checks, the costs, checkpoint conversion, training, the demo training list, the
CLI help and the benchmarks all read the table.
"""

from __future__ import annotations

import importlib
import pkgutil

from export.variants.base import (
    BuildContext,
    CostContext,
    GraphContext,
    Hook,
    LayerRule,
    LayoutContext,
    Option,
    Schedule,
    VariantDef,
)
from export.variants.registry import (
    ENTRY_POINT_GROUP,
    ENV_VAR,
    get,
    load_plugins,
    names,
    option,
    option_owner,
    options,
    register,
    unregister,
    variants,
)

#: modules of this package that hold the machinery, not a variant
_NOT_VARIANTS = frozenset({"base", "registry"})


def _discover() -> tuple[VariantDef, ...]:
    """Every `VariantDef` at the top level of this package's variant modules, in canonical order."""
    found: dict[int, VariantDef] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name in _NOT_VARIANTS or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for value in vars(module).values():
            if isinstance(value, VariantDef):  # a definition imported by two modules is one entry
                found.setdefault(id(value), value)
    return tuple(sorted(found.values(), key=lambda v: (v.order, v.name)))


#: the built-in table, in canonical order (VARIANTS.md's; model names list variants in this order)
BUILTIN: tuple[VariantDef, ...] = _discover()
for _variant in BUILTIN:
    register(_variant)

__all__ = [
    "BUILTIN", "BuildContext", "CostContext", "ENTRY_POINT_GROUP", "ENV_VAR", "GraphContext", "Hook", "LayerRule",
    "LayoutContext", "Option", "Schedule", "VariantDef", "get", "load_plugins", "names", "option", "option_owner",
    "options", "register", "unregister", "variants",
]

"""The variants as data: one `VariantDef` module per variant and the table that orders them.

Adding a variant: write one module that builds a `VariantDef` (options, layer rule, module builder and
hook point, ONNX ops, cost, loss; see `base.py`) and `register`s it — a built-in one is imported below,
a plug-in one is named in `VITSERVE_VARIANT_MODULES` or the `vitserve.variants` entry points (see
`registry.py`). Spec parsing, the model, folding, the graph checks, the costs, training, the CLI help and
the benchmarks all read the table.
"""

from __future__ import annotations

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
from export.variants.cb import CB, CBS
from export.variants.gab import GAB
from export.variants.lavit import LAVIT
from export.variants.reattn import REATTN
from export.variants.refiner import REFINER
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

#: the built-in table, in VARIANTS.md's canonical order (model names list variants in this order)
BUILTIN: tuple[VariantDef, ...] = (CB, CBS, LAVIT, GAB, REATTN, REFINER)
for _variant in BUILTIN:
    register(_variant)

__all__ = [
    "BUILTIN", "BuildContext", "CostContext", "ENTRY_POINT_GROUP", "ENV_VAR", "GraphContext", "Hook", "LayerRule",
    "LayoutContext", "Option", "Schedule", "VariantDef", "get", "load_plugins", "names", "option", "option_owner",
    "options", "register", "unregister", "variants",
]

"""Context Broadcasting, `cb` and its dimension-scaled form `cbs` (VARIANTS.md 1; module: export/models/cb.py).

Decisions: `cb` with `cbs` is refused (both rewrite the same residual stream with a token mean; pick one).
Both trace to ReduceMean + Mul + Add: nothing to fold. `cbs` is a form of `cb`, so `vitserve-bench multi`
serves only `cb` beside the other variants.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from export.variants.base import BuildContext, CostContext, LayerRule, LayoutContext, Option, VariantDef

if TYPE_CHECKING:
    from torch import nn

    from export.spec import BlockConfig

#: CB and CB_S trace to these ops (the mean, the scaling, the add)
_CB_OPS = frozenset({"ReduceMean", "Mul", "Add"})


def _all_blocks(ctx: LayoutContext) -> list[int]:
    return list(range(ctx.depth))


def _build_cb(ctx: BuildContext) -> nn.Module:
    from export.models.cb import ContextBroadcast

    return ContextBroadcast()


def _build_cbs(ctx: BuildContext) -> nn.Module:
    from export.models.cb import ScaledContextBroadcast

    return ScaledContextBroadcast(ctx.dim)


def _cost_cb(b: BlockConfig, c: CostContext) -> list[tuple[str, int]]:
    return [("elementwise.cb", 3 * c.tokens * c.dim)] if "cb" in b.variants else []  # ReduceMean, Add, Mul


def _cost_cbs(b: BlockConfig, c: CostContext) -> list[tuple[str, int]]:
    # ReduceMean, lambda * mean, Add
    return [("elementwise.cb", 2 * c.tokens * c.dim + c.dim)] if "cbs" in b.variants else []


CB = VariantDef(
    name="cb",
    order=10,
    summary="Context Broadcasting: X/2 + mean over tokens/2 at the end of a block (Nam et al., ICCV 2023)",
    options=(Option("cb_layers", tuple, None, "blocks ending with CB (default: all)"),),
    layers=LayerRule("cb_layers", _all_blocks),
    hook="output",
    attr="cb",
    build=_build_cb,
    required_ops=_CB_OPS,
    cost=_cost_cb,
)

CBS = VariantDef(
    name="cbs",
    order=20,
    summary="Context Broadcasting, dimension-scaled: X + lambda * mean over tokens, lambda learnt from 0",
    options=(Option("cbs_layers", tuple, None, "blocks ending with CB_S (default: all)"),),
    layers=LayerRule("cbs_layers", _all_blocks),
    conflicts={"cb": "cb and cbs both broadcast context into the same residual stream; choose one"},
    hook="output",
    attr="cb",
    build=_build_cbs,
    no_weight_decay=("scale",),
    required_ops=_CB_OPS,
    cost=_cost_cbs,
    side_by_side=False,
)

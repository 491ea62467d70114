"""Refiner, `refiner` (VARIANTS.md 5; module: export/models/refiner.py), with the authors' sharing form.

Decisions:
- `refiner_share` (the authors' Refined_Attention with share_atten, as in their released S/M/L models):
  even blocks compute attention and do not refine; from block 2 on they add s * (the map handed on by
  the previous pair) to their softmax and hand that sum on. Odd blocks compute only V, refine the handed
  map (DLA + BN_H, times s), use it, and hand on the map they received, unrefined. The map an attention
  block hands on is taken before any re-attention head mixing.
- `refiner_share` with `lavit` is refused (two reuse schedules on one stack).
- `refiner` with `lavit`: the refiner applies on the blocks that compute attention, never on a
  Less-Attention block (an explicit `refiner_layers` naming one is refused).
- Converted checkpoints: its BatchNorms start as the identity (BN3's gamma = 0) with frozen statistics.
  Frozen, they would never normalise (running_var stays 1 - eps): the converted Refiner would be a DLA with
  per-channel affine maps where the authors have BatchNorms. So by default (`norm_statistics="update"` below,
  `vitserve-export finetune --norm-statistics auto`) a fine-tune re-calibrates them on training batches at the
  end of the warm-up (same eval-mode function) and trains with batch statistics from there (manifest
  `norm_statistics: batch-after-warmup`); export/README.md ("BatchNorm statistics after a converted fine-tune")
  has the measurement behind it: on the demo fine-tune `update` beat `frozen` for the Refiner in 3 of 3 seeds.
  Like a zero-initialised residual branch, that start gives the DLA's convolutions and BN1/BN2 no gradient
  on the first backward (they sit behind BN3's gamma = 0); BN3's gamma gets one, and after the first
  optimizer step so do they (tests/unit/export/models/test_export_checkpoint.py). VARIANTS.md's "trainable"
  start holds from the second step, not the first (issue 28).
- In the model's last block only the class token's row of the refined map reaches the head, and the
  depthwise 3x3 conv's top kernel row only multiplies the zero padding above that row: 3 E H values there
  get no gradient (named in tests/unit/export/models/test_export_parameter_gradients.py). Dead only for the
  eval-mode (exported) function: with batch statistics (from scratch, or after `--norm-statistics update`) the
  row's outputs on the other query rows move BN2/BN3/BN_H's batch statistics, and through them the class
  token's row, so it does get a gradient (test preset: max |grad| 0.14 against 0 with frozen statistics).
  Dropping it, or a last-block kernel padded only below, would change the authors' train-mode operator, so it
  stays.
- From scratch the demo model trains longer than the demo recipe's default: its BatchNorms over attention
  maps can end just under the 95 % held-out target after the default epochs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from export.variants.base import (
    BuildContext,
    CostContext,
    GraphContext,
    LayerRule,
    LayoutContext,
    Option,
    Schedule,
    VariantDef,
)

if TYPE_CHECKING:
    import onnx
    from torch import nn

    from export.models.refiner import AttentionRefiner
    from export.spec import BlockConfig, ModelSpec


def _all_blocks(ctx: LayoutContext) -> list[int]:
    return list(range(ctx.depth))


def _schedule(spec: ModelSpec, depth: int) -> Schedule | None:
    if not spec.option("refiner_share"):
        return None
    if spec.has("lavit"):
        raise ValueError("refiner_share cannot be combined with lavit: both make blocks reuse a previous map")
    if "refiner_layers" in spec.options:
        raise ValueError("refiner_share refines every sharing block; do not set refiner_layers with it")
    if depth < 2:
        raise ValueError("refiner_share needs at least two blocks")
    return Schedule(reuse=tuple(i % 2 == 1 for i in range(depth)), label="refiner_share", adds_prev_map=True)


def _adjust_layers(spec: ModelSpec, chosen: set[int], ctx: LayoutContext) -> set[int]:
    if spec.option("refiner_share"):  # only the sharing blocks refine (the authors' released models)
        return {i for i in chosen if ctx.reuse[i]}
    if spec.has("lavit"):
        bad = sorted(i for i in chosen if ctx.reuse[i])
        if bad and "refiner_layers" in spec.options:
            raise ValueError(
                f"option refiner_layers: blocks {bad} are lavit Less-Attention blocks; the refiner applies only "
                f"to blocks {list(ctx.computing)}"
            )
        chosen = {i for i in chosen if not ctx.reuse[i]}
        if not chosen:
            raise ValueError("refiner would apply to no block; set refiner_layers")
    return chosen


def _build(ctx: BuildContext) -> nn.Module:
    from export.models.refiner import AttentionRefiner

    cfg = ctx.cfg
    # the authors' sharing blocks (a refining block that reuses a map not LaViT's) scale their refined map by s
    scale = ctx.scale if cfg.attention == "reuse" and not cfg.has("lavit") else 1.0
    return AttentionRefiner(ctx.num_heads, ctx.option("refiner_expand"), ctx.option("refiner_kernel"), scale)


def _fold(module: nn.Module) -> nn.Module:
    cast("AttentionRefiner", module).fold()  # the registry folds only the module `_build` made
    return module


def _graph_check(proto: onnx.ModelProto, ctx: GraphContext) -> list[str]:
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    groups = [a.i for n in convs for a in n.attribute if a.name == "group"]
    if len(convs) < 4 or not any(g > 1 for g in groups):
        return [f"refiner: expected expand/depthwise/reduce Conv nodes, found {len(convs)} Conv(s)"]
    return []


def _cost(b: BlockConfig, c: CostContext) -> list[tuple[str, int]]:
    H, N, E, k = c.heads, c.tokens, c.option("refiner_expand"), c.option("refiner_kernel")
    out = []
    if b.has("refiner"):
        out.append(("macs.refiner", E * H * N * N * (2 * H + k * k)))
        # conv biases (EH + EH + H), Clip (2EH), residual (H), head affine Mul + Add (2H)
        out.append(("elementwise.refiner", 4 * H * (E + 1) * N * N))
    if b.adds_prev_map:
        out.append(("elementwise.refiner_share", 2 * H * N * N))  # + s * A_prev
    return out


REFINER = VariantDef(
    name="refiner",
    order=60,
    summary="Refiner: attention maps refined by depthwise convolutions (DLA) and a head BatchNorm (Zhou et al.)",
    options=(
        Option("refiner_expand", int, 3, "expansion ratio E of the refiner (default 3)",
               check=lambda v: v >= 1, check_message="must be >= 1"),
        Option("refiner_kernel", int, 3, "odd depthwise kernel size k (default 3)",
               check=lambda v: v >= 1 and v % 2 == 1, check_message="must be an odd integer >= 1 (same padding)"),
        Option("refiner_share", bool, False,
               "the authors' sharing form: odd blocks compute only V and refine the previous block's map"),
        Option("refiner_layers", tuple, None,
               "blocks with the refiner (default: all; the sharing blocks under refiner_share)"),
    ),
    layers=LayerRule("refiner_layers", _all_blocks),
    schedule=_schedule,
    adjust_layers=_adjust_layers,
    hook="map",
    attr="refiner",
    build=_build,
    fold=_fold,
    required_ops=frozenset({"Conv", "Clip"}),  # DLA convs and ReLU6 as Clip(0, 6)
    forbidden_ops=frozenset({"BatchNormalization"}),
    graph_check=_graph_check,
    cost=_cost,
    demo_epochs=60,
    norm_statistics="update",
)

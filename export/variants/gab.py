"""Gaussian Attention Bias, `gab` (VARIANTS.md 3; module: export/models/gab.py).

Decisions:
- Restricted to the blocks that compute Q/K logits (`computing_only`): a block that reuses a previous map
  has no logits to add the bias to, so an explicit `gab_layers` naming one is refused.
- By default every such block but the model's last: the last block's bias cannot change the logits (G's
  class-token row is 0 and only the class token's output of the last block reaches the head), so its sigma
  and a would be dead parameters (never a gradient).
- Converted checkpoints (issue 28): the new GAB modules take the *linear* amplitude G = a K with a = 0
  (export/models/gab.py, `reset_function_preserving`): exactly function-preserving, and dL/da is the
  Gaussian-weighted sum of the logit gradients, so every head's amplitude learns from the first step and sigma
  from the second. The paper's a^2 from a small a did not learn (a = 1e-3: dL/dsigma below AdamW's eps, the bias
  <= 2.4e-3 on the logits after the default fine-tune). Measured on the demo (a vanilla demo converted to
  demo+gab, the default `finetune` recipe): see export/README.md "GAB after a converted fine-tune".
  An explicit `gab_amplitude_init` = a0 is honoured as the same starting bias, a = a0^2 in the linear form
  (`converted_start`); a checkpoint that already holds GAB weights without the form flag is the paper's a^2.
- sigma and a train at `LR_SCALE` (20) x the recipe's learning rate (`lr_scale`): they are 2 H scalars per
  block whose useful range is O(1) (sigma in patches, a on the logits), and AdamW moves each by about lr per
  step: at fine-tuning's 5e-4 the default recipe (220 steps on the demo) left the linear a at |a| <= 0.017 and
  sigma within 0.03 of 5. The authors train them at the base rate over hundreds of ImageNet epochs.
- Folded, the bias is one constant [1, H, N, N] table added to the logits per GAB block: the graph must
  keep no Exp/Pow/Sqrt/Range, and hold one such table per GAB block.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from export.variants.base import BuildContext, CostContext, GraphContext, LayerRule, LayoutContext, Option, VariantDef

if TYPE_CHECKING:
    import onnx
    from torch import nn

    from export.spec import BlockConfig, ModelSpec


#: learning-rate factor of sigma and a (module docstring)
LR_SCALE = 20.0


def _default_layers(ctx: LayoutContext) -> list[int]:
    # the last block's bias cannot reach the logits (G's class-token row is 0 and only the class token
    # leaves the last block), so by default it has none: its sigma/a would never get a gradient
    return [i for i in ctx.computing if i != ctx.depth - 1] or list(ctx.computing)


def _build(ctx: BuildContext) -> nn.Module:
    from export.models.gab import GaussianAttentionBias

    return GaussianAttentionBias(ctx.num_heads, ctx.grid_size, ctx.num_prefix_tokens,
                                 ctx.option("gab_sigma_init"), ctx.option("gab_amplitude_init"))


def _converted_start(module: nn.Module, spec: ModelSpec, new: frozenset[str]) -> None:
    """The user's explicit `gab_amplitude_init` a0 wins (as the linear a = a0^2: the same bias); GAB weights the
    checkpoint holds without the form flag are the paper's a^2 form."""
    import torch

    from export.models.gab import GaussianAttentionBias

    if not isinstance(module, GaussianAttentionBias):
        return
    with torch.no_grad():
        if "amplitude" not in new:  # the checkpoint's own a (a GAB checkpoint written before the flag existed)
            module.linear_amplitude.zero_()
        elif "gab_amplitude_init" in spec.options:
            module.amplitude.fill_(float(spec.options["gab_amplitude_init"]) ** 2)


def _fold(module: nn.Module) -> nn.Module:
    from export.models.gab import FoldedAttentionBias, GaussianAttentionBias

    return FoldedAttentionBias(module()) if isinstance(module, GaussianAttentionBias) else module


def _graph_check(proto: onnx.ModelProto, ctx: GraphContext) -> list[str]:
    if ctx.num_tokens is None:
        return []
    from export.flops import added_token_tables

    n = ctx.num_tokens
    biases = added_token_tables(proto, n)
    expected = ctx.blocks_with("gab")
    if not biases:
        return [f"gab: no constant [.., {n}, {n}] bias is added in the graph"]
    if expected is not None and len(biases) != expected:
        return [f"gab: {len(biases)} constant bias(es) for {expected} GAB block(s)"]
    return []


def _cost(b: BlockConfig, c: CostContext) -> list[tuple[str, int]]:
    return [("elementwise.gab", c.heads * c.tokens**2)] if b.has("gab") else []


GAB = VariantDef(
    name="gab",
    order=40,
    summary="Gaussian Attention Bias: a learnt Gaussian of patch distance added to the logits (Kim et al., BMVC 2023)",
    options=(
        Option("gab_sigma_init", float, 5.0, "initial Gaussian width sigma in patches (default 5.0)",
               check=lambda v: v > 0, check_message="must be > 0"),
        Option("gab_amplitude_init", float, 1.0,
               "initial amplitude a (bias a^2 exp(...)); default 1.0; a checkpoint's conversion starts the linear "
               "form a exp(...) at a = 0 (or at this value squared when given)"),
        Option("gab_layers", tuple, None,
               "blocks with the Gaussian bias (default: the attention-computing blocks but the last)"),
    ),
    layers=LayerRule("gab_layers", _default_layers, computing_only=True),
    hook="bias",
    attr="gab",
    build=_build,
    no_weight_decay=("sigma", "amplitude"),
    lr_scale={"sigma": LR_SCALE, "amplitude": LR_SCALE},
    converted_start=_converted_start,
    fold=_fold,
    forbidden_ops=frozenset({"Exp", "Pow", "Sqrt", "Range"}),
    graph_check=_graph_check,
    cost=_cost,
)

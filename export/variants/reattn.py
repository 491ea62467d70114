"""Re-attention (DeepViT), `reattn` (VARIANTS.md 4; module: export/models/reattn.py).

Configurations (`reattn_config`, issue 28): the authors' by name, scaled to the model's depth --
- `deepvit-all`: every block (the authors' DeepViT-16B/24B), no scale;
- `deepvit-s`: the last 5 of 16 blocks with `transform_scale` (DeepViT-S), i.e. round(5/16 x depth), scale on;
- `deepvit-l`: the last 12 of 32 blocks (DeepViT-L), round(12/32 x depth), no scale;
- `half` (the default): the last half of the blocks, no scale. It is vitserve's, not an author's: it sits
  between S (31 %) and L (38 %) of the blocks and is what the demo and benchmark numbers were measured with
  (the demo has 4 blocks, where S and L both round to 1); changing it would change every published figure.
An explicit `reattn_layers` or `reattn_scale` overrides the configuration's. The authors apply attention
dropout before Theta; here the variants' map modules run before the attention dropout, which every preset
sets to 0, so the two orders compute the same (a preset with attention dropout would differ).

Decisions: restricted to the blocks that compute Q/K (`computing_only`; an explicit `reattn_layers` naming a
reuse block is refused). Its BatchNorm starts as the identity
with frozen statistics on a converted checkpoint and folds into the head-mixing convolution. Frozen, it never
normalises (running_var stays 1 - eps): a converted re-attention is then a learnt per-head affine map, not the
authors' batch-normalised operator; the manifest's `norm_statistics` says so (`frozen`). `vitserve-export
finetune --norm-statistics update` re-calibrates it on training batches at the end of the warm-up (gamma/beta
moved so the eval-mode function is unchanged) and trains with batch statistics from there
(`batch-after-warmup`); export/README.md ("BatchNorm statistics after a converted fine-tune") has the
measurement behind the default: on the demo fine-tune `update` does not help re-attention (lower on average
over 3 seeds, within the seed spread), so its default (`--norm-statistics auto`) stays `frozen`. From scratch the
demo model trains longer than the demo recipe's default: its BatchNorm over attention maps can end just under
the 95 % held-out target after the default epochs (the manifests hold the measured accuracies).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from export.variants.base import BuildContext, CostContext, LayerRule, LayoutContext, Option, VariantDef

if TYPE_CHECKING:
    from torch import nn

    from export.models.reattn import ReAttention
    from export.spec import BlockConfig


#: name -> (fraction of the blocks, counted from the last; transform_scale)
CONFIGS: dict[str, tuple[float, bool]] = {
    "half": (0.5, False),
    "deepvit-all": (1.0, False),
    "deepvit-s": (5 / 16, True),
    "deepvit-l": (12 / 32, False),
}


def _default_layers(ctx: LayoutContext) -> list[int]:
    """The last blocks that compute attention, as many as the configuration's share of the depth (at least 1)."""
    computing = list(ctx.computing)
    fraction, _ = CONFIGS[ctx.read("reattn_config")]
    count = min(len(computing), max(1, math.floor(fraction * ctx.depth + 0.5)))
    if fraction == 0.5:  # `half`: the last half of the computing blocks (as before the configurations)
        count = max(1, len(computing) // 2) if len(computing) > 1 else len(computing)
    return computing[len(computing) - count:]


def _scaled(option: Callable[[str], Any]) -> bool:
    explicit = option("reattn_scale")
    return CONFIGS[option("reattn_config")][1] if explicit is None else bool(explicit)


def _build(ctx: BuildContext) -> nn.Module:
    from export.models.reattn import ReAttention

    return ReAttention(ctx.num_heads, ctx.scale if _scaled(ctx.option) else 1.0)


def _fold(module: nn.Module) -> nn.Module:
    cast("ReAttention", module).fold_norm()  # the registry folds only the module `_build` made
    return module


def _cost(b: BlockConfig, c: CostContext) -> list[tuple[str, int]]:
    if not b.has("reattn"):
        return []
    H, N = c.heads, c.tokens
    return [("macs.reattn", H * H * N * N), ("elementwise.reattn", H * N * N)]  # head mixing, its bias


REATTN = VariantDef(
    name="reattn",
    order=50,
    summary="Re-attention: a learnt head-mixing matrix and BatchNorm on the attention map (DeepViT)",
    options=(
        Option("reattn_config", str, "half",
               "the blocks and scale: half (default: last half, no scale), deepvit-all (every block), "
               "deepvit-s (last 5/16 of the blocks, scale), deepvit-l (last 12/32)", choices=tuple(CONFIGS)),
        Option("reattn_layers", tuple, None,
               "blocks with re-attention (default: those of reattn_config)"),
        Option("reattn_scale", bool, None,
               "multiply the re-attended map by s = d^-1/2 (the authors' transform_scale; default: "
               "reattn_config's, true only for deepvit-s)"),
    ),
    layers=LayerRule("reattn_layers", _default_layers, computing_only=True),
    hook="map",
    attr="reattn",
    build=_build,
    fold=_fold,
    forbidden_ops=frozenset({"BatchNormalization"}),
    cost=_cost,
    demo_epochs=60,
)

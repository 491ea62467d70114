"""Attention reuse, LaViT-style, `lavit` (VARIANTS.md 2; module and loss: export/models/lavit.py).

Its Less-Attention blocks compute only V and reuse the previous block's logits (`token`: through learnt
N x N maps, its "reuse" module) or softmax map (`none`: no module); training adds the diagonality-preserving
loss on the transformed maps.

Decisions:
- Its schedule carries the variant on its Less-Attention blocks only (no layer option); a spec where every
  stage is all full blocks would touch no block and is refused.
- With `refiner` the refiner applies on the blocks that compute attention; Less-Attention blocks reuse the
  previous block's softmax map (before its head mixing / refinement) as VARIANTS.md 2 defines. With
  `refiner_share` it is refused (two reuse schedules on one stack).
- The model's last block computes full attention under `lavit_transform = token` (issue 28): only the class
  token leaves that block for the head, and row 0 of Psi^T A Theta depends only on Psi[:, 0], so a last
  Less-Attention block would ship N^2 - N entries of Psi that no task gradient reaches (only the diagonality
  loss moved them; vit_tiny: 38,612 dead parameters) and spend 2 H N^3 MACs on its token maps. Full attention
  there is also cheaper: 2 N D^2 + N^2 D MACs for Q, K and QK^T (vit_tiny: 22 M) against 2 H N^3 (46 M; demo:
  0.8 M against 2.2 M). The alternative, storing only Psi[:, 0] and computing the class row alone (identical
  logits), was not taken: the block would need a one-row attention path and a cost exception of its own.
  Under `none` the last block stays a Less-Attention block (it carries only V, all of which reaches the head).
- `lavit_transform = none` has no diagonality loss: its Less-Attention maps are the full block's softmax
  unchanged, so there is no transformed map to regularise (the loss would only push the full block's
  Q/K, once per reuse block); an explicit `lavit_loss_weight` > 0 with it is refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from export.variants.base import BuildContext, CostContext, Option, Schedule, VariantDef

if TYPE_CHECKING:
    import torch
    from torch import nn

    from export.models.vit import VariantViT
    from export.spec import BlockConfig, ModelSpec

TRANSFORMS = ("token", "none")


def _roles(depth: int, full: int, stages: int) -> list[bool]:
    """True where a block is a Less-Attention (reuse) block."""
    if stages < 1 or stages > depth:
        raise ValueError(f"option lavit_stages must be between 1 and the depth {depth}, got {stages}")
    if depth % stages:
        raise ValueError(f"option lavit_stages={stages} does not divide the depth {depth} into equal stages")
    if full < 1:
        raise ValueError(f"option lavit_full must be >= 1 (a stage must start with full attention), got {full}")
    per = depth // stages
    return [(i % per) >= full for i in range(depth)]


def _schedule(spec: ModelSpec, depth: int) -> Schedule:
    opt = spec.option
    transform = opt("lavit_transform")
    if transform not in TRANSFORMS:
        raise ValueError(f"option lavit_transform must be one of {TRANSFORMS}, got {transform!r}")
    reuse = _roles(depth, opt("lavit_full"), opt("lavit_stages"))
    if transform == "token":  # the model's last block computes full attention (module docstring)
        reuse[-1] = False
    if not any(reuse):
        last = " (with lavit_transform=token the last block computes full attention)" if transform == "token" else ""
        raise ValueError(
            f"lavit with lavit_full={opt('lavit_full')} and lavit_stages={opt('lavit_stages')} at depth {depth} "
            f"leaves no Less-Attention block{last}; lower lavit_full or the number of stages"
        )
    return Schedule(reuse=tuple(reuse), label="lavit")


def _validate(spec: ModelSpec) -> None:
    if spec.option("lavit_transform") == "none" and spec.options.get("lavit_loss_weight", 0) > 0:
        raise ValueError(
            "lavit_loss_weight has no effect with lavit_transform=none (no transformed map to regularise); "
            "drop it or use lavit_transform=token"
        )


def _build(ctx: BuildContext) -> nn.Module | None:
    """The token maps of a Less-Attention block (the builder is called only for the blocks carrying lavit)."""
    from export.models.lavit import LessAttentionTransform

    return LessAttentionTransform(ctx.num_tokens) if ctx.option("lavit_transform") == "token" else None


def _cost(b: BlockConfig, c: CostContext) -> list[tuple[str, int]]:
    """A Less-Attention block's V-only savings are the layout's; `token` adds 2 H N^3 MACs and its softmax."""
    if not (b.has("lavit") and b.attention == "reuse" and c.option("lavit_transform") == "token"):
        return []
    N, H = c.tokens, c.heads
    return [("macs.lavit", 2 * H * N**3), ("elementwise.softmax", 5 * H * N * N)]


def _loss(model: nn.Module) -> torch.Tensor | None:
    from export.models.lavit import diagonality_loss

    vit = cast("VariantViT", model)  # the registry calls `loss` with the VariantViT holding the variant
    maps = vit.transformed_attention_maps()  # the maps of the blocks whose token maps ran
    if not maps:
        return None
    return float(vit.spec.option("lavit_loss_weight")) * diagonality_loss(maps)


def _loss_label(spec: ModelSpec) -> str | None:
    weight = float(spec.option("lavit_loss_weight"))
    return f"lavit diagonality x {weight:g}" if weight else None


LAVIT = VariantDef(
    name="lavit",
    order=30,
    summary="Less-Attention: later blocks of a stage reuse the previous attention (Zhang et al., CVPR 2024)",
    options=(
        Option("lavit_full", int, 2, "blocks computing full attention at the start of each stage (default 2)"),
        Option("lavit_stages", int, 1, "number of equal stages the blocks are split into (default 1)"),
        Option("lavit_transform", str, "token",
               "'token' (learned N x N maps, paper) or 'none' (reuse previous softmax)", choices=TRANSFORMS),
        Option("lavit_loss_weight", float, 0.1,
               "weight of the diagonality-preserving loss in training (default 0.1)",
               check=lambda v: v >= 0, check_message="must be >= 0"),
    ),
    schedule=_schedule,
    validate=_validate,
    hook="reuse",
    attr="lavit",
    build=_build,
    cost=_cost,
    loss=_loss,
    loss_label=_loss_label,
    bench=(({"lavit_transform": "none"}, "lavit_none", "lavit (none)"),),
    bench_label="lavit (token)",
)

"""Cost formulas of VARIANTS.md: multiply-adds (MACs) and FLOPs per image, and parameter counts.

These are the *claimed* costs, computed from the architecture alone; `export/flops.py` counts the
exported ONNX graph, and tests hold the two within 2 %. Terms per image (N tokens, D width, H heads,
r MLP ratio, P = N - 1 patches of p x p pixels, C classes):

MACs (multiply-adds in MatMul / Gemm / Conv):
- patch embedding P * 3p^2 * D; head D * C (on the class token only);
- a block computing attention: (4 + 2r) N D^2 + 2 N^2 D;
- a reuse block (of a variant's schedule) computes V only: (2 + 2r) N D^2 + N^2 D.

FLOPs follow `export/flops.py`'s convention so the two can be compared: 2 x MACs, plus 1 per output
element of a bias add (Linear, Conv), 1 per element of element-wise ops (residual adds, the q scaling,
GELU as 5 element-wise ops (x/sqrt2, erf, +1, x*, *0.5) as exported at opset 18), 1 per input element of
a ReduceMean, 5 per Softmax element and 7 per LayerNormalization element. The FLOP formula is of the
*folded* model: a variant's constants are precomputed and every attention BatchNorm folded.

The vanilla terms are here; each variant's terms (its MACs and element-wise FLOPs, by the same
convention) are its `VariantDef.cost` (export/variants/), called for every block of a spec holding the
variant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from torch import nn

from export import variants as registry
from export.presets import get_preset
from export.spec import BlockConfig, ModelSpec, block_layout
from export.variants.base import CostContext

if TYPE_CHECKING:
    from export.models.vit import VariantBlock, VariantViT

__all__ = ["ModelDims", "formula_macs", "formula_flops", "cost_breakdown", "count_parameters"]


@dataclass(frozen=True)
class ModelDims:
    """The sizes the formulas need."""

    tokens: int  # N, patches + class token
    patches: int
    patch_size: int
    in_chans: int
    dim: int
    heads: int
    mlp_hidden: int
    num_classes: int
    layout: tuple[BlockConfig, ...]
    spec: ModelSpec


def _dims(spec_or_model: ModelSpec | nn.Module, num_classes: int | None) -> ModelDims:
    if isinstance(spec_or_model, ModelSpec):
        spec = spec_or_model
        preset = get_preset(spec.preset)
        arch = preset.arch
        grid = preset.grid_size
        dim = int(arch["embed_dim"])
        return ModelDims(
            tokens=preset.num_tokens,
            patches=grid[0] * grid[1],
            patch_size=int(arch["patch_size"]),
            in_chans=int(arch.get("in_chans", 3)),
            dim=dim,
            heads=int(arch["num_heads"]),
            mlp_hidden=int(dim * float(arch.get("mlp_ratio", 4.0))),
            num_classes=int(arch["num_classes"] if num_classes is None else num_classes),
            layout=block_layout(spec),
            spec=spec,
        )
    if getattr(spec_or_model, "spec", None) is None or getattr(spec_or_model, "layout", None) is None:
        raise ValueError("formula costs need a ModelSpec or a VariantViT (a model with .spec and .layout)")
    model = cast("VariantViT", spec_or_model)  # has .spec and .layout: a VariantViT (timm attributes below)
    spec, layout = model.spec, model.layout
    grid = tuple(model.patch_embed.grid_size)
    patch = model.patch_embed.patch_size
    first = cast("VariantBlock", model.blocks[0])  # VariantViT builds VariantBlocks (timm types them Module)
    fc1 = cast(nn.Linear, first.mlp.fc1)  # timm's default Mlp (no preset changes mlp_layer): an nn.Linear
    return ModelDims(
        tokens=grid[0] * grid[1] + model.num_prefix_tokens,
        patches=grid[0] * grid[1],
        patch_size=int(patch[0] if isinstance(patch, (tuple, list)) else patch),
        in_chans=int(model.patch_embed.proj.in_channels),
        dim=int(model.embed_dim),
        heads=int(first.attn.num_heads),
        mlp_hidden=int(fc1.out_features),
        num_classes=int(model.num_classes if num_classes is None else num_classes),
        layout=tuple(layout),
        spec=spec,
    )


def cost_breakdown(spec_or_model: ModelSpec | nn.Module, *, num_classes: int | None = None) -> dict[str, int]:
    """MACs and element-wise FLOPs per image by component: keys `macs.<part>` and `elementwise.<part>`."""
    d = _dims(spec_or_model, num_classes)
    N, D, H, Fh, P = d.tokens, d.dim, d.heads, d.mlp_hidden, d.patches
    ctx = CostContext(tokens=N, dim=D, heads=H, mlp_hidden=Fh, option=d.spec.option)
    costed = [registry.get(name) for name in d.spec.variants]
    out: dict[str, int] = {}

    def add(key: str, value: int) -> None:
        out[key] = out.get(key, 0) + int(value)

    add("macs.patch_embed", P * d.in_chans * d.patch_size**2 * D)
    add("elementwise.patch_embed", P * D + N * D)  # conv bias, + pos_embed
    for b in d.layout:
        full = b.attention == "full"
        add("macs.qkv", (3 if full else 1) * N * D * D)
        add("elementwise.qkv_bias", (3 if full else 1) * N * D)
        if full:
            add("macs.attention", 2 * N * N * D)  # QK^T and PV
            add("elementwise.q_scale", N * D)
            add("elementwise.softmax", 5 * H * N * N)
        else:
            add("macs.attention", N * N * D)  # PV only
        add("macs.proj", N * D * D)
        add("macs.mlp", 2 * N * D * Fh)
        add("elementwise.linear_bias", N * D + N * Fh + N * D)  # proj, fc1, fc2 biases
        add("elementwise.gelu", 5 * N * Fh)
        add("elementwise.layernorm", 2 * 7 * N * D)
        add("elementwise.residual", 2 * N * D)
        for variant in costed:
            for key, value in (variant.cost(b, ctx) if variant.cost is not None else ()):
                add(key, value)
    add("elementwise.final_norm", 7 * N * D)
    add("macs.head", D * d.num_classes)
    add("elementwise.head", d.num_classes)
    return out


def formula_macs(spec_or_model: ModelSpec | nn.Module, *, num_classes: int | None = None) -> int:
    """Multiply-adds per image by the VARIANTS.md formulas (patch embedding, blocks, head)."""
    return sum(v for k, v in cost_breakdown(spec_or_model, num_classes=num_classes).items() if k.startswith("macs."))


def formula_flops(spec_or_model: ModelSpec | nn.Module, *, num_classes: int | None = None) -> int:
    """FLOPs per image: 2 x `formula_macs` plus the element-wise terms (convention in the module docstring)."""
    parts = cost_breakdown(spec_or_model, num_classes=num_classes)
    macs = sum(v for k, v in parts.items() if k.startswith("macs."))
    return 2 * macs + sum(v for k, v in parts.items() if k.startswith("elementwise."))


def count_parameters(model: nn.Module) -> int:
    """The manifest's `parameters`: trainable parameter elements of the model before folding (issue 28).

    Counted whatever their value (a zero-initialised head bias counts: the ONNX exporter may drop or share
    such tensors, so the graph under-counts them) and whether or not folding turns them into constants
    (BatchNorm gamma/beta into conv weights, GAB's sigma and a into a bias table). Buffers (running
    statistics, GAB's distance table) are not parameters. Every counted parameter reaches the output: blocks
    that compute only V carry only their V projection, GAB leaves out the last block and LaViT's `token` form
    gives the last block full attention (tests/unit/export/models/test_export_parameter_gradients.py checks
    that each one gets a task-loss gradient). `export.flops.graph_parameters` counts the exported graph instead.
    """
    return sum(p.numel() for p in model.parameters())  # (a folded copy sets requires_grad off; still counted)

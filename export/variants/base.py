"""What a variant is, as data: `VariantDef` and the small records its hooks receive.

Why: every part of export/ that depends on the variants (spec parsing, block layout, the model, folding,
the exporter's graph checks, the cost formulas, checkpoint conversion, the training loss, the demo training
list, the CLI help, the benchmarks) reads one `VariantDef` per variant from `export.variants.registry` and
never names a variant, so adding a variant is one new module that declares one entry. Nothing here imports
torch or onnx: hooks import what they build lazily.

Hook points of the model (`VariantDef.hook`), in the order a block applies them:
- "bias": a module returning a constant-at-inference additive bias for the logits (GAB);
- "logits": a module mapping the logits to new logits before the softmax;
- "map": a module mapping the attention map to a new map after the softmax (re-attention, refiner);
- "reuse": the module a reuse block applies to the previous block's logits (LaViT's token maps); the
  maps such blocks compute are kept for the training loss (`VariantViT.transformed_attention_maps`);
- "output": a module mapping the block's output (after the MLP residual add) (CB, CB_S).
Several variants on one hook point apply in the registry's order. "logits" and "map" modules need the
explicit attention map, so a block holding one never takes the fused SDPA path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import onnx
    import torch
    from torch import nn

    from export.spec import BlockConfig, ModelSpec

__all__ = [
    "Hook",
    "Option",
    "LayerRule",
    "LayoutContext",
    "Schedule",
    "BuildContext",
    "CostContext",
    "GraphContext",
    "VariantDef",
    "DEFAULT_ORDER",
]

Hook = Literal["bias", "logits", "map", "reuse", "output"]
#: the `order` of a variant that declares none: after the built-in ones
DEFAULT_ORDER = 1000
#: reads an option's value (the caller's, else its default)
OptionReader = Callable[[str], Any]


@dataclass(frozen=True)
class Option:
    """One `--opt key=value` of a variant.

    type: int, float, bool, str, or tuple (a tuple of block indices, written '0,1,2').
    choices: the allowed values, if closed; check/check_message: a further rule on a converted value.
    """

    key: str
    type: type
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    check: Callable[[Any], bool] | None = None
    check_message: str = ""

    def problem(self, value: Any) -> str | None:
        """Why `value` (already converted to `type`) is refused, or None."""
        if self.choices is not None and value not in self.choices:
            return f"must be one of {self.choices}"
        if self.check is not None and not self.check(value):
            return self.check_message
        return None


@dataclass(frozen=True)
class LayoutContext:
    """What a layer rule's default sees: the depth, which blocks compute their own attention, the options."""

    depth: int
    reuse: tuple[bool, ...]
    #: the blocks that compute Q/K logits (not 'reuse' blocks)
    computing: tuple[int, ...]
    #: the spec's option values (None: only the options' defaults are known)
    option: OptionReader | None = None

    def read(self, key: str) -> Any:
        """An option's value (the spec's, else its default)."""
        if self.option is None:
            raise ValueError(f"option {key!r}: this layout context carries no options")
        return self.option(key)


@dataclass(frozen=True)
class LayerRule:
    """The blocks a per-block variant applies to: an option naming them, or a default set.

    computing_only: the variant works on logits, so it may only apply to blocks that compute them.
    """

    key: str
    default: Callable[[LayoutContext], Sequence[int]]
    computing_only: bool = False


@dataclass(frozen=True)
class Schedule:
    """A variant that makes blocks reuse a previous block's map (LaViT, refiner sharing).

    reuse: True for each block that computes only V; label: how error messages name the schedule;
    adds_prev_map: attention blocks after the first add s * the map handed on by the previous pair
    (refiner sharing).
    """

    reuse: tuple[bool, ...]
    label: str
    adds_prev_map: bool = False


@dataclass(frozen=True)
class BuildContext:
    """What a variant's module builder needs: the attention's sizes, the block's config and the options."""

    dim: int
    num_heads: int
    scale: float
    grid_size: tuple[int, int]
    num_prefix_tokens: int
    cfg: BlockConfig
    option: OptionReader

    @property
    def num_tokens(self) -> int:
        return self.grid_size[0] * self.grid_size[1] + self.num_prefix_tokens


@dataclass(frozen=True)
class CostContext:
    """The sizes cost formulas use: N tokens, D width, H heads, the MLP hidden width, and the options."""

    tokens: int
    dim: int
    heads: int
    mlp_hidden: int
    option: OptionReader


@dataclass(frozen=True)
class GraphContext:
    """What a graph check sees besides the graph: the token count (None if unknown) and the layout."""

    num_tokens: int | None
    layout: tuple[BlockConfig, ...] | None
    #: number of blocks carrying each variant, when known (overrides counting `layout`)
    counts: Mapping[str, int] = field(default_factory=dict)

    def blocks_with(self, variant: str) -> int | None:
        if variant in self.counts:
            return self.counts[variant]
        if self.layout is None:
            return None
        return sum(variant in b.variants for b in self.layout)


@dataclass(frozen=True)
class VariantDef:
    """One variant of VARIANTS.md (or a plug-in one), declared once and read everywhere.

    name: the spec name (`vit_small+NAME`); summary: one line for the CLI help.
    order: its place in the canonical order (model names and `str(spec)` list variants by it; ties
        keep the registration order); the built-in ones take 10, 20, ..., a plug-in without one comes last.
    options: its `--opt` keys, each prefixed with the variant's name.
    layers: for a per-block variant, which blocks carry it (None: `schedule` decides, or none).
    conflicts: {other variant: message} pairs refused in one spec.
    schedule: a variant that makes some blocks reuse attention returns their `Schedule` (or None).
    validate: further checks of a spec holding the variant (ValueError).
    adjust_layers: narrows the resolved block set once every schedule is known.
    hook, attr, build: where its module sits (see the module docstring), the attribute name it is
        stored under (`blocks.{i}.attn.<attr>`, or `blocks.{i}.<attr>` for "output"), and the builder
        (None from `build` means the block needs no module).
    no_weight_decay: parameter names of its module that take no weight decay.
    lr_scale: {parameter name of its module: factor} on the learning rate in training (a few scalars whose useful
        range is O(1), e.g. GAB's amplitude and sigma, would otherwise move by about lr per AdamW step).
    converted_start: after a checkpoint conversion reset its module's new parameters to their
        function-preserving start (the module's `reset_function_preserving`), adjusts that start to the
        spec (module, spec, the module's own parameter names the checkpoint lacked).
    fold: turns its module into the inference form (constants precomputed, BatchNorms folded).
    required_ops / forbidden_ops: op types the folded ONNX graph must / must not hold when it is present.
    graph_check: further checks of the folded graph (returns the problems found).
    cost: MACs and element-wise FLOPs it adds to one block, as (`macs.<part>` / `elementwise.<part>`, n).
    loss: the extra training loss of a model holding it (None: none); loss_label names it in manifests.
    demo: `demo+NAME` is one of the demo models (`vitserve-export train`'s default list).
    demo_epochs: training epochs of `demo+NAME` in the demo recipe, when not `DEMO_CONFIG.epochs`.
    bench: extra benchmark models beside `PRESET+NAME`: (options, name suffix, label) triples.
    bench_label: the label of the plain `PRESET+NAME` benchmark model (default: the name).
    side_by_side: `PRESET+NAME` is one of the models `vitserve-bench multi` serves side by side.
    norm_statistics: what a converted fine-tune does by default (`--norm-statistics auto`) with the BatchNorms its
        conversion inserts: keep the converted statistics (`frozen`) or release them after the warm-up
        (`update`); a spec releases them when one of its variants asks to (measured per variant).
    """

    name: str
    summary: str
    order: int = DEFAULT_ORDER
    options: tuple[Option, ...] = ()
    layers: LayerRule | None = None
    conflicts: Mapping[str, str] = field(default_factory=dict)
    schedule: Callable[[ModelSpec, int], Schedule | None] | None = None
    validate: Callable[[ModelSpec], None] | None = None
    adjust_layers: Callable[[ModelSpec, set[int], LayoutContext], set[int]] | None = None
    hook: Hook | None = None
    attr: str | None = None
    build: Callable[[BuildContext], nn.Module | None] | None = None
    no_weight_decay: tuple[str, ...] = ()
    lr_scale: Mapping[str, float] = field(default_factory=dict)
    converted_start: Callable[[nn.Module, ModelSpec, frozenset[str]], None] | None = None
    fold: Callable[[nn.Module], nn.Module] | None = None
    required_ops: frozenset[str] = frozenset()
    forbidden_ops: frozenset[str] = frozenset()
    graph_check: Callable[[onnx.ModelProto, GraphContext], Iterable[str]] | None = None
    cost: Callable[[BlockConfig, CostContext], Iterable[tuple[str, int]]] | None = None
    loss: Callable[[nn.Module], torch.Tensor | None] | None = None
    loss_label: Callable[[ModelSpec], str | None] | None = None
    demo: bool = True
    demo_epochs: int | None = None
    bench: tuple[tuple[Mapping[str, Any], str, str], ...] = ()
    bench_label: str | None = None
    side_by_side: bool = True
    norm_statistics: Literal["frozen", "update"] = "frozen"

    def __post_init__(self) -> None:
        for opt in self.options:
            if not opt.key.startswith(self.name + "_"):
                raise ValueError(f"variant {self.name}: option {opt.key!r} must start with {self.name + '_'!r}")
        if self.layers is not None and self.layers.key not in {o.key for o in self.options}:
            raise ValueError(f"variant {self.name}: layer option {self.layers.key!r} is not among its options")
        if self.build is not None and (self.hook is None or self.attr is None):
            raise ValueError(f"variant {self.name}: a module builder needs a hook point and an attribute name")
        if self.demo_epochs is not None and self.demo_epochs < 1:
            raise ValueError(f"variant {self.name}: demo_epochs must be >= 1, got {self.demo_epochs}")

    @property
    def module_attr(self) -> str | None:
        return self.attr if self.build is not None else None

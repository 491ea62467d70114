"""VariantViT: timm's VisionTransformer with the composable attention variants of VARIANTS.md.

Read top-down: the attention (timm `Attention` plus the variants' modules at its hook points: logit
bias, logits, reuse of the previous logits, map), the block (timm `Block` plus the variants' "output"
modules at its end and the attention-map hand-over between blocks), the model (timm `VisionTransformer`
whose `forward_features` threads that hand-over through the blocks), and `create_model`.

Every shared parameter keeps timm's name (`blocks.{i}.attn.qkv`, ...), so timm checkpoints load; each
variant's own parameters live in its sub-module, named by its `VariantDef.attr`: `blocks.{i}.<attr>.*`
for an "output" module, `blocks.{i}.attn.<attr>.*` otherwise. A block that computes no Q/K (a reuse
block of a variant's schedule) carries only the V projection, `blocks.{i}.attn.v` ([D, D]): the graph
ships no unused Q/K rows; `export.checkpoint` slices it out of a checkpoint's full `qkv`.

Which variant module sits where comes from the variant table (`export.variants`): each `VariantDef`
names its hook point (logit bias, logits, map, reuse, block output), its attribute and its builder, so
this file names no variant. What stays here is the structure the block layout describes: which blocks
compute only V and the hand-over of maps between blocks (and the collection of the maps that "reuse"
modules transformed, for a variant's training loss: `transformed_attention_maps`).

Fused or unfused attention is an argument (`fused_attn`): the fused path calls
`F.scaled_dot_product_attention` (with the bias as an additive mask); blocks that need the explicit
map (a hand-over or reuse, or a "logits"/"map" module) always take the explicit-math path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import Any, NamedTuple, cast

import torch
import torch.nn.functional as F
from timm.layers import Attention
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from export import variants as registry
from export.presets import get_preset
from export.spec import BlockConfig, ModelSpec, block_layout
from export.variants.base import BuildContext, Hook, VariantDef

__all__ = ["AttentionMap", "VariantAttention", "VariantBlock", "VariantViT", "create_model", "variant_modules"]

#: hook points that live in the attention module (the rest, "output", at the end of the block)
_ATTENTION_HOOKS = ("reuse", "bias", "logits", "map")


class AttentionMap(NamedTuple):
    """What a block hands to the next one when that one reuses attention.

    logits: the pre-softmax logits [B, H, N, N] (what a "reuse" module transforms).
    probs: the attention map [B, H, N, N] the next block reuses when it has no "reuse" module.
    """

    logits: torch.Tensor
    probs: torch.Tensor


def _is_tracing() -> bool:
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


def _split_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Pop the variant options out of `kwargs` (the rest are timm's arguments)."""
    known = registry.options()
    return {k: kwargs.pop(k) for k in list(kwargs) if k in known}


def _reader(options: Mapping[str, Any]):  # -> OptionReader
    return lambda key: options[key] if options.get(key) is not None else registry.option(key).default


class _ModuleSlot(NamedTuple):
    """A variant that builds a module (`VariantDef` with `build`, so `hook` and `attr` too, set)."""

    name: str
    hook: Hook
    attr: str
    build: Callable[[BuildContext], nn.Module | None]


def _defs(hooks: Sequence[str]) -> list[_ModuleSlot]:
    return [_ModuleSlot(d.name, d.hook, d.attr, d.build) for d in registry.variants()
            if d.build is not None and d.hook is not None and d.attr is not None and d.hook in hooks]


def _pair(size: Sequence[int]) -> tuple[int, int]:
    h, w = size
    return h, w


def _blocks(model: nn.Module) -> Iterable[VariantBlock]:
    """A VariantViT's blocks (timm's `nn.Sequential` of what `block_fn` built: `VariantBlock`s)."""
    return cast("Iterable[VariantBlock]", model.blocks)


class VariantAttention(Attention):
    """timm multi-head self-attention with the variants' hooks on the attention map.

    Logits = s QK^T (+ bias modules) -> logits modules; P = softmax(logits) (+ s A_prev where the
    layout says `adds_prev_map`); P' = the map modules applied in table order; out = proj(P' V). A
    'reuse' block computes only V (its own [D, D] projection `v`) and takes its logits (through its
    "reuse" modules) or map from the previous block. Variant options may be passed as keywords or in
    `options`.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        cfg: BlockConfig,
        grid_size: tuple[int, int],
        num_prefix_tokens: int = 1,
        qkv_bias: bool = True,
        fused_attn: bool = False,
        options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        options = {**(options or {}), **_split_options(kwargs)}
        super().__init__(dim, num_heads=num_heads, qkv_bias=qkv_bias, **kwargs)
        self.cfg = cfg
        self.fused_attn = fused_attn  # type: ignore[misc]  # timm marks it Final (TorchScript); set per instance here
        if cfg.attention == "reuse":  # V only: no Q/K rows to ship
            del self.qkv
            self.v = nn.Linear(dim, self.attn_dim, bias=qkv_bias)
        ctx = BuildContext(dim=dim, num_heads=num_heads, scale=self.scale, grid_size=_pair(grid_size),
                           num_prefix_tokens=num_prefix_tokens, cfg=cfg, option=_reader(options))
        self._hooks: dict[str, list[str]] = {hook: [] for hook in _ATTENTION_HOOKS}
        for d in _defs(_ATTENTION_HOOKS):
            module = d.build(ctx) if cfg.has(d.name) else None
            if not hasattr(self, d.attr) or module is not None:
                setattr(self, d.attr, module)
            if module is not None:
                self._hooks[d.hook].append(d.attr)

    def _modules_at(self, hook: str) -> list[nn.Module]:
        return [getattr(self, attr) for attr in self._hooks[hook]]

    @property
    def transforms_reused_logits(self) -> bool:
        """A reuse block whose "reuse" modules compute its map from the previous logits."""
        return self.cfg.attention == "reuse" and bool(self._hooks["reuse"])

    @property
    def needs_explicit_map(self) -> bool:
        cfg = self.cfg
        return (cfg.attention == "reuse" or cfg.provides_map or cfg.adds_prev_map
                or bool(self._hooks["logits"]) or bool(self._hooks["map"]))

    def _split_heads(self, t: torch.Tensor, B: int, N: int) -> torch.Tensor:
        return t.reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(  # type: ignore[override]  # takes and returns the map handed between blocks, no attn_mask
        self, x: torch.Tensor, prev: AttentionMap | None = None
    ) -> tuple[torch.Tensor, AttentionMap | None]:
        B, N, C = x.shape
        handed: AttentionMap | None = None
        if self.cfg.attention == "reuse":
            if prev is None:
                raise RuntimeError(f"block {self.cfg.index} reuses attention but no map was handed to it")
            v = self._split_heads(self.v(x), B, N)
            transforms = self._modules_at("reuse")
            if transforms:
                logits = prev.logits
                for transform in transforms:
                    logits = transform(logits)
                attn = logits.softmax(dim=-1)
                handed = AttentionMap(logits, attn)
            else:  # pure reuse: the previous map, handed on as received (before this block's map modules)
                attn = prev.probs
                handed = prev
        else:
            qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)
            q, k = self.q_norm(q), self.k_norm(k)
            bias = None
            for module in self._modules_at("bias"):
                bias = module() if bias is None else bias + module()
            if self.fused_attn and not self.needs_explicit_map:
                x = F.scaled_dot_product_attention(
                    q, k, v, attn_mask=bias, dropout_p=self.attn_drop.p if self.training else 0.0
                )
                return self._project(x, B, N), None
            logits = (q * self.scale) @ k.transpose(-2, -1)
            if bias is not None:
                logits = logits + bias
            for module in self._modules_at("logits"):
                logits = module(logits)
            attn = logits.softmax(dim=-1)
            if self.cfg.adds_prev_map and prev is not None:  # + s A of the previous pair
                attn = attn + self.scale * prev.probs
            handed = AttentionMap(logits, attn)
        for module in self._modules_at("map"):
            attn = module(attn)
        attn = self.attn_drop(attn)
        x = attn @ v
        return self._project(x, B, N), (handed if self.cfg.provides_map or self.cfg.attention == "reuse" else None)

    def _project(self, x: torch.Tensor, B: int, N: int) -> torch.Tensor:
        x = x.transpose(1, 2).reshape(B, N, self.attn_dim)
        x = self.norm(x)
        x = self.proj(x)
        return self.proj_drop(x)


class VariantBlock(Block):
    """timm pre-norm block with a `VariantAttention` and the variants' "output" modules at its end.

    x = x + attn(norm1(x)); x = x + mlp(norm2(x)); x = output modules(x). `forward(x, prev)` returns
    `(x, map)` where `map` is what the next block reuses (None unless it reuses attention).
    """

    attn: VariantAttention  # timm's Block declares a plain module; __init__ replaces it

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        layout: Sequence[BlockConfig],
        grid_size: tuple[int, int],
        variant_kwargs: Mapping[str, Any],
        fused_attn: bool = False,
        depth: int = 0,
        qkv_bias: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(dim, num_heads, qkv_bias=qkv_bias, depth=depth, **kwargs)
        cfg = layout[depth]
        self.cfg = cfg
        attn_kwargs: dict[str, Any] = {
            k: kwargs[k] for k in ("qk_norm", "proj_bias", "attn_drop", "proj_drop", "norm_layer") if k in kwargs
        }
        if kwargs.get("scale_attn_norm"):
            attn_kwargs["scale_norm"] = True
        self.attn = VariantAttention(
            dim, num_heads, cfg=cfg, grid_size=grid_size, qkv_bias=qkv_bias, fused_attn=fused_attn,
            options=variant_kwargs, **attn_kwargs,
        )
        ctx = BuildContext(dim=dim, num_heads=num_heads, scale=self.attn.scale, grid_size=_pair(grid_size),
                           num_prefix_tokens=1, cfg=cfg, option=_reader(variant_kwargs))
        self._outputs: list[str] = []
        for d in _defs(("output",)):
            module = d.build(ctx) if cfg.has(d.name) else None
            if module is not None:
                setattr(self, d.attr, module)
                self._outputs.append(d.attr)
            elif not hasattr(self, d.attr):
                setattr(self, d.attr, nn.Identity())

    def forward(  # type: ignore[override]  # takes and returns the handed-over map, no attn_mask
        self, x: torch.Tensor, prev: AttentionMap | None = None
    ) -> tuple[torch.Tensor, AttentionMap | None]:
        y, handed = self.attn(self.norm1(x), prev)
        x = x + self.drop_path1(self.ls1(y))
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        for attr in self._outputs:
            x = getattr(self, attr)(x)
        return x, handed


def variant_modules(model: nn.Module) -> list[tuple[str, VariantDef, nn.Module]]:
    """(qualified name, its variant, module) of every variant module of a VariantViT."""
    out = []
    for i, blk in enumerate(_blocks(model)):
        for d in registry.variants():
            attr = d.module_attr
            if attr is None or not blk.cfg.has(d.name):
                continue
            owner, prefix = (blk, f"blocks.{i}") if d.hook == "output" else (blk.attn, f"blocks.{i}.attn")
            module = getattr(owner, attr, None)
            if isinstance(module, nn.Module) and not isinstance(module, nn.Identity):
                out.append((f"{prefix}.{attr}", d, module))
    return out


class VariantViT(VisionTransformer):
    """timm VisionTransformer whose blocks carry the variants of a `ModelSpec`.

    Args:
        spec: the parsed spec (its options are the variant options); or `variants` and the variant
            options as keywords (see `vitserve-export list`).
        layout: the spec's block layout, if the caller has it (default: `block_layout(spec, depth)`).
        fused_attn: use `scaled_dot_product_attention` where no explicit map is needed.
        **kwargs: timm `VisionTransformer` arguments (img_size, patch_size, embed_dim, depth, ...).
    """

    def __init__(
        self,
        *,
        spec: ModelSpec | None = None,
        layout: Sequence[BlockConfig] | None = None,
        variants: Sequence[str] = (),
        fused_attn: bool = False,
        preset: str = "custom",
        **kwargs: Any,
    ) -> None:
        if spec is None:
            given = _split_options(kwargs)
            options = {k: (tuple(v) if isinstance(v, list) else v) for k, v in given.items() if v is not None}
            spec = ModelSpec(preset=preset, variants=tuple(variants), options=options)
        depth = int(kwargs.get("depth", 12))
        layout = tuple(layout) if layout is not None else block_layout(spec, depth=depth)
        img, patch = kwargs.get("img_size", 224), kwargs.get("patch_size", 16)
        img = (img, img) if isinstance(img, int) else tuple(img)
        patch = (patch, patch) if isinstance(patch, int) else tuple(patch)
        grid_size = (img[0] // patch[0], img[1] // patch[1])
        block_fn = partial(
            VariantBlock, layout=layout, grid_size=grid_size, variant_kwargs=dict(spec.options), fused_attn=fused_attn
        )
        if kwargs.get("global_pool", "token") != "token" or not kwargs.get("class_token", True):
            raise ValueError("VariantViT supports timm's class-token ViT only (global_pool='token')")
        if kwargs.get("reg_tokens", 0) or kwargs.get("dynamic_img_size", False):
            raise ValueError("VariantViT needs a fixed token count: no reg_tokens, no dynamic_img_size")
        super().__init__(block_fn=block_fn, **kwargs)  # type: ignore[arg-type]  # typed type[Module]; only called
        self.spec = spec
        self.layout = layout
        self.grid_size = grid_size
        self.fused_attn = fused_attn
        self._transformed_maps: list[torch.Tensor] = []

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles leave out the last forward's transformed maps (graph-holding activations)."""
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        state = dict(state)
        state["_transformed_maps"] = []
        return state

    @property
    def num_tokens(self) -> int:
        return self.grid_size[0] * self.grid_size[1] + self.num_prefix_tokens

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """timm's set plus the variants' own exempt parameters (each `VariantDef.no_weight_decay`)."""
        names = set(super().no_weight_decay())
        for name, d, module in variant_modules(self):
            own = dict(module.named_parameters())
            names |= {f"{name}.{p}" for p in d.no_weight_decay if p in own}
        return names

    def lr_scales(self) -> dict[str, float]:
        """{parameter name: learning-rate factor} of the variants' parameters that train at another rate
        (each `VariantDef.lr_scale`); parameters not named train at the recipe's rate."""
        out: dict[str, float] = {}
        for name, d, module in variant_modules(self):
            own = dict(module.named_parameters())
            out |= {f"{name}.{p}": float(f) for p, f in d.lr_scale.items() if p in own}
        return out

    def variant_state_keys(self) -> list[str]:
        """State-dict keys owned by the variants (absent from a timm checkpoint)."""
        prefixes = [name + "." for name, _, _ in variant_modules(self)]
        return [k for k in self.state_dict() if any(k.startswith(p) for p in prefixes)]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]  # no attn_mask
        x = self.patch_embed(x)
        x = self._pos_embed(x)
        x = self.patch_drop(x)
        x = self.norm_pre(x)
        handed: AttentionMap | None = None
        maps: list[torch.Tensor] = []
        for blk in _blocks(self):
            x, handed = blk(x, handed)
            if blk.attn.transforms_reused_logits and handed is not None:
                maps.append(handed.probs)
        if not _is_tracing():
            self._transformed_maps = maps
        return self.norm(x)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:  # type: ignore[override]  # not x, no attn_mask
        """pixel_values [B, 3, H, W] -> logits [B, num_classes]."""
        return self.forward_head(self.forward_features(pixel_values))

    def transformed_attention_maps(self) -> list[torch.Tensor]:
        """The maps P = softmax(T(A_prev)) [B, H, N, N] of the last forward's blocks whose "reuse" modules
        transformed the previous logits, in block order (what a variant's training loss regularises).

        Empty when no block has a "reuse" module (a variant that reuses the previous map as is).
        """
        return list(self._transformed_maps)

    def auxiliary_loss(self) -> torch.Tensor:
        """The sum of the spec's variants' extra training losses for the last forward (0 when none)."""
        assert self.cls_token is not None  # __init__ refuses class_token=False
        total = self.cls_token.new_zeros(())
        for name in self.spec.variants:
            d = registry.get(name)
            loss = d.loss(self) if d.loss is not None else None
            if loss is not None:
                total = total + loss
        return total

    def auxiliary_loss_labels(self) -> list[str]:
        """How the manifest's training recipe names the extra losses of this model's variants."""
        labels = []
        for name in self.spec.variants:
            d = registry.get(name)
            label = d.loss_label(self.spec) if d.loss_label is not None else None
            if label:
                labels.append(label)
        return labels


def create_model(
    spec: ModelSpec, *, num_classes: int | None = None, seed: int = 0, fused_attn: bool = False
) -> VariantViT:
    """Build the model a spec describes, with seeded random weights (the global RNG is left untouched)."""
    preset = get_preset(spec.preset)
    arch = preset.arch_kwargs(**({} if num_classes is None else {"num_classes": num_classes}))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VariantViT(spec=spec, layout=block_layout(spec, depth=int(arch.get("depth", preset.depth))),
                           preset=spec.preset, fused_attn=fused_attn, **arch)
    return model

"""VariantViT: timm's VisionTransformer with the composable attention variants of VARIANTS.md.

Read top-down: the attention (timm `Attention` plus optional GAB bias, LaViT reuse, re-attention,
refiner), the block (timm `Block` plus optional context broadcasting at its end and the attention-map
hand-over between blocks), the model (timm `VisionTransformer` whose `forward_features` threads that
hand-over through the blocks), and `create_model`.

Every shared parameter keeps timm's name (`blocks.{i}.attn.qkv`, ...), so timm checkpoints load; the
variants' own parameters live in sub-modules: `blocks.{i}.cb.scale` (cbs), `blocks.{i}.attn.gab.{sigma,
amplitude}`, `blocks.{i}.attn.lavit.{theta,psi}`, `blocks.{i}.attn.reattn.{conv,norm}.*`,
`blocks.{i}.attn.refiner.{expand,bn1,dw,bn2,reduce,bn3,norm}.*`. A block that computes no Q/K (LaViT
Less-Attention, refiner sharing) carries only the V projection, `blocks.{i}.attn.v` ([D, D]): the graph
ships no unused Q/K rows; `export.checkpoint` slices it out of a checkpoint's full `qkv`.

Fused or unfused attention is an argument (`fused_attn`): the fused path calls
`F.scaled_dot_product_attention` (with the GAB bias as an additive mask); blocks that need the explicit
map (LaViT hand-over or reuse, re-attention, refiner) always take the explicit-math path.
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from timm.layers import Attention
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from export.models.cb import ContextBroadcast, ScaledContextBroadcast
from export.models.gab import FoldedAttentionBias, GaussianAttentionBias
from export.models.lavit import LessAttentionTransform, diagonality_loss
from export.models.reattn import ReAttention
from export.models.refiner import AttentionRefiner
from export.presets import get_preset
from export.spec import OPTION_DEFAULTS, BlockConfig, ModelSpec, block_layout

__all__ = ["AttentionMap", "VariantAttention", "VariantBlock", "VariantViT", "create_model"]


class AttentionMap(NamedTuple):
    """What a block hands to the next one when that one reuses attention.

    logits: the pre-softmax logits [B, H, N, N] (LaViT 'token' reuse), or None.
    probs: the attention map [B, H, N, N] the next block reuses ('none' reuse, refiner sharing).
    """

    logits: torch.Tensor | None
    probs: torch.Tensor | None


def _is_tracing() -> bool:
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


class VariantAttention(Attention):
    """timm multi-head self-attention with the variants' hooks on the attention map.

    Logits = s QK^T (+ G); P = softmax(logits) (+ s A_prev under refiner_share); P' = P, re-attention
    BN(Theta * P), and/or the refined BN_H(P + DLA(P)); out = proj(P' V). A 'reuse' block computes only
    V (its own [D, D] projection `v`) and takes its logits or map from the previous block.
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
        gab_sigma_init: float = OPTION_DEFAULTS["gab_sigma_init"],
        gab_amplitude_init: float = OPTION_DEFAULTS["gab_amplitude_init"],
        refiner_expand: int = OPTION_DEFAULTS["refiner_expand"],
        refiner_kernel: int = OPTION_DEFAULTS["refiner_kernel"],
        reattn_scale: bool = OPTION_DEFAULTS["reattn_scale"],
        **kwargs: Any,
    ) -> None:
        super().__init__(dim, num_heads=num_heads, qkv_bias=qkv_bias, **kwargs)
        self.cfg = cfg
        self.fused_attn = fused_attn
        if cfg.attention == "reuse":  # V only: no Q/K rows to ship
            del self.qkv
            self.v = nn.Linear(dim, self.attn_dim, bias=qkv_bias)
        num_tokens = grid_size[0] * grid_size[1] + num_prefix_tokens
        self.gab: nn.Module | None = (
            GaussianAttentionBias(num_heads, grid_size, num_prefix_tokens, gab_sigma_init, gab_amplitude_init)
            if cfg.gab else None
        )
        self.lavit: nn.Module | None = (
            LessAttentionTransform(num_tokens) if cfg.lavit_transform == "token" else None
        )
        self.reattn: ReAttention | None = (
            ReAttention(num_heads, self.scale if reattn_scale else 1.0) if cfg.reattn else None
        )
        # the authors' sharing blocks scale their refined map by s
        refiner_scale = self.scale if cfg.refiner and cfg.attention == "reuse" and cfg.lavit_transform is None else 1.0
        self.refiner: AttentionRefiner | None = (
            AttentionRefiner(num_heads, refiner_expand, refiner_kernel, refiner_scale) if cfg.refiner else None
        )

    @property
    def needs_explicit_map(self) -> bool:
        cfg = self.cfg
        return (cfg.attention == "reuse" or cfg.provides_map or cfg.adds_prev_map or self.reattn is not None
                or self.refiner is not None)

    def _split_heads(self, t: torch.Tensor, B: int, N: int) -> torch.Tensor:
        return t.reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, prev: AttentionMap | None = None
    ) -> tuple[torch.Tensor, AttentionMap | None]:
        B, N, C = x.shape
        handed: AttentionMap | None = None
        if self.cfg.attention == "reuse":
            if prev is None:
                raise RuntimeError(f"block {self.cfg.index} reuses attention but no map was handed to it")
            v = self._split_heads(self.v(x), B, N)
            if self.cfg.lavit_transform == "token":
                logits = self.lavit(prev.logits)  # A^l = Psi^T A^{l-1} Theta
                attn = logits.softmax(dim=-1)
                handed = AttentionMap(logits, attn)
            else:  # 'none' (pure reuse) or refiner sharing: the previous map, handed on unrefined
                attn = prev.probs
                handed = prev
        else:
            qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)
            q, k = self.q_norm(q), self.k_norm(k)
            bias = self.gab() if self.gab is not None else None
            if self.fused_attn and not self.needs_explicit_map:
                x = F.scaled_dot_product_attention(
                    q, k, v, attn_mask=bias, dropout_p=self.attn_drop.p if self.training else 0.0
                )
                return self._project(x, B, N), None
            logits = (q * self.scale) @ k.transpose(-2, -1)
            if bias is not None:
                logits = logits + bias
            attn = logits.softmax(dim=-1)
            if self.cfg.adds_prev_map and prev is not None:  # refiner_share: + s A of the previous pair
                attn = attn + self.scale * prev.probs
            handed = AttentionMap(logits, attn)
        if self.reattn is not None:
            attn = self.reattn(attn)
        if self.refiner is not None:
            attn = self.refiner(attn)
        attn = self.attn_drop(attn)
        x = attn @ v
        return self._project(x, B, N), (handed if self.cfg.provides_map or self.cfg.attention == "reuse" else None)

    def _project(self, x: torch.Tensor, B: int, N: int) -> torch.Tensor:
        x = x.transpose(1, 2).reshape(B, N, self.attn_dim)
        x = self.norm(x)
        x = self.proj(x)
        return self.proj_drop(x)


class VariantBlock(Block):
    """timm pre-norm block with a `VariantAttention` and optional context broadcasting at its end.

    x = x + attn(norm1(x)); x = x + mlp(norm2(x)); x = CB(x). `forward(x, prev)` returns
    `(x, map)` where `map` is what the next block reuses (None unless it reuses attention).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        layout: Sequence[BlockConfig],
        grid_size: tuple[int, int],
        variant_kwargs: dict[str, Any],
        fused_attn: bool = False,
        depth: int = 0,
        qkv_bias: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(dim, num_heads, qkv_bias=qkv_bias, depth=depth, **kwargs)
        cfg = layout[depth]
        self.cfg = cfg
        attn_kwargs = {k: kwargs[k] for k in ("qk_norm", "proj_bias", "attn_drop", "proj_drop", "norm_layer")
                       if k in kwargs}
        if kwargs.get("scale_attn_norm"):
            attn_kwargs["scale_norm"] = True
        self.attn = VariantAttention(
            dim, num_heads, cfg=cfg, grid_size=grid_size, qkv_bias=qkv_bias, fused_attn=fused_attn,
            **variant_kwargs, **attn_kwargs,
        )
        if cfg.cb == "cb":
            self.cb: nn.Module = ContextBroadcast()
        elif cfg.cb == "cbs":
            self.cb = ScaledContextBroadcast(dim)
        else:
            self.cb = nn.Identity()

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, prev: AttentionMap | None = None
    ) -> tuple[torch.Tensor, AttentionMap | None]:
        y, handed = self.attn(self.norm1(x), prev)
        x = x + self.drop_path1(self.ls1(y))
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return self.cb(x), handed


class VariantViT(VisionTransformer):
    """timm VisionTransformer whose blocks carry the variants of a `ModelSpec`.

    Args:
        variants: variant names in canonical order (`cb`, `cbs`, `lavit`, `gab`, `reattn`, `refiner`).
        cb_layers, cbs_layers: blocks ending with CB / CB_S (default all).
        lavit_full: full-attention blocks at the start of each stage (default 2).
        lavit_stages: number of equal stages (default 1).
        lavit_transform: 'token' (learned N x N maps) or 'none' (reuse the previous softmax).
        lavit_loss_weight: weight of the diagonality loss in `auxiliary_loss` (default 0.1).
        gab_sigma_init, gab_amplitude_init, gab_layers: Gaussian bias init (5.0, 1.0) and blocks.
        reattn_layers: re-attention blocks (default last half of the attention-computing blocks).
        reattn_scale: multiply the re-attended map by s (the authors' transform_scale; default False).
        refiner_expand, refiner_kernel, refiner_share, refiner_layers: refiner E (3), k (3), sharing, blocks.
        fused_attn: use `scaled_dot_product_attention` where no explicit map is needed.
        **kwargs: timm `VisionTransformer` arguments (img_size, patch_size, embed_dim, depth, ...).
    """

    def __init__(
        self,
        *,
        variants: Sequence[str] = (),
        cb_layers: Sequence[int] | None = None,
        cbs_layers: Sequence[int] | None = None,
        lavit_full: int | None = None,
        lavit_stages: int | None = None,
        lavit_transform: str | None = None,
        lavit_loss_weight: float | None = None,
        gab_sigma_init: float | None = None,
        gab_amplitude_init: float | None = None,
        gab_layers: Sequence[int] | None = None,
        reattn_layers: Sequence[int] | None = None,
        reattn_scale: bool | None = None,
        refiner_expand: int | None = None,
        refiner_kernel: int | None = None,
        refiner_share: bool | None = None,
        refiner_layers: Sequence[int] | None = None,
        fused_attn: bool = False,
        preset: str = "custom",
        **kwargs: Any,
    ) -> None:
        given = dict(
            cb_layers=cb_layers, cbs_layers=cbs_layers, lavit_full=lavit_full, lavit_stages=lavit_stages,
            lavit_transform=lavit_transform, lavit_loss_weight=lavit_loss_weight, gab_sigma_init=gab_sigma_init,
            gab_amplitude_init=gab_amplitude_init, gab_layers=gab_layers, reattn_layers=reattn_layers,
            reattn_scale=reattn_scale, refiner_expand=refiner_expand, refiner_kernel=refiner_kernel,
            refiner_share=refiner_share, refiner_layers=refiner_layers,
        )
        options = {k: (tuple(v) if isinstance(v, list) else v) for k, v in given.items() if v is not None}
        spec = ModelSpec(preset=preset, variants=tuple(variants), options=options)
        depth = int(kwargs.get("depth", 12))
        layout = block_layout(spec, depth=depth)
        img, patch = kwargs.get("img_size", 224), kwargs.get("patch_size", 16)
        img = (img, img) if isinstance(img, int) else tuple(img)
        patch = (patch, patch) if isinstance(patch, int) else tuple(patch)
        grid_size = (img[0] // patch[0], img[1] // patch[1])
        variant_kwargs = {
            k: spec.option(k)
            for k in ("gab_sigma_init", "gab_amplitude_init", "refiner_expand", "refiner_kernel", "reattn_scale")
        }
        block_fn = partial(
            VariantBlock, layout=layout, grid_size=grid_size, variant_kwargs=variant_kwargs, fused_attn=fused_attn
        )
        if kwargs.get("global_pool", "token") != "token" or not kwargs.get("class_token", True):
            raise ValueError("VariantViT supports timm's class-token ViT only (global_pool='token')")
        if kwargs.get("reg_tokens", 0) or kwargs.get("dynamic_img_size", False):
            raise ValueError("VariantViT needs a fixed token count: no reg_tokens, no dynamic_img_size")
        super().__init__(block_fn=block_fn, **kwargs)
        self.spec = spec
        self.layout = layout
        self.grid_size = grid_size
        self.fused_attn = fused_attn
        self.lavit_loss_weight = float(spec.option("lavit_loss_weight"))
        self._lavit_maps: list[torch.Tensor] = []

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles leave out the last forward's LaViT maps (graph-holding activations)."""
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        state = dict(state)
        state["_lavit_maps"] = []
        return state

    @property
    def num_tokens(self) -> int:
        return self.grid_size[0] * self.grid_size[1] + self.num_prefix_tokens

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """timm's set plus the GAB sigma/amplitude and the CB_S scales."""
        names = set(super().no_weight_decay())
        for name, module in self.named_modules():
            if isinstance(module, GaussianAttentionBias):
                names |= {f"{name}.sigma", f"{name}.amplitude"}
            elif isinstance(module, ScaledContextBroadcast):
                names.add(f"{name}.scale")
        return names

    def variant_state_keys(self) -> list[str]:
        """State-dict keys owned by the variants (absent from a timm checkpoint)."""
        owned = (ScaledContextBroadcast, GaussianAttentionBias, FoldedAttentionBias, LessAttentionTransform,
                 ReAttention, AttentionRefiner)
        prefixes = [name + "." for name, m in self.named_modules() if isinstance(m, owned)]
        return [k for k in self.state_dict() if any(k.startswith(p) for p in prefixes)]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        x = self.patch_embed(x)
        x = self._pos_embed(x)
        x = self.patch_drop(x)
        x = self.norm_pre(x)
        handed: AttentionMap | None = None
        maps: list[torch.Tensor] = []
        for blk in self.blocks:
            x, handed = blk(x, handed)
            if blk.cfg.lavit_transform == "token" and handed is not None and handed.probs is not None:
                maps.append(handed.probs)
        if not _is_tracing():
            self._lavit_maps = maps
        return self.norm(x)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """pixel_values [B, 3, H, W] -> logits [B, num_classes]."""
        return self.forward_head(self.forward_features(pixel_values))

    def lavit_attention_maps(self) -> list[torch.Tensor]:
        """The transformed Less-Attention maps P = softmax(A^l) [B, H, N, N] of the last forward.

        Empty without lavit and with `lavit_transform = none` (nothing is transformed: see export.spec).
        """
        return list(self._lavit_maps)

    def auxiliary_loss(self) -> torch.Tensor:
        """lavit_loss_weight x diagonality loss of the last forward's Less-Attention maps; 0 without lavit."""
        if not self.spec.has("lavit") or not self._lavit_maps:
            return self.cls_token.new_zeros(())
        return self.lavit_loss_weight * diagonality_loss(self._lavit_maps)


def create_model(
    spec: ModelSpec, *, num_classes: int | None = None, seed: int = 0, fused_attn: bool = False
) -> VariantViT:
    """Build the model a spec describes, with seeded random weights (the global RNG is left untouched)."""
    preset = get_preset(spec.preset)
    arch = preset.arch_kwargs(**({} if num_classes is None else {"num_classes": num_classes}))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VariantViT(preset=spec.preset, variants=spec.variants, fused_attn=fused_attn,
                           **dict(spec.options), **arch)
    model.spec = spec
    return model

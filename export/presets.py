"""Model presets: the base architectures a spec (`PRESET[+VARIANT...]`) starts from.

Presets are data (after timm's `_cfg` / `register_model`): each entry holds the keyword arguments of
timm's `VisionTransformer` and, beside them, the data config (input size, mean/std, interpolation,
crop_pct) that flows unchanged into the manifest's `preprocess` block, so `service/` never retypes it.
`timm_arch` names the timm model whose checkpoints share the parameter layout (used by checkpoint tests).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from service.manifest import PreprocessConfig

__all__ = ["Preset", "PRESETS", "get_preset"]


@dataclass(frozen=True)
class Preset:
    """One registered base model: timm ViT arguments plus the preprocessing its weights expect."""

    name: str
    arch: dict[str, Any]
    data: PreprocessConfig
    timm_arch: str | None = None
    description: str = ""

    def arch_kwargs(self, **overrides: Any) -> dict[str, Any]:
        """The architecture arguments merged with caller overrides (the caller wins); a fresh dict."""
        return {**self.arch, **overrides}

    @property
    def depth(self) -> int:
        return int(self.arch["depth"])

    @property
    def num_heads(self) -> int:
        return int(self.arch["num_heads"])

    @property
    def embed_dim(self) -> int:
        return int(self.arch["embed_dim"])

    @property
    def grid_size(self) -> tuple[int, int]:
        """(rows, cols) of the patch grid."""
        img, patch = int(self.arch["img_size"]), int(self.arch["patch_size"])
        return img // patch, img // patch

    @property
    def num_tokens(self) -> int:
        """N: patches plus the class token."""
        rows, cols = self.grid_size
        return rows * cols + 1


# timm's augreg ViT weights (vit_*_patch16_224.augreg*_in21k_ft_in1k): mean/std 0.5, bicubic, crop_pct 0.9.
_VIT_224 = PreprocessConfig(
    input_size=(3, 224, 224), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bicubic", crop_pct=0.9
)
# The demo and test models see whole 32x32 images (no crop); digits are upscaled from 8x8.
_SMALL_32 = PreprocessConfig(
    input_size=(3, 32, 32), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bilinear", crop_pct=1.0
)


def _vit(embed_dim: int, depth: int, num_heads: int, *, img_size: int = 224, patch_size: int = 16,
         mlp_ratio: float = 4.0, num_classes: int = 1000) -> dict[str, Any]:
    return dict(
        img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
        mlp_ratio=mlp_ratio, qkv_bias=True, num_classes=num_classes,
    )


PRESETS: Mapping[str, Preset] = MappingProxyType({
    p.name: p
    for p in (
        Preset(name="demo", arch=_vit(64, 4, 4, img_size=32, patch_size=4, mlp_ratio=2.0, num_classes=10),
               data=_SMALL_32, description="small ViT for 32x32 inputs (8x8 grid), trained on sklearn digits"),
        Preset(name="vit_tiny", arch=_vit(192, 12, 3), data=_VIT_224,
               timm_arch="vit_tiny_patch16_224", description="ViT-Ti/16 at 224 px"),
        Preset(name="vit_small", arch=_vit(384, 12, 6), data=_VIT_224,
               timm_arch="vit_small_patch16_224", description="ViT-S/16 at 224 px"),
        Preset(name="vit_base", arch=_vit(768, 12, 12), data=_VIT_224,
               timm_arch="vit_base_patch16_224", description="ViT-B/16 at 224 px"),
        Preset(name="test", arch=_vit(32, 4, 2, img_size=32, patch_size=8, num_classes=10),
               data=_SMALL_32, description="tiny model for unit tests (4x4 grid, N=17)"),
    )
})


def get_preset(name: str) -> Preset:
    """The preset called `name`; ValueError naming the known presets otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}") from None

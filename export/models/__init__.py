"""The PyTorch models: timm's ViT with the composable variants of VARIANTS.md (see `vit.py`)."""

from __future__ import annotations

from export.models.vit import AttentionMap, VariantAttention, VariantBlock, VariantViT, create_model

__all__ = ["AttentionMap", "VariantAttention", "VariantBlock", "VariantViT", "create_model"]

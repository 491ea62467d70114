"""Inference folding: turn a trained/converted model into the constant-friendly graph we export.

`fold_for_inference(model)` returns an eval-mode deep copy in which
- every `GaussianAttentionBias` is replaced by a `FoldedAttentionBias` holding its value as ONE
  [1, H, N, N] buffer (no Exp/Pow/Sqrt or coordinate arithmetic left to trace),
- every re-attention BatchNorm (and the optional scale s) is folded into the head-mixing 1x1 convolution
  (W' = c diag(gamma/sqrt(var+eps)) Theta, b' = c (gamma (b - mu)/sqrt(var+eps) + beta)), and
- every Refiner BatchNorm is folded into the convolution before it and the head BatchNorm (times the
  sharing blocks' s) into one per-head affine map, so no BatchNorm is left and ReLU6 traces to Clip.
CB needs nothing: it already traces to ReduceMean + Mul + Add. Each variant's `VariantDef.fold` says
how its module folds (export/variants/); this module applies them. The folded model computes the same
logits as the unfolded one in eval mode (up to float rounding).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["fold_for_inference"]


@torch.no_grad()
def fold_for_inference(model: nn.Module) -> nn.Module:
    """An eval-mode deep copy of `model` with every variant module in its inference form (`VariantDef.fold`)."""
    from export.models.vit import variant_modules

    folded = copy.deepcopy(model).eval()
    for name, d, module in variant_modules(folded):
        if d.fold is None:
            continue
        owner_name, _, attr = name.rpartition(".")
        owner = folded.get_submodule(owner_name)
        replacement = d.fold(module)
        if replacement is not module:
            setattr(owner, attr, replacement)
    for p in folded.parameters():
        p.requires_grad_(False)
    return folded

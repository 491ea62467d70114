"""Inference folding: turn a trained/converted model into the constant-friendly graph we export.

`fold_for_inference(model)` returns an eval-mode deep copy in which
- every `GaussianAttentionBias` is replaced by a `FoldedAttentionBias` holding its value as ONE
  [1, H, N, N] buffer (no Exp/Pow/Sqrt or coordinate arithmetic left to trace),
- every re-attention BatchNorm (and the optional scale s) is folded into the head-mixing 1x1 convolution
  (W' = c diag(gamma/sqrt(var+eps)) Theta, b' = c (gamma (b - mu)/sqrt(var+eps) + beta)), and
- every Refiner BatchNorm is folded into the convolution before it and the head BatchNorm (times the
  sharing blocks' s) into one per-head affine map, so no BatchNorm is left and ReLU6 traces to Clip.
CB needs nothing: it already traces to ReduceMean + Mul + Add. The folded model computes the same
logits as the unfolded one in eval mode (up to float rounding).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from export.models.gab import FoldedAttentionBias, GaussianAttentionBias
from export.models.reattn import ReAttention
from export.models.refiner import AttentionRefiner

__all__ = ["fold_for_inference"]


@torch.no_grad()
def fold_for_inference(model: nn.Module) -> nn.Module:
    """An eval-mode deep copy of `model` with GAB biases precomputed and every attention BN folded."""
    folded = copy.deepcopy(model).eval()
    for module in list(folded.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, GaussianAttentionBias):
                setattr(module, child_name, FoldedAttentionBias(child()))
        if isinstance(module, ReAttention):
            module.fold_norm()
        elif isinstance(module, AttentionRefiner):
            module.fold()
    for p in folded.parameters():
        p.requires_grad_(False)
    return folded

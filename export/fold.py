"""Inference folding: turn a trained/converted model into the constant-friendly graph we export.

`fold_for_inference(model)` returns an eval-mode deep copy in which every variant module is in its
inference form: constants precomputed into buffers (nothing left to recompute per request), BatchNorms
folded into the operation before them (no BatchNorm left in the graph). Each variant's `VariantDef.fold`
says how its module folds (export/variants/, its module under export/models/ the maths); a variant with
none already traces to its inference form. This module applies them. The folded model computes the same
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

"""Refiner (`refiner`): the authors' DLA refinement of attention maps.

Paper: Zhou et al., "Refiner: Refining Self-attention for Vision Transformers" (arXiv 2106.03714);
authors' code: github.com/zhoudaquan/Refiner_ViT (`models/refiner_utils.py` DLA,
`models/refined_transformer.py` Refined_Attention).

A in [B, H, N, N] is an H-channel image of size N x N (query index, key index, in token order, class
token included). The DLA module, with its nonlinearities (without them the three convolutions collapse
into one linear k x k convolution and the variant is not the paper's):
    R(A) = BN3(Reduce(ReLU6(BN2(DW_k(ReLU6(BN1(Expand(A))))))))
Expand a 1x1 conv H -> E*H, DW_k a depthwise k x k conv (same padding), Reduce a 1x1 conv E*H -> H, all
without bias (the BNs carry it); then the identity residual and the head BatchNorm (`adapt_bn`):
    A'' = BN_H(A + R(A)) * c,
c = 1 except in the sharing blocks of `refiner_share`, where the authors scale the refined map by
s = d^-1/2 (VARIANTS.md 5). Unlike the authors' DLA, Expand is kept at E = 1 too (one formula for
every E).

Starts:
- trained from scratch (`init_weights`): the authors' PyTorch defaults (convs Kaiming-uniform,
  BN gamma 1, beta 0) and ordinary batch-statistics BN;
- converted checkpoint (`reset_function_preserving`): every BN the identity with frozen statistics
  (`AttentionBatchNorm`), BN3's gamma = 0 (so R(A) = 0) and BN_H's gamma = 1/c: A'' = A exactly, in
  eval mode and in train mode. BN3's gamma has a non-zero gradient at once; the convolutions and
  BN1/BN2 behind it receive gradients from the first optimiser step that moves it (the zero-gamma
  residual start). Fine-tuning can release the statistics after its warm-up (`--norm-statistics update`,
  `export.models.norms.recalibrate_statistics`).

Folding (`fold`, inference only): every BN folds into the conv before it, BN_H and c into one per-head
affine (`HeadAffine`: Mul + Add); ReLU6 exports as Clip(0, 6). No BatchNormalization is left.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import skip_init

from export.models.norms import AttentionBatchNorm, bn_scale_shift, fold_bn_into_conv, freeze_statistics

__all__ = ["AttentionRefiner", "HeadAffine"]


class HeadAffine(nn.Module):
    """A per-head affine map x -> scale * x + shift on [B, H, N, N] (the folded head BatchNorm)."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        super().__init__()
        self.scale = nn.Parameter(scale.detach().clone().view(1, -1, 1, 1))
        self.shift = nn.Parameter(shift.detach().clone().view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


class AttentionRefiner(nn.Module):
    """A -> BN_H(A + DLA(A)) * out_scale on [B, H, N, N] maps (the authors' DLA and `adapt_bn`)."""

    def __init__(self, num_heads: int, expand: int = 3, kernel_size: int = 3, out_scale: float = 1.0) -> None:
        super().__init__()
        hidden = num_heads * expand
        self.num_heads = num_heads
        self.out_scale = float(out_scale)
        self.expand = skip_init(nn.Conv2d, num_heads, hidden, kernel_size=1, bias=False)
        # each BN is replaced by the identity, BN_H by a `HeadAffine`, when `fold` folds them away
        self.bn1: AttentionBatchNorm | nn.Identity = AttentionBatchNorm(hidden)
        self.dw = skip_init(nn.Conv2d, hidden, hidden, kernel_size=kernel_size, padding=kernel_size // 2,
                            groups=hidden, bias=False)
        self.bn2: AttentionBatchNorm | nn.Identity = AttentionBatchNorm(hidden)
        self.reduce = skip_init(nn.Conv2d, hidden, num_heads, kernel_size=1, bias=False)
        self.bn3: AttentionBatchNorm | nn.Identity = AttentionBatchNorm(num_heads)
        self.norm: AttentionBatchNorm | HeadAffine = AttentionBatchNorm(num_heads)  # the authors' adapt_bn
        self.folded = False
        self.init_weights()

    def init_weights(self) -> None:
        """The authors' start for training from scratch: PyTorch's conv and BN defaults."""
        for conv in (self.expand, self.dw, self.reduce):
            nn.init.kaiming_uniform_(conv.weight, a=math.sqrt(5))
        for bn in (self.bn1, self.bn2, self.bn3, self.norm):
            if isinstance(bn, nn.BatchNorm2d):
                bn.reset_parameters()
                bn.frozen_stats = False

    def _batch_norms(self) -> tuple[AttentionBatchNorm, AttentionBatchNorm, AttentionBatchNorm, AttentionBatchNorm]:
        """BN1, BN2, BN3 and BN_H; RuntimeError once `fold` has folded them away."""
        bn1, bn2, bn3, norm = self.bn1, self.bn2, self.bn3, self.norm
        if (isinstance(bn1, AttentionBatchNorm) and isinstance(bn2, AttentionBatchNorm)
                and isinstance(bn3, AttentionBatchNorm) and isinstance(norm, AttentionBatchNorm)):
            return bn1, bn2, bn3, norm
        raise RuntimeError("the refiner is folded: its BatchNorms are gone")

    @torch.no_grad()
    def reset_function_preserving(self) -> None:
        """Converted start: R(A) = 0 (BN3 gamma 0), BN_H = 1/out_scale, frozen statistics; convs kept."""
        bn1, bn2, bn3, norm = self._batch_norms()
        bn1.set_identity()
        bn2.set_identity()
        bn3.set_identity(gamma=0.0)
        norm.set_identity(gamma=1.0 / self.out_scale)
        freeze_statistics(self)

    def forward(self, attn: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self.bn1(self.expand(attn)))
        x = F.relu6(self.bn2(self.dw(x)))
        x = self.bn3(self.reduce(x))
        out = self.norm(attn + x)
        return out if self.folded or self.out_scale == 1.0 else out * self.out_scale

    @torch.no_grad()
    def fold(self) -> None:
        """Fold BN1-3 into their convs and BN_H (times out_scale) into a `HeadAffine` (eval-mode maths)."""
        if self.folded:
            return
        bn1, bn2, bn3, norm = self._batch_norms()
        self.expand = fold_bn_into_conv(self.expand, bn1)
        self.dw = fold_bn_into_conv(self.dw, bn2)
        self.reduce = fold_bn_into_conv(self.reduce, bn3)
        self.bn1, self.bn2, self.bn3 = nn.Identity(), nn.Identity(), nn.Identity()
        scale, shift = bn_scale_shift(norm)
        self.norm = HeadAffine(scale * self.out_scale, shift * self.out_scale)
        self.folded = True

"""Re-attention (`reattn`), DeepViT.

Paper: Zhou et al., "DeepViT: Towards Deeper Vision Transformer" (arXiv 2103.11886);
authors' code: github.com/zhoudaquan/dvit_repo.

A = softmax(s QK^T) in [B, H, N, N]; A' = BN_H(Theta * A) * c, Theta an H x H head-mixing matrix with a
bias (a 1x1 convolution over the head axis), BN_H a BatchNorm over the head channels, c = s with the
authors' optional `transform_scale` (`reattn_scale`) and 1 otherwise; out = A' V. Rows of A' are not
renormalised.

Starts:
- trained from scratch (`init_weights`): Theta = I, bias 0, BN gamma 1, beta 0 with batch statistics;
- converted checkpoint (`reset_function_preserving`): the same Theta, and BN the map x -> x / c with
  frozen statistics (`AttentionBatchNorm`: mean 0, variance 1 - eps, gamma 1/c), so A' = A exactly in
  eval mode and in train mode (a batch-statistics BN would map the 1/N-mean maps to zero-mean ones).
  Fine-tuning can release the statistics after its warm-up (`--norm-statistics update`,
  `export.models.norms.recalibrate_statistics`).
At export, `fold_norm` folds BN and c into Theta: W' = c diag(gamma/sqrt(var+eps)) Theta,
b' = c (gamma (b - mu)/sqrt(var+eps) + beta), leaving no BatchNorm.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import skip_init

from export.models.norms import AttentionBatchNorm, bn_scale_shift, freeze_statistics

__all__ = ["ReAttention"]


class ReAttention(nn.Module):
    """Head mixing of attention maps: [B, H, N, N] -> BN_H(conv1x1_H(A)) * out_scale."""

    def __init__(self, num_heads: int, out_scale: float = 1.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.out_scale = float(out_scale)
        self.conv = skip_init(nn.Conv2d, num_heads, num_heads, kernel_size=1, bias=True)
        self.norm: nn.Module = AttentionBatchNorm(num_heads)
        self.init_weights()

    def init_weights(self) -> None:
        """Theta = I, bias 0, BN gamma 1 / beta 0 with batch statistics; timm's weight init calls this."""
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(self.num_heads).view(self.num_heads, self.num_heads, 1, 1))
            self.conv.bias.zero_()
            if isinstance(self.norm, AttentionBatchNorm):
                self.norm.set_identity()
                self.norm.frozen_stats = False

    def reset_function_preserving(self) -> None:
        """Converted start: Theta = I, bias 0, BN = x / out_scale with frozen statistics (A' = A)."""
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(self.num_heads).view(self.num_heads, self.num_heads, 1, 1))
            self.conv.bias.zero_()
            if isinstance(self.norm, AttentionBatchNorm):
                self.norm.set_identity(gamma=1.0 / self.out_scale)
        freeze_statistics(self)

    def forward(self, attn: torch.Tensor) -> torch.Tensor:
        out = self.norm(self.conv(attn))
        return out if self.out_scale == 1.0 or not isinstance(self.norm, nn.BatchNorm2d) else out * self.out_scale

    @torch.no_grad()
    def fold_norm(self) -> None:
        """Fold an eval-mode BatchNorm and the output scale into the 1x1 convolution (inference only)."""
        if not isinstance(self.norm, nn.BatchNorm2d):
            return
        scale, shift = bn_scale_shift(self.norm)
        scale, shift = scale * self.out_scale, shift * self.out_scale
        w = self.conv.weight.view(self.num_heads, self.num_heads) * scale[:, None]
        self.conv.weight.copy_(w.view_as(self.conv.weight))
        self.conv.bias.copy_(scale * self.conv.bias + shift)
        self.norm = nn.Identity()

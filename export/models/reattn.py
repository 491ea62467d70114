"""Re-attention (`reattn`), DeepViT.

Paper: Zhou et al., "DeepViT: Towards Deeper Vision Transformer" (arXiv 2103.11886);
authors' code: github.com/zhoudaquan/dvit_repo.

A = softmax(s QK^T) in [B, H, N, N]; A' = BN_H(Theta * A), Theta an H x H head-mixing matrix with a bias
(a 1x1 convolution over the head axis) and BN_H a BatchNorm over the head channels; out = A' V. Rows of
A' are not renormalised.

Function-preserving start: Theta = I, bias 0, BN with gamma 1, beta 0, running mean 0 and running
variance 1 - eps, so that eval-mode BN is exactly the identity (a running variance of 1 would scale by
1/sqrt(1 + eps)). In training mode BN uses batch statistics and is not the identity.
At export, `export.fold` folds BN into Theta (W' = diag(gamma/sqrt(var+eps)) Theta,
b' = gamma (b - mu)/sqrt(var+eps) + beta) and leaves no BatchNorm.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import skip_init

__all__ = ["ReAttention"]


class ReAttention(nn.Module):
    """Head mixing of attention maps: [B, H, N, N] -> BN_H(conv1x1_H(A))."""

    def __init__(self, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.conv = skip_init(nn.Conv2d, num_heads, num_heads, kernel_size=1, bias=True)
        self.norm: nn.Module = nn.BatchNorm2d(num_heads)
        self.init_weights()

    def init_weights(self) -> None:
        """Theta = I, bias 0, BN the identity in eval mode; timm's weight init calls this."""
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(self.num_heads).view(self.num_heads, self.num_heads, 1, 1))
            self.conv.bias.zero_()
            if isinstance(self.norm, nn.BatchNorm2d):
                self.norm.reset_parameters()
                self.norm.running_var.fill_(1.0 - self.norm.eps)

    def reset_function_preserving(self) -> None:
        """The deterministic function-preserving start (same as `init_weights`)."""
        self.init_weights()

    def forward(self, attn: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(attn))

    @torch.no_grad()
    def fold_norm(self) -> None:
        """Fold an eval-mode BatchNorm into the 1x1 convolution and drop it (inference only)."""
        if not isinstance(self.norm, nn.BatchNorm2d):
            return
        bn = self.norm
        inv = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # gamma / sqrt(var + eps)
        w = self.conv.weight.view(self.num_heads, self.num_heads) * inv[:, None]
        b = inv * (self.conv.bias - bn.running_mean) + bn.bias
        self.conv.weight.copy_(w.view_as(self.conv.weight))
        self.conv.bias.copy_(b)
        self.norm = nn.Identity()

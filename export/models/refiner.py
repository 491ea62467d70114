"""Refiner (`refiner`): local refinement of attention maps.

Paper: Zhou et al., "Refiner: Refining Self-attention for Vision Transformers" (arXiv 2106.03714);
authors' code: github.com/zhoudaquan/Refiner_ViT.

A = softmax(s QK^T) in [B, H, N, N] is an H-channel image of size N x N (query index, key index, in
token order, class token included). A_ref = A + Reduce(DW_k(Expand(A))) with Expand a 1x1 conv
H -> E*H, DW_k a depthwise k x k conv with same padding, Reduce a 1x1 conv E*H -> H initialised to
zero, so a converted model starts unchanged; out = A_ref V (VARIANTS.md 5).

Deviation from the authors' code (as VARIANTS.md specifies): their DLA module puts BatchNorm and ReLU6
between the convolutions; here the three convolutions are linear (with biases), so the refinement is a
linear filter of the map, and nothing needs folding at export.
`refiner_share` (the authors' alternating form) is handled by the block: odd blocks compute no Q/K and
refine the previous block's refined map with their own refiner.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import skip_init

__all__ = ["AttentionRefiner"]


class AttentionRefiner(nn.Module):
    """A -> A + Reduce(DW_k(Expand(A))) on [B, H, N, N] maps; Reduce starts at zero."""

    def __init__(self, num_heads: int, expand: int = 3, kernel_size: int = 3) -> None:
        super().__init__()
        hidden = num_heads * expand
        self.num_heads = num_heads
        self.expand = skip_init(nn.Conv2d, num_heads, hidden, kernel_size=1, bias=True)
        self.dw = skip_init(nn.Conv2d, hidden, hidden, kernel_size=kernel_size, padding=kernel_size // 2,
                            groups=hidden, bias=True)
        self.reduce = skip_init(nn.Conv2d, hidden, num_heads, kernel_size=1, bias=True)
        self.init_weights()

    def init_weights(self) -> None:
        """Expand/DW: PyTorch's default conv init; Reduce: zero (function-preserving)."""
        for conv in (self.expand, self.dw):
            nn.init.kaiming_uniform_(conv.weight, a=math.sqrt(5))
            fan_in = conv.weight[0].numel()
            nn.init.uniform_(conv.bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))
        nn.init.zeros_(self.reduce.weight)
        nn.init.zeros_(self.reduce.bias)

    def reset_function_preserving(self) -> None:
        """Zero the reduction (the refiner becomes the identity); Expand/DW keep their values."""
        nn.init.zeros_(self.reduce.weight)
        nn.init.zeros_(self.reduce.bias)

    def forward(self, attn: torch.Tensor) -> torch.Tensor:
        return attn + self.reduce(self.dw(self.expand(attn)))

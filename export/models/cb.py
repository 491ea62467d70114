"""Context Broadcasting (`cb`) and its dimension-scaled form (`cbs`).

Paper: Nam et al., "Scratching Visual Transformer's Back with Uniform Attention", ICCV 2023
(arXiv 2210.08457). No official code release is known; built from the paper and VARIANTS.md 1.

CB(X) = 1/2 X + 1/2 mean_tokens(X): a uniform attention map mixed half-and-half with the identity, no
parameters. CB_S(X) = X + lambda * mean_tokens(X) with a learnable lambda in R^D initialised to 0, so a
pretrained model starts unchanged. Both act on the residual stream at the end of a block (after the MLP
residual add), the mean taken over all N tokens including the class token (VARIANTS.md 1). In ONNX both
are ReduceMean + Mul + Add.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ContextBroadcast", "ScaledContextBroadcast"]


class ContextBroadcast(nn.Module):
    """X -> 1/2 X + 1/2 mean over tokens of X, for X of shape [B, N, C]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (x + x.mean(dim=1, keepdim=True))


class ScaledContextBroadcast(nn.Module):
    """X -> X + lambda * mean over tokens of X, lambda in R^C learnable, initialised to 0."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.zeros(dim))

    def init_weights(self) -> None:
        """Function-preserving start (lambda = 0); timm's weight init calls this."""
        nn.init.zeros_(self.scale)

    def reset_function_preserving(self) -> None:
        """The deterministic function-preserving start (same as `init_weights`)."""
        self.init_weights()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.scale * x.mean(dim=1, keepdim=True)

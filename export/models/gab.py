"""Gaussian Attention Bias (`gab`).

Paper: Kim et al., "Understanding Gaussian Attention Bias of Vision Transformers Using Effective
Receptive Fields", BMVC 2023 (arXiv 2305.04722); authors' code: github.com/kmbmjn/GaussianAttentionBias.

For patch tokens p = (r_p, c_p), q = (r_q, c_q) on the h x w grid, per head h:
    G_pq = a_h^2 * exp(-((r_p - r_q)^2 + (c_p - c_q)^2) / (2 sigma_h^2)),
added to the attention logits before the softmax. The class token's row and column of G are 0.
sigma_h (init `gab_sigma_init` = 5.0 patches) and a_h (init `gab_amplitude_init` = 1.0) are learnable,
one per head per block, and take no weight decay.

At inference G is constant: `export.fold` replaces `GaussianAttentionBias` by `FoldedAttentionBias`, one
precomputed [1, H, N, N] buffer per block, so the exported graph holds no Exp/Pow/Sqrt or coordinates.

Converted checkpoints (`reset_function_preserving`): a = 0 would reproduce the checkpoint but is a
stationary point of a^2 (d(a^2)/da = 0 and G = 0 whatever sigma is), so the bias could never be learnt.
They start at a = `CONVERTED_AMPLITUDE` = 1e-3 instead: G is at most a^2 = 1e-6 on the logits (the
logits of the model move by far less than 1e-5), and both a and sigma have a non-zero gradient on the
first batch. We keep the paper's a^2 (one parameterisation for every model, nothing to record beside
the weights); AdamW's normalised steps move a at the learning rate from there.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["CONVERTED_AMPLITUDE", "GaussianAttentionBias", "FoldedAttentionBias", "squared_patch_distances"]

#: amplitude a of a converted checkpoint's new GAB blocks: near-function-preserving (G <= a^2) and trainable.
CONVERTED_AMPLITUDE = 1e-3


def squared_patch_distances(grid_size: tuple[int, int]) -> torch.Tensor:
    """[P, P] squared Euclidean distances between patch centres (in patches), row-major patch order."""
    rows, cols = grid_size
    r = torch.arange(rows, dtype=torch.float32).repeat_interleave(cols)
    c = torch.arange(cols, dtype=torch.float32).repeat(rows)
    return (r[:, None] - r[None, :]) ** 2 + (c[:, None] - c[None, :]) ** 2


class GaussianAttentionBias(nn.Module):
    """Learnable per-head Gaussian bias over the patch grid; `forward()` returns [1, H, N, N]."""

    sq_dist: torch.Tensor  # a buffer (registered in __init__)

    def __init__(
        self,
        num_heads: int,
        grid_size: tuple[int, int],
        num_prefix_tokens: int = 1,
        sigma_init: float = 5.0,
        amplitude_init: float = 1.0,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.num_prefix_tokens = num_prefix_tokens
        self.sigma_init = sigma_init
        self.amplitude_init = amplitude_init
        self.sigma = nn.Parameter(torch.full((num_heads,), float(sigma_init)))
        self.amplitude = nn.Parameter(torch.full((num_heads,), float(amplitude_init)))
        # Derived from the grid, never checkpointed.
        self.register_buffer("sq_dist", squared_patch_distances(grid_size), persistent=False)

    def init_weights(self) -> None:
        """Reset sigma and a to their initial values; timm's weight init calls this."""
        with torch.no_grad():
            self.sigma.fill_(self.sigma_init)
            self.amplitude.fill_(self.amplitude_init)

    def reset_function_preserving(self) -> None:
        """Converted start: sigma at its init, a = CONVERTED_AMPLITUDE (bias at most a^2, gradients non-zero)."""
        with torch.no_grad():
            self.sigma.fill_(self.sigma_init)
            self.amplitude.fill_(CONVERTED_AMPLITUDE)

    def forward(self) -> torch.Tensor:
        sigma = self.sigma.view(-1, 1, 1)
        amp = self.amplitude.view(-1, 1, 1)
        g = amp.square() * torch.exp(-self.sq_dist / (2.0 * sigma.square()))  # [H, P, P]
        p = self.num_prefix_tokens
        g = nn.functional.pad(g, (p, 0, p, 0))  # class-token row and column are 0
        return g.unsqueeze(0)  # [1, H, N, N]


class FoldedAttentionBias(nn.Module):
    """A constant attention bias (the folded `GaussianAttentionBias`): one [1, H, N, N] buffer."""

    bias: torch.Tensor  # the buffer (registered in __init__)

    def __init__(self, bias: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("bias", bias.detach().clone())

    def forward(self) -> torch.Tensor:
        return self.bias

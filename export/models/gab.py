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

Converted checkpoints (`reset_function_preserving`): the bias takes a *linear* amplitude,
    G_pq = a_h * exp(-d_pq^2 / (2 sigma_h^2)),
starting at a = 0. That start is exactly function-preserving and it learns: dL/da_h is the sum of the
logit gradients weighted by the Gaussian (about 1e-3 to 1e-2 on the demo, far above AdamW's eps), and
sigma's gradient (proportional to a) follows after the first step. The paper's a^2 has no such start:
a = 0 is a stationary point of a^2, and a small a (the earlier 1e-3) leaves dL/dsigma ~ a^2 below AdamW's
eps and the bias at the scale of a^2 after a fine-tune (issue 28: max a^2 = 2.4e-3 on the demo).
Which form a module computes is the persistent buffer `linear_amplitude` (1: a, 0: a^2), so the
fine-tuned weights carry it: a checkpoint written after a converted fine-tune reloads as what it
computed, and a checkpoint of GAB weights without the buffer (written before it existed) is a^2.
Models built from scratch use the paper's a^2 (`init_weights`).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["CONVERTED_AMPLITUDE", "GaussianAttentionBias", "FoldedAttentionBias", "squared_patch_distances"]

#: amplitude a of a converted checkpoint's new GAB blocks, in the linear form G = a K: exactly function-preserving.
CONVERTED_AMPLITUDE = 0.0


def squared_patch_distances(grid_size: tuple[int, int]) -> torch.Tensor:
    """[P, P] squared Euclidean distances between patch centres (in patches), row-major patch order."""
    rows, cols = grid_size
    r = torch.arange(rows, dtype=torch.float32).repeat_interleave(cols)
    c = torch.arange(cols, dtype=torch.float32).repeat(rows)
    return (r[:, None] - r[None, :]) ** 2 + (c[:, None] - c[None, :]) ** 2


class GaussianAttentionBias(nn.Module):
    """Learnable per-head Gaussian bias over the patch grid; `forward()` returns [1, H, N, N]."""

    sq_dist: torch.Tensor  # a buffer (registered in __init__)
    linear_amplitude: torch.Tensor  # persistent 0-d buffer: 1.0 for G = a K (converted start), 0.0 for a^2 K

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
        # Which amplitude form the weights hold; checkpointed with them (see the module docstring).
        self.register_buffer("linear_amplitude", torch.zeros(()))

    def init_weights(self) -> None:
        """Reset sigma and a to their initial values, the paper's a^2 form; timm's weight init calls this."""
        with torch.no_grad():
            self.sigma.fill_(self.sigma_init)
            self.amplitude.fill_(self.amplitude_init)
            self.linear_amplitude.zero_()

    def reset_function_preserving(self) -> None:
        """Converted start: the linear form G = a K with a = 0 (G = 0 exactly; dL/da non-zero), sigma at its init."""
        with torch.no_grad():
            self.sigma.fill_(self.sigma_init)
            self.amplitude.fill_(CONVERTED_AMPLITUDE)
            self.linear_amplitude.fill_(1.0)

    @property
    def is_linear(self) -> bool:
        return bool(self.linear_amplitude.item())

    def gain(self) -> torch.Tensor:
        """[H] the factor in front of the Gaussian: a (linear form) or a^2 (the paper's)."""
        return torch.where(self.linear_amplitude > 0, self.amplitude, self.amplitude.square())

    def forward(self) -> torch.Tensor:
        sigma = self.sigma.view(-1, 1, 1)
        amp = self.gain().view(-1, 1, 1)
        g = amp * torch.exp(-self.sq_dist / (2.0 * sigma.square()))  # [H, P, P]
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

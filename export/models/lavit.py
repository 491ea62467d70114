"""Attention reuse, LaViT-style (`lavit`): Less-Attention blocks and the diagonality-preserving loss.

Paper: Zhang et al., "You Only Need Less Attention at Each Stage in Vision Transformers", CVPR 2024
(arXiv 2406.00427). Built from the paper and VARIANTS.md 2 (we could not check an authors' code release).

Blocks are grouped in stages; the first `lavit_full` blocks of a stage compute ordinary attention and
hand on their pre-softmax logits A. Every later block of the stage is a Less-Attention block: it computes
only V and the logits A^l = W_Psi^T . A^{l-1} . W_Theta (per head; Theta, Psi learnable N x N maps over
the token axis, shared across heads, one pair per block, initialised to the identity); then
Z = softmax(A^l) V^l, the output projection and the MLP (VARIANTS.md 2). `lavit_transform = none`
reuses the previous softmax map as is.

Decisions:
- Weights: a Less-Attention block carries only a V projection (`attn.v`, [D, D]); the exported graph
  holds no unused Q/K rows and the parameter count is what the graph needs. A checkpoint's full
  [3D, D] `attn.qkv` still imports: `export.checkpoint` takes its V rows.
- The logits a full block hands on are the ones its softmax used (s QK^T plus a GAB bias, if any); the
  map a 'none' block reuses is that softmax, before any re-attention head mixing or refinement.
- The maps P = softmax(A^l) of the `token` Less-Attention blocks of the last forward are kept for the
  training loss (`VariantViT.transformed_attention_maps`), except while tracing/exporting. With
  `lavit_transform = none` there is no transformed map and no loss: P would be the full block's own
  softmax, so the loss would regularise that block's Q/K instead (once per reuse block), which is not
  what the paper's loss is for.
- Diagonality loss, per map P [B, H, N, N]: symmetry mean|P - P^T| plus diagonal term
  mean over rows of relu(max_{j != i} P_ij - P_ii); both lie in [0, 1]; averaged over maps.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["LessAttentionTransform", "diagonality_loss"]


class LessAttentionTransform(nn.Module):
    """A -> Psi^T A Theta over the token axes of [B, H, N, N] logits; Theta = Psi = I at init."""

    def __init__(self, num_tokens: int) -> None:
        super().__init__()
        self.num_tokens = num_tokens
        self.theta = nn.Parameter(torch.eye(num_tokens))
        self.psi = nn.Parameter(torch.eye(num_tokens))

    def init_weights(self) -> None:
        """Identity maps (exact reuse of the previous logits); timm's weight init calls this."""
        with torch.no_grad():
            self.theta.copy_(torch.eye(self.num_tokens))
            self.psi.copy_(torch.eye(self.num_tokens))

    def reset_function_preserving(self) -> None:
        """The deterministic function-preserving start (same as `init_weights`)."""
        self.init_weights()

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.matmul(torch.matmul(self.psi.t(), logits), self.theta)


def diagonality_loss(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over maps of (mean|P - P^T| + mean_rows relu(max_{j!=i} P_ij - P_ii)); 0 for no maps."""
    if not maps:
        return torch.zeros(())
    total = maps[0].new_zeros(())
    for p in maps:
        n = p.shape[-1]
        sym = (p - p.transpose(-2, -1)).abs().mean()
        eye = torch.eye(n, dtype=torch.bool, device=p.device)
        diag = p.diagonal(dim1=-2, dim2=-1)
        off_max = p.masked_fill(eye, float("-inf")).amax(dim=-1)
        total = total + sym + torch.relu(off_max - diag).mean()
    return total / len(maps)

"""BatchNorm over attention maps (re-attention, Refiner): frozen statistics and folding helpers.

Why a subclass: a BatchNorm that normalises with batch statistics is not the identity on attention
maps (their per-head mean is 1/N), so a converted checkpoint whose new BNs were set to the identity
would change its function as soon as fine-tuning puts the model in train mode. `AttentionBatchNorm`
is an ordinary `nn.BatchNorm2d` (same state-dict keys, batch statistics when trained from scratch)
with one switch, `frozen_stats`: when set, it normalises with its running statistics in train mode
too and never updates them, so it is a learnable per-channel affine map whose value at the start is
exactly what eval mode (and the exported graph) computes. Converted models set it on every new BN
(the variants' `reset_function_preserving`); the flag is a module attribute, not a tensor, so it
survives copies and pickling but not a fresh `create_model` (call `freeze_statistics` again there).

Frozen statistics never normalise: the converted BN's running variance stays 1 - eps, so it is a per-channel
affine map, not the authors' batch-normalised operator. `recalibrate_statistics` is the way out that keeps the
function: it measures the statistics each BN's input really has (eval mode, on a few batches) and moves
gamma/beta with them so that the eval-mode output is unchanged; unfrozen after that, the BN trains with batch
statistics that start where its running ones are (fine-tuning's `--norm-statistics update`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AttentionBatchNorm", "bn_scale_shift", "fold_bn_into_conv", "freeze_statistics", "recalibrate_statistics"]


class AttentionBatchNorm(nn.BatchNorm2d):
    """`nn.BatchNorm2d` that can keep its running statistics fixed in train mode (`frozen_stats`)."""

    def __init__(self, num_features: int, **kwargs: Any) -> None:
        super().__init__(num_features, **kwargs)
        self.frozen_stats = False

    @torch.no_grad()
    def set_identity(self, gamma: float = 1.0) -> None:
        """gamma (default 1), beta 0, mean 0, variance 1 - eps: exactly x -> gamma * x with running stats."""
        mean, var = _running_stats(self)
        self.weight.fill_(gamma)
        self.bias.zero_()
        mean.zero_()
        var.fill_(1.0 - self.eps)
        assert self.num_batches_tracked is not None  # registered together with the running statistics
        self.num_batches_tracked.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.frozen_stats:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


def freeze_statistics(module: nn.Module, frozen: bool = True) -> None:
    """Set `frozen_stats` on every `AttentionBatchNorm` inside `module`."""
    for m in module.modules():
        if isinstance(m, AttentionBatchNorm):
            m.frozen_stats = frozen


@torch.no_grad()
def recalibrate_statistics(model: nn.Module, norms: Sequence[nn.BatchNorm2d], batches: Iterable[torch.Tensor]) -> int:
    """Re-estimate the running statistics of `norms` (BNs inside `model`) without changing the eval-mode function.

    `model` runs in eval mode on `batches` (its training flags are restored afterwards); each BN's input is
    pooled over the batch and spatial axes (float64): the new running mean is its mean, the new running variance
    its unbiased variance (what BN's running_var holds), as a cumulative average would give. gamma and beta
    move with them so that gamma'/sqrt(var'+eps) = gamma/sqrt(var+eps) and beta' - gamma' mu'/sqrt(var'+eps) =
    beta - gamma mu/sqrt(var+eps), i.e. gamma' = gamma sqrt(var'+eps)/sqrt(var+eps) and
    beta' = beta + gamma' (mu' - mu)/sqrt(var'+eps): every BN computes the same affine map as before, so the
    inputs measured for the BNs after it are the ones they see afterwards too. Returns the batches used.
    """
    sums: dict[int, list[Any]] = {}

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0].detach().double().transpose(0, 1).flatten(1)  # [C, B*H*W]
        acc = sums.setdefault(id(module), [0.0, 0.0, 0])
        acc[0] = acc[0] + x.sum(1)
        acc[1] = acc[1] + (x * x).sum(1)
        acc[2] += x.shape[1]

    modes = {m: m.training for m in model.modules()}
    handles = [bn.register_forward_pre_hook(hook) for bn in norms]
    count = 0
    try:
        model.eval()
        for batch in batches:
            model(batch)
            count += 1
    finally:
        for handle in handles:
            handle.remove()
        for m, training in modes.items():
            m.training = training
    for bn in norms:
        if id(bn) not in sums:
            continue  # never reached (e.g. a block the model skips): left as it is
        total, squares, n = sums[id(bn)]
        if n < 2:
            continue
        mean_old, var_old = _running_stats(bn)
        mean_new = total / n
        var_new = ((squares - n * mean_new * mean_new) / (n - 1)).clamp_min(0.0)
        std_old = torch.sqrt(var_old.double() + bn.eps)
        std_new = torch.sqrt(var_new + bn.eps)
        gamma = bn.weight.double() * std_new / std_old
        beta = bn.bias.double() + gamma * (mean_new - mean_old.double()) / std_new
        bn.weight.copy_(gamma)
        bn.bias.copy_(beta)
        mean_old.copy_(mean_new)
        var_old.copy_(var_new)
    return count


def _running_stats(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """The BN's running mean and variance; ValueError for a BN built with track_running_stats=False."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("the BatchNorm has no running statistics (built with track_running_stats=False)")
    return bn.running_mean, bn.running_var


def _pair(size: tuple[int, ...]) -> tuple[int, int]:
    """A Conv2d's per-axis size (kernel, stride, padding, dilation) as the pair it always is."""
    h, w = size
    return h, w


def bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BN as y = scale * x + shift per channel: scale = gamma/sqrt(var+eps), shift = beta - mu*scale."""
    mean, var = _running_stats(bn)
    scale = bn.weight / torch.sqrt(var + bn.eps)
    return scale, bn.bias - mean * scale


@torch.no_grad()
def fold_bn_into_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new conv computing bn(conv(x)) in eval mode: W' = diag(scale) W, b' = scale * b + shift."""
    scale, shift = bn_scale_shift(bn)
    padding = conv.padding if isinstance(conv.padding, str) else _pair(conv.padding)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, _pair(conv.kernel_size), _pair(conv.stride), padding,
                      _pair(conv.dilation), conv.groups, bias=True)
    fused.weight.copy_(conv.weight * scale.view(-1, *([1] * (conv.weight.dim() - 1))))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(shift)
    assert fused.bias is not None  # built with bias=True
    fused.bias.copy_(scale * bias + shift)
    return fused

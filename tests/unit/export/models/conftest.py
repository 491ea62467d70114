"""Shared helpers for the model tests: seeded inputs and non-trivial variant parameters."""

from __future__ import annotations

import pytest
import torch
from torch import nn


@pytest.fixture
def images() -> torch.Tensor:
    """Two seeded 32x32 RGB inputs for the `test` preset."""
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(123))


def _perturb(model: nn.Module, scale: float = 0.05, seed: int = 7) -> nn.Module:
    """Move every parameter and BatchNorm statistic away from its init, so variant maths is exercised."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
    return model


@pytest.fixture
def perturb():
    """`perturb(model, scale=0.05, seed=7)`: move parameters and BN statistics away from their init."""
    return _perturb

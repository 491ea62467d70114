"""Every export test starts from torch's global generator seeded the same way.

Why: module initialisation (create_model, nn.Linear) and the odd torch.rand/randn without a Generator draw
from the global generator; seeding it per test makes those inputs the same on every run and machine (and
independent of which tests ran before), so a tolerance that holds once holds everywhere.
"""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _seeded_torch() -> None:
    try:
        import torch
    except ImportError:  # the torch-free checks still run where torch is absent
        return
    torch.manual_seed(0)

"""Shared fixtures for the export pipeline tests: models exported once per session, by spec."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest


@dataclass
class Exported:
    spec: object
    model: object  # eval-mode PyTorch model (unfolded)
    folded: object
    proto: object  # onnx.ModelProto
    input_size: tuple[int, int, int]


@pytest.fixture(scope="session")
def exported() -> Callable[..., Exported]:
    """`exported(spec_text, **options)` -> Exported, built once per (spec, options) per session."""
    from export.fold import fold_for_inference
    from export.models import create_model
    from export.onnx_export import export_onnx
    from export.presets import get_preset
    from export.spec import parse_spec

    cache: dict[tuple, Exported] = {}

    def get(text: str, **options: object) -> Exported:
        key = (text, tuple(sorted(options.items())))
        if key not in cache:
            spec = parse_spec(text, **options)
            model = create_model(spec, seed=1).eval()
            _randomise_variant_parameters(model)
            folded = fold_for_inference(model)
            input_size = tuple(get_preset(spec.preset).data.input_size)
            proto = export_onnx(folded, None, input_size=input_size)
            cache[key] = Exported(spec, model, folded, proto, input_size)
        return cache[key]

    return get


def _randomise_variant_parameters(model) -> None:
    """Move the variants off their function-preserving init, so parity tests see their maths.

    Zero-initialised refiner reductions, identity LaViT maps and identity re-attention would make a
    variant numerically a vanilla model; a seeded perturbation makes its own terms matter.
    """
    import torch

    gen = torch.Generator().manual_seed(123)
    keys = set(model.variant_state_keys())
    with torch.no_grad():
        # logits of a trained classifier's magnitude (several units), not timm's near-zero init
        model.head.weight.mul_(20.0)
        for name, p in list(model.named_parameters()) + list(model.named_buffers()):
            if name not in keys or not p.is_floating_point():
                continue
            if name.endswith("running_var"):
                p.mul_(1.0 + 0.3 * torch.rand(p.shape, generator=gen))
            elif name.endswith("sigma"):  # a local bias (0.5-2 patches), not a near-constant one
                p.mul_(0.1 + 0.3 * torch.rand(p.shape, generator=gen))
            elif name.endswith("num_batches_tracked"):
                continue
            else:
                p.add_(0.2 * torch.randn(p.shape, generator=gen))

"""Cost formulas: VARIANTS.md's expressions, checked against torch's FlopCounterMode on the model."""

from __future__ import annotations

import pytest
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from export.costs import cost_breakdown, count_parameters, formula_flops, formula_macs
from export.models import create_model
from export.spec import parse_spec

# vit_small: N = 197 tokens, D = 384, H = 6, r = 4, 12 blocks, 196 patches of 16x16, 1000 classes
N, D, H, R, DEPTH, C = 197, 384, 6, 4, 12, 1000
VANILLA_BLOCK = (4 + 2 * R) * N * D * D + 2 * N * N * D
VANILLA = DEPTH * VANILLA_BLOCK + 196 * 3 * 16 * 16 * D + D * C


def test_vanilla_macs_follow_the_block_formula_plus_embedding_and_head() -> None:
    assert formula_macs(parse_spec("vit_small")) == VANILLA
    assert formula_macs(parse_spec("vit_small"), num_classes=10) == VANILLA - D * (C - 10)


@pytest.mark.parametrize(
    ("text", "options", "delta"),
    [
        ("vit_small+cb", {}, 0),
        ("vit_small+cbs", {}, 0),
        ("vit_small+gab", {}, 0),
        ("vit_small+reattn", {}, 6 * H * H * N * N),  # last half: 6 blocks x H^2 N^2
        ("vit_small+reattn", {"reattn_layers": [11]}, H * H * N * N),
        ("vit_small+refiner", {}, DEPTH * 3 * H * N * N * (2 * H + 9)),  # E H N^2 (2H + k^2)
        ("vit_small+refiner", {"refiner_expand": 2, "refiner_kernel": 5}, DEPTH * 2 * H * N * N * (2 * H + 25)),
        # Less-Attention blocks save 2ND^2 + N^2 D each and add 2 H N^3 ('token': 9, the last computes full attention)
        ("vit_small+lavit", {}, 9 * (2 * H * N**3 - 2 * N * D * D - N * N * D)),
        ("vit_small+lavit", {"lavit_transform": "none"}, -10 * (2 * N * D * D + N * N * D)),
        ("vit_small+lavit", {"lavit_stages": 3}, 5 * (2 * H * N**3 - 2 * N * D * D - N * N * D)),
        # sharing blocks (odd ones) skip Q, K and QK^T and are the only ones that refine
        ("vit_small+refiner", {"refiner_share": True},
         6 * 3 * H * N * N * (2 * H + 9) - 6 * (2 * N * D * D + N * N * D)),
    ],
)
def test_variant_macs_add_their_formula_term(text: str, options: dict, delta: int) -> None:
    assert formula_macs(parse_spec(text, **options)) - VANILLA == delta


def test_lavit_token_form_costs_more_than_vanilla_at_vit_small() -> None:
    """VARIANTS.md 2: at N = 197 the token-axis maps outweigh the saved Q, K and QK^T."""
    assert formula_macs(parse_spec("vit_small+lavit")) > VANILLA > formula_macs(
        parse_spec("vit_small+lavit", lavit_transform="none")
    )


VARIANT_SETS = ["", "+cb", "+cbs", "+lavit", "+gab", "+reattn", "+refiner", "+cb+lavit+gab+reattn+refiner",
                "+cbs+gab+reattn+refiner"]


@pytest.mark.parametrize("suffix", VARIANT_SETS, ids=lambda s: s or "vanilla")
def test_formula_matches_torch_flop_counter(suffix: str) -> None:
    """FlopCounterMode counts 2 FLOPs per multiply-add in mm/bmm/addmm/conv (math attention path)."""
    spec = parse_spec("test" + suffix)
    model = create_model(spec).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert counter.get_total_flops() == 2 * formula_macs(spec)


def test_refiner_share_formula_matches_torch_flop_counter() -> None:
    spec = parse_spec("test+refiner", refiner_share=True)
    model = create_model(spec).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert counter.get_total_flops() == 2 * formula_macs(spec)


def test_model_and_spec_give_the_same_costs() -> None:
    spec = parse_spec("test+gab+refiner", refiner_expand=2)
    model = create_model(spec, num_classes=4)
    assert formula_macs(model) == formula_macs(spec, num_classes=4)
    assert formula_flops(model) == formula_flops(spec, num_classes=4)


def test_flops_are_twice_macs_plus_elementwise_terms() -> None:
    spec = parse_spec("vit_small+cb+gab")
    parts = cost_breakdown(spec)
    elementwise = sum(v for k, v in parts.items() if k.startswith("elementwise."))
    assert formula_flops(spec) == 2 * formula_macs(spec) + elementwise
    assert parts["elementwise.cb"] == DEPTH * 3 * N * D  # VARIANTS.md 1: about 3 N D per block
    assert parts["elementwise.gab"] == (DEPTH - 1) * H * N * N  # VARIANTS.md 3: H N^2 adds per block (not the last)
    assert 0 < elementwise < 0.02 * formula_flops(spec)


def test_formula_costs_refuse_other_models() -> None:
    with pytest.raises(ValueError, match="ModelSpec or a VariantViT"):
        formula_macs(torch.nn.Linear(2, 2))


def test_parameter_count_matches_timm_and_counts_new_parameters() -> None:
    reference = sum(p.numel() for p in timm.create_model("vit_tiny_patch16_224", pretrained=False).parameters())
    assert count_parameters(create_model(parse_spec("vit_tiny"))) == reference
    # gab: sigma and a per head per block (all but the last); reattn: H x H + H conv and 2H BN affine, last 6
    assert count_parameters(create_model(parse_spec("vit_tiny+gab"))) == reference + 11 * 2 * 3
    assert count_parameters(create_model(parse_spec("vit_tiny+reattn"))) == reference + 6 * (9 + 3 + 6)

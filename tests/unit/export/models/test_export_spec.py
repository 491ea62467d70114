"""Spec parsing: names, canonical order, options, and the refused combinations."""

from __future__ import annotations

import pytest

from export.presets import PRESETS, get_preset
from export.spec import (
    OPTION_DEFAULTS,
    VARIANT_OPTIONS,
    block_layout,
    parse_option,
    parse_spec,
    resolved_options,
)


def test_names_use_canonical_variant_order() -> None:
    spec = parse_spec("vit_small+gab+cb")
    assert spec.variants == ("cb", "gab")
    assert spec.name == "vit_small-cb-gab"
    assert str(spec) == "vit_small+cb+gab"


def test_vanilla_name_is_the_preset() -> None:
    spec = parse_spec("vit_small")
    assert spec.name == "vit_small" and str(spec) == "vit_small" and spec.variants == ()


def test_model_name_parses_back_to_the_same_spec() -> None:
    spec = parse_spec("demo+cbs+refiner")
    assert parse_spec(spec.name) == spec


def test_spec_is_frozen() -> None:
    spec = parse_spec("test+cb")
    with pytest.raises((AttributeError, TypeError, ValueError)):  # a frozen dataclass or model, whichever it is
        spec.preset = "demo"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "options", "message"),
    [
        ("vit_huge", {}, "unknown preset"),
        ("vit_small+flash", {}, "unknown variant"),
        ("vit_small+cb+cb", {}, "more than once"),
        ("vit_small+cb+cbs", {}, "choose one"),
        ("vit_small+", {}, "empty variant"),
        ("", {}, "empty model spec"),
        ("vit_small+cb", {"gab_sigma_init": 3.0}, "not in spec"),
        ("vit_small+cb", {"cb_width": 3}, "unknown option"),
        ("vit_small+cb", {"cb_layers": [12]}, "out of range"),
        ("vit_small+cb", {"cb_layers": [1, 1]}, "twice"),
        ("vit_small+gab", {"gab_sigma_init": 0.0}, "must be > 0"),
        ("vit_small+refiner", {"refiner_kernel": 4}, "odd"),
        ("vit_small+lavit", {"lavit_transform": "mlp"}, "lavit_transform"),
        ("vit_small+lavit", {"lavit_full": 6, "lavit_stages": 2}, "no Less-Attention block"),
        ("vit_small+lavit", {"lavit_stages": 5}, "equal stages"),
        ("vit_small+lavit", {"lavit_full": 0}, "lavit_full must be >= 1"),
        ("vit_small+lavit+gab", {"gab_layers": [0, 5]}, "compute no attention logits"),
        ("vit_small+lavit+reattn", {"reattn_layers": [10]}, "compute no attention logits"),
        ("vit_small+lavit+refiner", {"refiner_layers": [1, 2]}, "Less-Attention blocks"),
        ("vit_small+lavit+refiner", {"refiner_share": True}, "refiner_share cannot be combined with lavit"),
        ("vit_small+refiner+gab", {"refiner_share": True, "gab_layers": [1]}, "compute no attention logits"),
        ("vit_small+refiner", {"refiner_share": True, "refiner_layers": [0]}, "do not set refiner_layers"),
        ("vit_small+refiner", {"refiner_share": "maybe"}, "boolean"),
        ("vit_small+refiner", {"refiner_expand": "two"}, "integer"),
    ],
)
def test_bad_specs_are_refused_with_a_clear_message(text: str, options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_spec(text, **options)


def test_dash_separated_and_cli_string_options_are_accepted() -> None:
    spec = parse_spec("vit_small-reattn", reattn_layers="10,11")
    assert spec.variants == ("reattn",)
    assert spec.options == {"reattn_layers": (10, 11)}


def test_negative_layer_indices_count_from_the_end() -> None:
    spec = parse_spec("vit_small+cb", cb_layers=[-1, 0])
    assert spec.options["cb_layers"] == (0, 11)


def test_options_keep_only_what_the_caller_set() -> None:
    spec = parse_spec("vit_small+gab", gab_sigma_init="3")
    assert spec.options == {"gab_sigma_init": 3.0}
    assert spec.option("gab_amplitude_init") == OPTION_DEFAULTS["gab_amplitude_init"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("lavit_full=3", ("lavit_full", 3)),
        ("lavit_transform=none", ("lavit_transform", "none")),
        ("gab_sigma_init=2.5", ("gab_sigma_init", 2.5)),
        ("refiner_share=true", ("refiner_share", True)),
        ("cb_layers=0, 2,4", ("cb_layers", (0, 2, 4))),
    ],
)
def test_parse_option_types_values(text: str, expected: tuple) -> None:
    assert parse_option(text) == expected


@pytest.mark.parametrize("text", ["lavit_full", "=3", "nope=1", "lavit_full=x"])
def test_parse_option_refuses_bad_input(text: str) -> None:
    with pytest.raises(ValueError):
        parse_option(text)


def test_every_option_has_a_default_and_a_variant_prefix() -> None:
    for variant, options in VARIANT_OPTIONS.items():
        for key in options:
            assert key.startswith(variant + "_")
            assert key in OPTION_DEFAULTS


def test_reattn_defaults_to_the_last_half() -> None:
    layout = block_layout(parse_spec("vit_small+reattn"))
    assert [b.index for b in layout if b.has("reattn")] == [6, 7, 8, 9, 10, 11]


def test_with_lavit_gab_and_reattn_default_to_blocks_that_compute_attention() -> None:
    spec = parse_spec("vit_small+lavit+gab+reattn", lavit_stages=3)
    layout = block_layout(spec)
    computing = [b.index for b in layout if b.attention == "full"]
    assert computing == [0, 1, 4, 5, 8, 9, 11]  # the last block computes full attention (lavit token, issue 28)
    assert [b.index for b in layout if b.has("gab")] == computing[:-1]  # GAB: not on the last block
    assert [b.index for b in layout if b.has("reattn")] == [8, 9, 11]  # the last half of the 7
    less = [b.index for b in layout if b.has("lavit")]
    assert less == [2, 3, 6, 7, 10]
    # Blocks hand their map on exactly when the next block reuses it.
    assert [b.index for b in layout if b.provides_map] == [1, 2, 5, 6, 9]


def test_refiner_share_alternates_computing_and_sharing_blocks() -> None:
    """The authors' released form: only the sharing (odd) blocks refine; attention blocks from block 2
    on add s * the previous pair's map; every block but the last hands its map on."""
    layout = block_layout(parse_spec("test+refiner", refiner_share=True))
    assert [b.attention for b in layout] == ["full", "reuse", "full", "reuse"]
    assert [b.has("refiner") for b in layout] == [False, True, False, True]
    assert [b.adds_prev_map for b in layout] == [False, False, True, False]
    assert [b.provides_map for b in layout] == [True, False, True, False]
    assert resolved_options(parse_spec("test+refiner", refiner_share=True))["refiner_layers"] == [1, 3]


def test_lavit_loss_weight_is_refused_without_a_transform() -> None:
    with pytest.raises(ValueError, match="no effect with lavit_transform=none"):
        parse_spec("test+lavit", lavit_transform="none", lavit_loss_weight=0.5)
    assert parse_spec("test+lavit", lavit_transform="none", lavit_loss_weight=0)  # explicitly off is fine


def test_resolved_options_fill_defaults_and_list_blocks() -> None:
    resolved = resolved_options(parse_spec("test+cb+reattn"))
    assert resolved == {"cb_layers": [0, 1, 2, 3], "reattn_config": "half", "reattn_layers": [2, 3],
                        "reattn_scale": None}  # None: reattn_config's (false for half)


def test_presets_carry_their_data_config() -> None:
    assert set(PRESETS) >= {"demo", "vit_tiny", "vit_small", "vit_base", "test"}
    small = get_preset("vit_small")
    assert (small.embed_dim, small.depth, small.num_heads, small.num_tokens) == (384, 12, 6, 197)
    assert small.data.input_size == (3, 224, 224) and small.data.crop_pct == 0.9
    assert small.data.interpolation == "bicubic" and small.data.mean == (0.5, 0.5, 0.5)
    assert get_preset("demo").data.input_size == (3, 32, 32) and get_preset("demo").data.crop_pct == 1.0
    assert small.arch_kwargs(num_classes=10)["num_classes"] == 10 and small.arch["num_classes"] == 1000
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("resnet50")

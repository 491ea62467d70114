"""The variant table itself: every entry is well formed and every consumer reads it (spec, CLI help, bench)."""

from __future__ import annotations

import pytest

from export import variants as registry
from export.spec import OPTION_DEFAULTS, VARIANT_OPTIONS, VARIANTS, parse_spec, resolved_options

BUILTIN = [v.name for v in registry.BUILTIN]


def test_builtin_table_is_the_canonical_order() -> None:
    assert BUILTIN == ["cb", "cbs", "lavit", "gab", "reattn", "refiner"]
    assert VARIANTS[: len(BUILTIN)] == tuple(BUILTIN)
    assert list(VARIANT_OPTIONS)[: len(BUILTIN)] == BUILTIN


@pytest.mark.parametrize("name", BUILTIN)
def test_every_option_parses_at_its_default_and_is_recorded(name: str) -> None:
    variant = registry.get(name)
    explicit = {o.key: o.default for o in variant.options if o.default is not None and o.key != "lavit_loss_weight"}
    spec = parse_spec(f"test+{name}", **explicit)
    assert spec.options == explicit
    resolved = resolved_options(spec)
    assert set(resolved) == {o.key for o in variant.options}
    if variant.layers is not None:  # the layer option resolves to the blocks the layout gives the variant
        assert resolved[variant.layers.key] == [b.index for b in spec.layout if b.has(name)]
    assert any(b.has(name) for b in spec.layout)


@pytest.mark.parametrize("key", sorted(OPTION_DEFAULTS))
def test_every_option_is_refused_outside_its_variant(key: str) -> None:
    owner = registry.option_owner(key)
    other = next(v for v in BUILTIN if v != owner and v not in registry.get(owner).conflicts)
    with pytest.raises(ValueError, match=f"belongs to variant '{owner}'"):
        parse_spec(f"test+{other}", **{key: OPTION_DEFAULTS[key] if OPTION_DEFAULTS[key] is not None else "0"})


def test_closed_options_refuse_values_outside_their_choices() -> None:
    for opt in registry.options().values():
        if opt.choices:
            with pytest.raises(ValueError, match=f"option {opt.key} must be one of"):
                parse_spec(f"test+{registry.option_owner(opt.key)}", **{opt.key: "no-such-value"})


def test_register_refuses_clashes() -> None:
    cb = registry.get("cb")
    with pytest.raises(ValueError, match="already registered"):
        registry.register(cb)
    with pytest.raises(ValueError, match="must start with"):
        registry.VariantDef(name="x", summary="", options=(registry.Option("cb_layers", tuple, None, ""),))


def test_cli_help_lists_every_variant_and_option(capsys: pytest.CaptureFixture[str]) -> None:
    from export.cli import _parser, main

    assert main(["list"]) == 0
    listed = capsys.readouterr().out
    build_help = _parser()._subparsers._group_actions[0].choices["build"].format_help()  # type: ignore[union-attr]
    for text in (listed, build_help):
        for variant in registry.variants():
            assert f"  {variant.name} " in text and variant.summary in text
            for opt in variant.options:
                assert f"    {opt.key} " in text and opt.help in text


def test_bench_models_cover_every_variant_and_its_extra_forms() -> None:
    from bench.models import variant_models

    models = variant_models("demo")
    assert [m.display for m in models] == [
        "vanilla", "cb", "cbs", "lavit (token)", "lavit (none)", "gab", "reattn", "refiner",
    ]
    assert {m.spec for m in models[1:]} == {f"demo+{name}" for name in BUILTIN}
    assert models[4].options == {"lavit_transform": "none"} and models[4].model_name == "demo-lavit_none"


def test_a_build_parses_its_spec_once_and_lays_it_out_once(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import export.spec as spec_module
    from export.build import build_model

    calls = {"parse": 0, "layout": 0}
    parse, layout = spec_module.parse_spec, spec_module._compute_layout

    def counting_parse(*a, **k):
        calls["parse"] += 1
        return parse(*a, **k)

    def counting_layout(*a, **k):
        calls["layout"] += 1
        return layout(*a, **k)

    monkeypatch.setattr(spec_module, "parse_spec", counting_parse)
    monkeypatch.setattr(spec_module, "_compute_layout", counting_layout)
    monkeypatch.setattr(spec_module, "_LAYOUTS", {})
    build_model("test+gab+reattn", tmp_path / "repo", progress=False, options={"gab_sigma_init": 2.0})
    assert calls == {"parse": 1, "layout": 1}

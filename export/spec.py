"""Model specs: `PRESET[+VARIANT...]` plus variant options, parsed, validated and laid out per block.

The variants, their options (type, default, help, allowed values) and their layer rules come from the
variant table, `export.variants`; this module only applies them. A spec is parsed once per build and
its layout computed once (`block_layout` is memoised on the spec's content).

A spec names a base preset and a set of the table's variants, e.g. `vit_small+A+B` (`-` is accepted as a
separator too, so a model name parses back to its spec). Options carry their variant's name as a prefix
(`A_layers`, ...) and belong to a variant in the spec.
`ModelSpec.options` keeps only what the caller set; defaults are filled in by `block_layout`, so a spec
written into a manifest records exactly the user's choices.

Rules on combinations that hold for every variant (each variant's own decisions, VARIANTS.md leaves them
to us, are in its module's docstring under export/variants/):
- two variants one of which lists the other in its `conflicts` are refused together;
- at most one variant per spec may make blocks reuse a previous block's map (its `schedule`); such
  "reuse" blocks compute no Q/K logits, so a variant whose `LayerRule` is `computing_only` is restricted
  to the blocks that compute attention: its default layer set is taken among them, and an explicit layer
  option naming a reuse block is refused. The schedule's own variant is carried by its reuse blocks when
  it has no layer rule;
- a spec whose variant would touch no block is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

from export import variants as registry
from export.presets import PRESETS, get_preset
from export.variants.base import LayoutContext, Schedule

__all__ = [
    "VARIANTS",
    "VARIANT_OPTIONS",
    "OPTION_DEFAULTS",
    "OPTION_HELP",
    "ModelSpec",
    "BlockConfig",
    "parse_spec",
    "parse_option",
    "split_spec",
    "block_layout",
    "resolved_options",
]

if TYPE_CHECKING:  # served by the module `__getattr__` below; declared here so checkers know the names and types
    VARIANTS: tuple[str, ...]
    VARIANT_OPTIONS: dict[str, dict[str, type]]
    OPTION_DEFAULTS: dict[str, Any]
    OPTION_HELP: dict[str, str]


def __getattr__(name: str) -> Any:
    """The table's views under their historical names (computed: plug-in variants appear in them)."""
    if name == "VARIANTS":  # canonical variant order: names and `str(spec)` list variants in this order
        return registry.names()
    if name == "VARIANT_OPTIONS":  # options per variant and their value types (`tuple` = block indices)
        return {v.name: {o.key: o.type for o in v.options} for v in registry.variants()}
    if name == "OPTION_DEFAULTS":  # `None` for a layer set means "the variant's default blocks"
        return {key: o.default for key, o in registry.options().items()}
    if name == "OPTION_HELP":
        return {key: o.help for key, o in registry.options().items()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class ModelSpec(BaseModel):
    """A base preset, a set of variants in canonical order, and the options the caller set."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    preset: str
    variants: tuple[str, ...] = ()
    options: dict[str, Any] = {}

    @property
    def name(self) -> str:
        """Model name: the preset then each variant in canonical order, joined with '-' (`vit_small-A-B`)."""
        return "-".join((self.preset, *self.variants))

    def __str__(self) -> str:
        return "+".join((self.preset, *self.variants))

    def has(self, variant: str) -> bool:
        return variant in self.variants

    def option(self, key: str) -> Any:
        """The option's value: the caller's if set, else its default."""
        if key in self.options:
            return self.options[key]
        return registry.option(key).default

    @property
    def layout(self) -> tuple[BlockConfig, ...]:
        """`block_layout(self)` at the preset's depth (computed once per distinct spec)."""
        return block_layout(self)


# --------------------------------------------------------------------------------------------------
# option values


def _to_layers(value: Any) -> tuple[int, ...]:
    if isinstance(value, str):
        parts = [p for p in value.replace(" ", "").split(",") if p]
        try:
            return tuple(int(p) for p in parts)
        except ValueError:
            raise ValueError(f"expected comma-separated block indices, got {value!r}") from None
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,)
    if isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return tuple(value)
    raise ValueError(f"expected block indices (e.g. '0,1,2' or a list of ints), got {value!r}")


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected a boolean (true/false), got {value!r}")


def _to_int(value: Any) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return _to_number(value, int, (int,), "an integer")


def _to_float(value: Any) -> float:
    return float(_to_number(value, float, (int, float), "a number"))


def _to_number(value: Any, kind: type, accepted: tuple[type, ...], what: str) -> Any:
    """`value` as `kind`: from an accepted number (never a bool) or a string; ValueError naming `what`."""
    if isinstance(value, accepted) and not isinstance(value, bool):
        return kind(value)
    if isinstance(value, str):
        try:
            return kind(value)
        except ValueError:
            pass
    raise ValueError(f"expected {what}, got {value!r}")


_CONVERTERS: dict[type, Callable[[Any], Any]] = {
    tuple: _to_layers,
    bool: _to_bool,
    int: _to_int,
    float: _to_float,
    str: str,
}


def _convert(key: str, value: Any) -> Any:
    opt = registry.option(key)
    try:
        return _CONVERTERS[opt.type](value)
    except ValueError as exc:
        raise ValueError(f"option {key}: {exc}") from None


def parse_option(text: str) -> tuple[str, Any]:
    """Parse a CLI `--opt key=value` into `(key, typed value)`; ValueError for unknown keys or bad values."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"expected an option as key=value, got {text!r}")
    return key, _convert(key, value.strip())


# --------------------------------------------------------------------------------------------------
# layout: what each block does


@dataclass(frozen=True)
class BlockConfig:
    """What one block computes, resolved from a spec (shared by the model and the cost formulas).

    attention: 'full' computes Q, K and its own attention map; 'reuse' computes only V and takes its
        map from the previous block (under a variant's `schedule`).
    provides_map: the next block reuses this block's map, so it is handed on.
    adds_prev_map: (a schedule's `adds_prev_map`) this attention block adds s * the previous pair's map
        to its softmax.
    variants: the variants this block carries (a schedule without a layer rule: its reuse blocks).
    """

    index: int
    attention: Literal["full", "reuse"] = "full"
    provides_map: bool = False
    adds_prev_map: bool = False
    variants: frozenset[str] = frozenset()

    def has(self, variant: str) -> bool:
        return variant in self.variants


def _layer_set(key: str, value: tuple[int, ...], depth: int) -> tuple[int, ...]:
    out: set[int] = set()
    for i in value:
        j = i + depth if i < 0 else i
        if not 0 <= j < depth:
            raise ValueError(f"option {key}: block index {i} out of range for depth {depth}")
        if j in out:
            raise ValueError(f"option {key}: block {j} given twice")
        out.add(j)
    if not out:
        raise ValueError(f"option {key}: empty block list")
    return tuple(sorted(out))


def block_layout(spec: ModelSpec, depth: int | None = None) -> tuple[BlockConfig, ...]:
    """Resolve a spec into one `BlockConfig` per block; ValueError for combinations that make no sense."""
    depth = get_preset(spec.preset).depth if depth is None else depth
    key = (spec.preset, spec.variants, tuple(sorted(spec.options.items())), depth)
    try:
        hash(key)
    except TypeError:  # an option value that is not hashable (a list): nothing to memoise on
        return _compute_layout(spec, depth)
    return _cached_layout(key, spec)


#: memoised layouts by spec content and depth: a build asks for its spec's layout from several places
_LAYOUTS: dict[tuple, tuple[BlockConfig, ...]] = {}


def _cached_layout(key: tuple, spec: ModelSpec) -> tuple[BlockConfig, ...]:
    layout = _LAYOUTS.get(key)
    if layout is None:
        layout = _compute_layout(spec, key[-1])
        if len(_LAYOUTS) >= 512:
            _LAYOUTS.clear()
        _LAYOUTS[key] = layout
    return layout


def _compute_layout(spec: ModelSpec, depth: int) -> tuple[BlockConfig, ...]:
    _validate_values(spec.options)
    defs = [registry.get(name) for name in spec.variants]

    schedule: Schedule | None = None
    scheduler: str | None = None  # the variant whose schedule it is
    for d in defs:
        mine = d.schedule(spec, depth) if d.schedule is not None else None
        if mine is None:
            continue
        if schedule is not None:
            raise ValueError(f"{mine.label} cannot be combined with {schedule.label}: "
                             "both make blocks reuse a previous map")
        schedule, scheduler = mine, d.name
    for d in defs:
        if d.validate is not None:
            d.validate(spec)
    reuse = schedule.reuse if schedule is not None else (False,) * depth
    ctx = LayoutContext(depth=depth, reuse=tuple(reuse), computing=tuple(i for i in range(depth) if not reuse[i]),
                        option=spec.option)

    carried: dict[int, set[str]] = {i: set() for i in range(depth)}
    for d in defs:
        if d.layers is None:
            if d.name == scheduler:  # the schedule's own reuse blocks
                for i in range(depth):
                    if reuse[i]:
                        carried[i].add(d.name)
            continue
        chosen = _chosen_layers(spec, d.name, d.layers.key, d.layers.default(ctx), d.layers.computing_only, ctx,
                                schedule)
        if d.adjust_layers is not None:
            chosen = d.adjust_layers(spec, chosen, ctx)
        for i in chosen:
            carried[i].add(d.name)

    adds = schedule is not None and schedule.adds_prev_map
    return tuple(
        BlockConfig(
            index=i,
            attention="reuse" if reuse[i] else "full",
            provides_map=i + 1 < depth and reuse[i + 1],
            adds_prev_map=adds and not reuse[i] and i > 0,
            variants=frozenset(carried[i]),
        )
        for i in range(depth)
    )


def _chosen_layers(spec: ModelSpec, variant: str, key: str, default: Sequence[int],
                   computing_only: bool, ctx: LayoutContext, schedule: Schedule | None) -> set[int]:
    value = spec.options.get(key)
    if value is None:
        chosen = set(default)
    else:
        chosen = set(_layer_set(key, value, ctx.depth))
        bad = sorted(i for i in chosen if ctx.reuse[i]) if computing_only else []
        if bad:
            raise ValueError(
                f"option {key}: blocks {bad} compute no attention logits (they reuse the previous "
                f"block's map under {schedule.label if schedule else '?'}); "
                f"{variant} can only apply to blocks {list(ctx.computing)}"
            )
    if not chosen:
        raise ValueError(f"{variant} would apply to no block; set {key}")
    return chosen


def resolved_options(spec: ModelSpec) -> dict[str, Any]:
    """Every option of the spec's variants with defaults filled in (layer sets resolved to block lists)."""
    layout = block_layout(spec)
    out: dict[str, Any] = {}
    for name in spec.variants:
        d = registry.get(name)
        for opt in d.options:
            out[opt.key] = spec.option(opt.key)
        if d.layers is not None:
            out[d.layers.key] = [b.index for b in layout if name in b.variants]
    return out


# --------------------------------------------------------------------------------------------------
# parsing


def _validate_values(spec_options: dict[str, Any]) -> None:
    for key, value in spec_options.items():
        problem = registry.option(key).problem(value)
        if problem:
            raise ValueError(f"option {key} {problem}, got {value!r}")


def split_spec(text: str) -> tuple[str, list[str]]:
    """`PRESET[+VARIANT...]` (or `-`-joined) -> (preset, variant names as written); no validation."""
    parts = [p.strip() for p in text.strip().replace("-", "+").split("+")]
    return parts[0], parts[1:]


def parse_spec(text: str, **options: Any) -> ModelSpec:
    """Parse `PRESET[+VARIANT...]` (or `-`-joined) and variant options into a validated `ModelSpec`.

    Raises ValueError naming the problem for an unknown preset, variant or option, a duplicate
    variant, an option whose variant is not in the spec, a bad value, or a refused combination.
    """
    text = text.strip()
    preset, names = split_spec(text)
    if not preset:
        raise ValueError(f"empty model spec {text!r}; expected PRESET[+VARIANT...], e.g. vit_small+cb")
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} in spec {text!r}; known presets: {', '.join(PRESETS)}")
    known = registry.names()
    for name in names:
        if not name:
            raise ValueError(f"empty variant name in spec {text!r}")
        if name not in known:
            raise ValueError(f"unknown variant {name!r} in spec {text!r}; known variants: {', '.join(known)}")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"variant(s) {', '.join(dupes)} given more than once in spec {text!r}")
    for name in names:
        for other, message in registry.get(name).conflicts.items():
            if other in names:
                raise ValueError(message)
    variants = tuple(v for v in known if v in names)

    converted: dict[str, Any] = {}
    for key, value in options.items():
        value = _convert(key, value)
        owner = registry.option_owner(key)
        if owner not in variants:
            raise ValueError(f"option {key} belongs to variant {owner!r}, which is not in spec {text!r}")
        converted[key] = value
    _validate_values(converted)
    depth = get_preset(preset).depth
    for key, value in list(converted.items()):
        if registry.option(key).type is tuple:
            converted[key] = _layer_set(key, value, depth)
    spec = ModelSpec(preset=preset, variants=variants, options=converted)
    block_layout(spec)  # refuse nonsensical combinations now, not at build time (and memoise the layout)
    return spec

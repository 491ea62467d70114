"""Model specs: `PRESET[+VARIANT...]` plus variant options, parsed, validated and laid out per block.

A spec names a base preset and a set of the variants of VARIANTS.md, e.g. `vit_small+cb+gab`
(`-` is accepted as a separator too, so a model name parses back to its spec). Options carry the
variant's prefix (`cb_layers`, `lavit_full`, `gab_sigma_init` ...) and belong to a variant in the spec.
`ModelSpec.options` keeps only what the caller set; defaults are filled in by `block_layout`, so a spec
written into a manifest records exactly the user's choices.

Decisions on combinations (VARIANTS.md leaves them to us):
- `cb` with `cbs` is refused: both rewrite the same residual stream with a token mean; pick one.
- Blocks that compute no Q/K logits ("reuse" blocks: LaViT Less-Attention blocks, and the sharing
  blocks of `refiner_share`) cannot take `gab` (nothing to add the bias to), `reattn` or a second
  attention-computing refiner. Such variants are *restricted* to the blocks that compute attention:
  their default layer set is taken among those blocks (`gab`: all of them but the model's last block;
  `reattn`: the last half of them), and an explicit `gab_layers`/`reattn_layers` naming a reuse block is
  refused. GAB skips the last block by default because its bias cannot change the logits: G's
  class-token row is 0 and only the class token's output of the last block reaches the head, so its
  sigma and a would be dead parameters (never a gradient).
- `lavit` with `refiner_share` is refused (two different reuse schedules on one stack).
- `lavit` with `refiner`: the refiner applies on the blocks that compute attention; Less-Attention blocks
  reuse the previous block's softmax map (before its head mixing / refinement) as VARIANTS.md 2 defines.
- `refiner_share` (the authors' Refined_Attention with share_atten, as in their released S/M/L models):
  even blocks compute attention and do not refine; from block 2 on they add s * (the map handed on by
  the previous pair) to their softmax and hand that sum on. Odd blocks compute only V, refine the handed
  map (DLA + BN_H, times s), use it, and hand on the map they received, unrefined. The map an attention
  block hands on is taken before any re-attention head mixing.
- `lavit_transform = none` has no diagonality loss: its Less-Attention maps are the full block's softmax
  unchanged, so there is no transformed map to regularise (the loss would only push the full block's
  Q/K, once per reuse block); an explicit `lavit_loss_weight` > 0 with it is refused.
- A spec whose variant would touch no block (e.g. `lavit` where every stage is all full blocks) is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict

from export.presets import PRESETS, get_preset

__all__ = [
    "VARIANTS",
    "VARIANT_OPTIONS",
    "OPTION_DEFAULTS",
    "OPTION_HELP",
    "ModelSpec",
    "BlockConfig",
    "parse_spec",
    "parse_option",
    "block_layout",
    "resolved_options",
]

#: Canonical variant order: names and `str(spec)` list variants in this order.
VARIANTS: tuple[str, ...] = ("cb", "cbs", "lavit", "gab", "reattn", "refiner")

#: Options per variant and their value types (`tuple` = a tuple of block indices).
VARIANT_OPTIONS: dict[str, dict[str, type]] = {
    "cb": {"cb_layers": tuple},
    "cbs": {"cbs_layers": tuple},
    "lavit": {
        "lavit_full": int,
        "lavit_stages": int,
        "lavit_transform": str,
        "lavit_loss_weight": float,
    },
    "gab": {"gab_sigma_init": float, "gab_amplitude_init": float, "gab_layers": tuple},
    "reattn": {"reattn_layers": tuple, "reattn_scale": bool},
    "refiner": {
        "refiner_expand": int,
        "refiner_kernel": int,
        "refiner_share": bool,
        "refiner_layers": tuple,
    },
}

#: Defaults; `None` for a layer set means "the variant's default blocks" (see `block_layout`).
OPTION_DEFAULTS: dict[str, Any] = {
    "cb_layers": None,
    "cbs_layers": None,
    "lavit_full": 2,
    "lavit_stages": 1,
    "lavit_transform": "token",
    "lavit_loss_weight": 0.1,
    "gab_sigma_init": 5.0,
    "gab_amplitude_init": 1.0,
    "gab_layers": None,
    "reattn_layers": None,
    "reattn_scale": False,
    "refiner_expand": 3,
    "refiner_kernel": 3,
    "refiner_share": False,
    "refiner_layers": None,
}

OPTION_HELP: dict[str, str] = {
    "cb_layers": "blocks ending with CB (default: all)",
    "cbs_layers": "blocks ending with CB_S (default: all)",
    "lavit_full": "blocks computing full attention at the start of each stage (default 2)",
    "lavit_stages": "number of equal stages the blocks are split into (default 1)",
    "lavit_transform": "'token' (learned N x N maps, paper) or 'none' (reuse previous softmax)",
    "lavit_loss_weight": "weight of the diagonality-preserving loss in training (default 0.1)",
    "gab_sigma_init": "initial Gaussian width sigma in patches (default 5.0)",
    "gab_amplitude_init": "initial amplitude a (bias a^2 exp(...)); default 1.0, 1e-3 when loading a checkpoint",
    "gab_layers": "blocks with the Gaussian bias (default: the attention-computing blocks but the last)",
    "reattn_layers": "blocks with re-attention (default: last half of the attention-computing blocks)",
    "reattn_scale": "multiply the re-attended map by s = d^-1/2 (the authors' transform_scale; default false)",
    "refiner_expand": "expansion ratio E of the refiner (default 3)",
    "refiner_kernel": "odd depthwise kernel size k (default 3)",
    "refiner_share": "the authors' sharing form: odd blocks compute only V and refine the previous block's map",
    "refiner_layers": "blocks with the refiner (default: all; the sharing blocks under refiner_share)",
}

_OPTION_OWNER: dict[str, str] = {opt: var for var, opts in VARIANT_OPTIONS.items() for opt in opts}
_LAVIT_TRANSFORMS = ("token", "none")


class ModelSpec(BaseModel):
    """A base preset, a set of variants in canonical order, and the options the caller set."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    preset: str
    variants: tuple[str, ...] = ()
    options: dict[str, Any] = {}

    @property
    def name(self) -> str:
        """Model name: the preset then each variant, joined with '-' (`vit_small-cb-gab`)."""
        return "-".join((self.preset, *self.variants))

    def __str__(self) -> str:
        return "+".join((self.preset, *self.variants))

    def has(self, variant: str) -> bool:
        return variant in self.variants

    def option(self, key: str) -> Any:
        """The option's value: the caller's if set, else its default."""
        if key not in OPTION_DEFAULTS:
            raise ValueError(f"unknown option {key!r}")
        return self.options.get(key, OPTION_DEFAULTS[key])


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
    if isinstance(value, bool):
        raise ValueError(f"expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    raise ValueError(f"expected an integer, got {value!r}")


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise ValueError(f"expected a number, got {value!r}")


_CONVERTERS: dict[type, Callable[[Any], Any]] = {
    tuple: _to_layers,
    bool: _to_bool,
    int: _to_int,
    float: _to_float,
    str: str,
}


def _convert(key: str, value: Any) -> Any:
    owner = _OPTION_OWNER.get(key)
    if owner is None:
        raise ValueError(f"unknown option {key!r}; known options: {', '.join(sorted(_OPTION_OWNER))}")
    try:
        return _CONVERTERS[VARIANT_OPTIONS[owner][key]](value)
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
        map from the previous block (LaViT Less-Attention, or a refiner sharing block).
    lavit_transform: for LaViT reuse blocks, 'token' (learned N x N maps) or 'none'.
    provides_map: the next block reuses this block's map, so it is handed on.
    adds_prev_map: (refiner_share) this attention block adds s * the previous pair's map to its softmax.
    """

    index: int
    attention: Literal["full", "reuse"] = "full"
    lavit_transform: Literal["token", "none"] | None = None
    provides_map: bool = False
    adds_prev_map: bool = False
    cb: Literal["cb", "cbs"] | None = None
    gab: bool = False
    reattn: bool = False
    refiner: bool = False

    @property
    def is_lavit_less(self) -> bool:
        return self.lavit_transform is not None


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


def _lavit_roles(depth: int, full: int, stages: int) -> list[bool]:
    """True where a block is a Less-Attention (reuse) block."""
    if stages < 1 or stages > depth:
        raise ValueError(f"option lavit_stages must be between 1 and the depth {depth}, got {stages}")
    if depth % stages:
        raise ValueError(f"option lavit_stages={stages} does not divide the depth {depth} into equal stages")
    if full < 1:
        raise ValueError(f"option lavit_full must be >= 1 (a stage must start with full attention), got {full}")
    per = depth // stages
    return [(i % per) >= full for i in range(depth)]


def block_layout(spec: ModelSpec, depth: int | None = None) -> tuple[BlockConfig, ...]:
    """Resolve a spec into one `BlockConfig` per block; ValueError for combinations that make no sense."""
    depth = get_preset(spec.preset).depth if depth is None else depth
    _validate_values(spec.options)
    opt = spec.option

    reuse = [False] * depth
    lavit_transform: str | None = None
    if spec.has("lavit"):
        lavit_transform = opt("lavit_transform")
        if lavit_transform not in _LAVIT_TRANSFORMS:
            raise ValueError(f"option lavit_transform must be one of {_LAVIT_TRANSFORMS}, got {lavit_transform!r}")
        reuse = _lavit_roles(depth, opt("lavit_full"), opt("lavit_stages"))
        if not any(reuse):
            raise ValueError(
                f"lavit with lavit_full={opt('lavit_full')} and lavit_stages={opt('lavit_stages')} at depth {depth} "
                "leaves no Less-Attention block; lower lavit_full or the number of stages"
            )
    share = spec.has("refiner") and opt("refiner_share")
    if share:
        if spec.has("lavit"):
            raise ValueError("refiner_share cannot be combined with lavit: both make blocks reuse a previous map")
        if "refiner_layers" in spec.options:
            raise ValueError("refiner_share refines every sharing block; do not set refiner_layers with it")
        if depth < 2:
            raise ValueError("refiner_share needs at least two blocks")
        reuse = [i % 2 == 1 for i in range(depth)]
    if spec.has("lavit") and lavit_transform == "none" and spec.options.get("lavit_loss_weight", 0) > 0:
        raise ValueError(
            "lavit_loss_weight has no effect with lavit_transform=none (no transformed map to regularise); "
            "drop it or use lavit_transform=token"
        )
    computing = [i for i in range(depth) if not reuse[i]]

    def layers(variant: str, key: str, default: list[int], computing_only: bool) -> set[int]:
        if not spec.has(variant):
            return set()
        value = spec.options.get(key)
        if value is None:
            chosen = set(default)
        else:
            chosen = set(_layer_set(key, value, depth))
            bad = sorted(i for i in chosen if reuse[i]) if computing_only else []
            if bad:
                raise ValueError(
                    f"option {key}: blocks {bad} compute no attention logits (they reuse the previous "
                    f"block's map under {'lavit' if spec.has('lavit') else 'refiner_share'}); "
                    f"{variant} can only apply to blocks {computing}"
                )
        if not chosen:
            raise ValueError(f"{variant} would apply to no block; set {key}")
        return chosen

    all_blocks = list(range(depth))
    cb = layers("cb", "cb_layers", all_blocks, False)
    cbs = layers("cbs", "cbs_layers", all_blocks, False)
    # the last block's bias cannot reach the logits (G's class-token row is 0 and only the class token
    # leaves the last block), so by default it has none: its sigma/a would never get a gradient
    gab = layers("gab", "gab_layers", [i for i in computing if i != depth - 1] or computing, True)
    reattn = layers("reattn", "reattn_layers", computing[len(computing) - len(computing) // 2 :]
                    if len(computing) > 1 else computing, True)
    refiner = layers("refiner", "refiner_layers", all_blocks, False)
    if share:  # only the sharing blocks refine (the authors' released models)
        refiner = {i for i in refiner if reuse[i]}
    if spec.has("lavit"):
        bad = sorted(i for i in refiner if reuse[i])
        if bad and "refiner_layers" in spec.options:
            raise ValueError(
                f"option refiner_layers: blocks {bad} are lavit Less-Attention blocks; the refiner applies only "
                f"to blocks {computing}"
            )
        refiner = {i for i in refiner if not reuse[i]}
        if spec.has("refiner") and not refiner:
            raise ValueError("refiner would apply to no block; set refiner_layers")

    out = []
    for i in range(depth):
        out.append(BlockConfig(
            index=i,
            attention="reuse" if reuse[i] else "full",
            lavit_transform=lavit_transform if (reuse[i] and spec.has("lavit")) else None,  # type: ignore[arg-type]
            provides_map=i + 1 < depth and reuse[i + 1],
            adds_prev_map=bool(share) and not reuse[i] and i > 0,
            cb="cb" if i in cb else "cbs" if i in cbs else None,
            gab=i in gab,
            reattn=i in reattn,
            refiner=i in refiner,
        ))
    return tuple(out)


def resolved_options(spec: ModelSpec) -> dict[str, Any]:
    """Every option of the spec's variants with defaults filled in (layer sets resolved to block lists)."""
    layout = block_layout(spec)
    out: dict[str, Any] = {}
    for variant in spec.variants:
        for key in VARIANT_OPTIONS[variant]:
            out[key] = spec.option(key)
    layer_of = {"cb_layers": "cb", "cbs_layers": "cb", "gab_layers": "gab", "reattn_layers": "reattn",
                "refiner_layers": "refiner"}
    for key, attr in layer_of.items():
        if key in out:
            if attr == "cb":
                kind = key.split("_")[0]
                out[key] = [b.index for b in layout if b.cb == kind]
            else:
                out[key] = [b.index for b in layout if getattr(b, attr)]
    return out


# --------------------------------------------------------------------------------------------------
# parsing


def _validate_values(spec_options: dict[str, Any]) -> None:
    checks: dict[str, tuple[Callable[[Any], bool], str]] = {
        "lavit_loss_weight": (lambda v: v >= 0, "must be >= 0"),
        "gab_sigma_init": (lambda v: v > 0, "must be > 0"),
        "refiner_expand": (lambda v: v >= 1, "must be >= 1"),
        "refiner_kernel": (lambda v: v >= 1 and v % 2 == 1, "must be an odd integer >= 1 (same padding)"),
        "lavit_transform": (lambda v: v in _LAVIT_TRANSFORMS, f"must be one of {_LAVIT_TRANSFORMS}"),
    }
    for key, (ok, msg) in checks.items():
        if key in spec_options and not ok(spec_options[key]):
            raise ValueError(f"option {key} {msg}, got {spec_options[key]!r}")


def parse_spec(text: str, **options: Any) -> ModelSpec:
    """Parse `PRESET[+VARIANT...]` (or `-`-joined) and variant options into a validated `ModelSpec`.

    Raises ValueError naming the problem for an unknown preset, variant or option, a duplicate
    variant, an option whose variant is not in the spec, a bad value, or a refused combination.
    """
    text = text.strip()
    parts = [p.strip() for p in text.replace("-", "+").split("+")]
    if not parts or not parts[0]:
        raise ValueError(f"empty model spec {text!r}; expected PRESET[+VARIANT...], e.g. vit_small+cb")
    preset, names = parts[0], parts[1:]
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} in spec {text!r}; known presets: {', '.join(PRESETS)}")
    for name in names:
        if not name:
            raise ValueError(f"empty variant name in spec {text!r}")
        if name not in VARIANTS:
            raise ValueError(f"unknown variant {name!r} in spec {text!r}; known variants: {', '.join(VARIANTS)}")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"variant(s) {', '.join(dupes)} given more than once in spec {text!r}")
    if "cb" in names and "cbs" in names:
        raise ValueError("cb and cbs both broadcast context into the same residual stream; choose one")
    variants = tuple(v for v in VARIANTS if v in names)

    converted: dict[str, Any] = {}
    for key, value in options.items():
        value = _convert(key, value)
        owner = _OPTION_OWNER[key]
        if owner not in variants:
            raise ValueError(f"option {key} belongs to variant {owner!r}, which is not in spec {text!r}")
        converted[key] = value
    _validate_values(converted)
    depth = get_preset(preset).depth
    for key, value in list(converted.items()):
        if VARIANT_OPTIONS[_OPTION_OWNER[key]][key] is tuple:
            converted[key] = _layer_set(key, value, depth)
    spec = ModelSpec(preset=preset, variants=variants, options=converted)
    block_layout(spec)  # refuse nonsensical combinations now, not at build time
    return spec

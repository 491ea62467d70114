"""Checkpoint import: timm-format state dicts into any variant, by parameter name.

`convert_timm_state_dict` is a pure function (state dict in, state dict out) shared by every variant:
it strips `module.` prefixes (DataParallel/DDP), resamples `pos_embed` when the checkpoint's patch grid
differs from the model's, and gives the blocks that compute only V (the reuse blocks of a variant's
schedule: `attn.v`, [D, D]) the V rows of the checkpoint's full `attn.qkv`. `load_checkpoint` then loads
it and allows only the variant's own new parameters to be missing; they are reset to their converted
start and reported. Unexpected keys or a missing shared key raise ValueError.

Converted starts (the model computes what the checkpoint computed, in eval mode and in train mode with
dropout off, and every new parameter can learn): each module holding a new parameter resets itself
(its `reset_function_preserving`, e.g. BatchNorms over attention maps start as the identity with frozen
statistics, `export.models.norms.AttentionBatchNorm`), then its variant's `converted_start` adjusts that
start to the spec (an initial value the user set explicitly wins); each variant's module docstring under
export/variants/ says what its start is.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from timm.layers import resample_abs_pos_embed
from torch import nn

if TYPE_CHECKING:
    from timm.models.vision_transformer import VisionTransformer

__all__ = ["load_state_dict_file", "convert_timm_state_dict", "load_checkpoint", "read_weights_only"]

_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


def read_weights_only(path: str | Path, map_location: Any = "cpu") -> Any:
    """`torch.load` restricted to tensors and plain values: a planted pickle is refused, never run.

    Raises ValueError with a one-line reason (torch's own text advises loading the file unsafely).
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError("it holds objects other than tensors and plain values, or is not a torch file at all "
                         "(nothing in it was run)") from None
    except Exception as exc:  # truncated zip, empty file, unreadable path
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else "empty or truncated"
        raise ValueError(f"it is truncated or not a torch file ({type(exc).__name__}: {reason})") from None


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a .pth/.pt/.bin (torch.load, weights_only) or .safetensors file into a flat state dict."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    if path.suffix not in _SUFFIXES:
        raise ValueError(f"checkpoint {path}: unsupported file type {path.suffix!r}; expected one of {_SUFFIXES}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj: Any = load_file(str(path), device="cpu")
    else:
        try:
            obj = read_weights_only(path)
        except ValueError as exc:
            raise ValueError(f"checkpoint {path} could not be read as a weights-only torch file: {exc}") from None
    for key in ("state_dict", "model", "state_dict_ema", "model_ema"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"checkpoint {path} does not hold a state dict of tensors")
    return dict(obj)


def convert_timm_state_dict(
    state_dict: Mapping[str, torch.Tensor], model: nn.Module
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Adapt a timm ViT state dict to `model`; returns (converted dict, model keys missing from it).

    Strips `module.` prefixes and resamples `pos_embed` (timm's `resample_abs_pos_embed`) when the grid
    differs. Keys the model does not have are kept, so the caller sees them as unexpected.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        while key.startswith("module."):
            key = key[len("module."):]
        out[key] = value
    target = model.state_dict()
    pos = out.get("pos_embed")
    if pos is not None and "pos_embed" in target and pos.shape != target["pos_embed"].shape:
        prefix = int(getattr(model, "num_prefix_tokens", 1))
        old_patches = pos.shape[1] - prefix
        side = math.isqrt(old_patches)
        if side * side != old_patches:
            raise ValueError(f"pos_embed with {old_patches} patch positions is not a square grid; cannot resample")
        grid = cast("VisionTransformer", model).patch_embed.grid_size  # a pos_embed: a timm ViT
        out["pos_embed"] = resample_abs_pos_embed(
            pos, new_size=list(grid), old_size=[side, side], num_prefix_tokens=prefix, verbose=False
        )
    for key in target:
        if not key.endswith(".attn.v.weight") and not key.endswith(".attn.v.bias"):
            continue
        full = key.replace(".attn.v.", ".attn.qkv.")
        if key not in out and full in out:  # a V-only block: take the V rows of the full projection
            qkv = out.pop(full)
            rows = target[key].shape[0]
            if qkv.shape[0] != 3 * rows:
                raise ValueError(f"{full} has {qkv.shape[0]} rows; expected 3 x {rows} (Q, K, V) for {key}")
            out[key] = qkv[2 * rows:].clone()
    missing = [k for k in target if k not in out]
    return out, missing


def _converted_starts(model: nn.Module, new_keys: set[str]) -> None:
    """Each variant's `converted_start` on its modules that hold new parameters (a VariantViT's only)."""
    from export.models.vit import VariantViT, variant_modules

    if not isinstance(model, VariantViT):
        return
    for name, variant, module in variant_modules(model):
        prefix = name + "."
        new = frozenset(k[len(prefix):] for k in new_keys if k.startswith(prefix))
        if variant.converted_start is not None and new:
            variant.converted_start(module, model.spec, new)


def load_checkpoint(model: nn.Module, path: str | Path) -> list[str]:
    """Load a timm-format checkpoint into `model` by name; returns the variant keys it lacked (new keys).

    Raises ValueError when a shared (non-variant) key is missing, a key is unexpected, or a shape differs.
    """
    converted, missing = convert_timm_state_dict(load_state_dict_file(path), model)
    variant_state_keys = getattr(model, "variant_state_keys", None)  # a VariantViT's; a plain timm ViT has none
    own = set(variant_state_keys()) if variant_state_keys is not None else set()
    shared_missing = [k for k in missing if k not in own]
    target = model.state_dict()
    unexpected = [k for k in converted if k not in target]
    if shared_missing or unexpected:
        parts = []
        if shared_missing:
            parts.append(f"missing shared keys {shared_missing[:8]}{' ...' if len(shared_missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
        raise ValueError(f"checkpoint {path} does not match the model: " + "; ".join(parts))
    bad_shapes = [f"{k}: {tuple(v.shape)} vs {tuple(target[k].shape)}" for k, v in converted.items()
                  if v.shape != target[k].shape]
    if bad_shapes:
        raise ValueError(f"checkpoint {path} has tensors of the wrong shape: {bad_shapes[:8]}")

    new_keys = [k for k in missing if k in own]
    new_set = set(new_keys)
    # New parameters take their function-preserving initialisation (deterministic: no RNG draws).
    for name, module in model.named_modules():
        reset = getattr(module, "reset_function_preserving", None)
        if reset is not None and any(k.startswith(name + ".") for k in new_set):
            reset()
    _converted_starts(model, new_set)
    model.load_state_dict(converted, strict=False)
    return new_keys

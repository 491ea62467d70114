"""timm checkpoints load into every variant by parameter name; only the variants' own keys are new."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed

from export.checkpoint import convert_timm_state_dict, load_checkpoint, load_state_dict_file
from export.models import create_model
from export.spec import parse_spec

TEST_ARCH = dict(patch_size=8, embed_dim=32, depth=4, num_heads=2, num_classes=10)


@pytest.fixture(scope="module")
def timm_tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    """A seeded timm vit_tiny_patch16_224 (random weights, no download) and its state dict on disk."""
    return _timm_checkpoint(tmp_path_factory, "vit_tiny.pth")


@pytest.fixture(scope="module")
def timm_small_arch(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    """The same for a timm ViT with the `test` preset's architecture (fast)."""
    return _timm_checkpoint(tmp_path_factory, "test.pth", img_size=32, **TEST_ARCH)


def _timm_checkpoint(factory: pytest.TempPathFactory, name: str, **kwargs) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **kwargs).eval()
    with torch.no_grad():  # non-zero biases and norms, so every shared tensor matters
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    path = factory.mktemp("ckpt") / name
    torch.save(model.state_dict(), path)
    return model, path


def test_vanilla_vit_tiny_with_a_timm_checkpoint_gives_timms_logits(timm_tiny: tuple[torch.nn.Module, Path]) -> None:
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    model = create_model(parse_spec("vit_tiny"), seed=1)
    assert load_checkpoint(model, timm_tiny[1]) == []
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(images), timm_tiny[0](images), atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", ["cb", "cbs", "lavit", "gab", "reattn", "refiner"])
def test_timm_checkpoint_loads_into_each_vit_tiny_variant_with_only_new_keys_missing(
    timm_tiny: tuple[torch.nn.Module, Path], variant: str
) -> None:
    model = create_model(parse_spec(f"vit_tiny+{variant}"))
    new = load_checkpoint(model, timm_tiny[1])
    assert sorted(new) == sorted(model.variant_state_keys())
    assert (new == []) == (variant == "cb")
    state = model.state_dict()
    for key, value in timm_tiny[0].state_dict().items():
        if key not in state and ".attn.qkv." in key:  # a V-only block holds the checkpoint's V rows
            key, value = key.replace(".attn.qkv.", ".attn.v."), value[2 * 192:]
        assert torch.equal(state[key], value), key
    if variant == "lavit":  # Less-Attention maps start as the identity; those blocks carry V only
        assert torch.equal(model.blocks[5].attn.lavit.theta, torch.eye(197))
        assert not hasattr(model.blocks[5].attn, "qkv") and model.blocks[5].attn.v.weight.shape == (192, 192)


#: every variant whose converted start keeps the checkpoint's function (cb and lavit change it by
#: definition: CB mixes in the token mean, Less-Attention blocks reuse another block's map; so does
#: refiner_share, whose sharing blocks compute no Q/K)
CONVERTED = [("test+cbs", {}), ("test+gab", {}), ("test+reattn", {}), ("test+reattn", {"reattn_scale": True}),
             ("test+refiner", {}), ("test+cbs+gab+reattn+refiner", {"reattn_scale": True})]


@pytest.mark.parametrize(("text", "options"), CONVERTED, ids=lambda v: v if isinstance(v, str) else "-".join(v))
def test_converted_variants_reproduce_the_checkpoint_in_eval_and_train_mode(
    timm_small_arch: tuple[torch.nn.Module, Path], text: str, options: dict
) -> None:
    """Logits within 1e-5 of the checkpoint's, eval mode and train mode (dropout off), on a real batch."""
    model = create_model(parse_spec(text, **options), seed=1)
    new = load_checkpoint(model, timm_small_arch[1])
    assert new and sorted(new) == sorted(model.variant_state_keys())
    x, _ = _digits_batch()
    with torch.no_grad():
        expected = timm_small_arch[0](x)
        for train in (False, True):
            torch.testing.assert_close(model.train(train)(x), expected, atol=1e-5, rtol=0)


def _digits_batch(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """A real batch: the first n sklearn digits, preprocessed as the demo models see them (32x32)."""
    from export.presets import get_preset
    from export.train import digits_split, pixel_values

    split = digits_split()
    x = pixel_values(split.train_images[:n], get_preset("test").data)
    return torch.from_numpy(x), torch.from_numpy(split.train_labels[:n])


def test_every_new_parameter_of_a_converted_model_learns_on_a_real_batch(
    timm_small_arch: tuple[torch.nn.Module, Path]
) -> None:
    """No new parameter sits at a stationary point. On the first batch every new parameter has a non-zero
    gradient except the Refiner's DLA: its expand/depthwise/reduce convolutions and BN1/BN2 sit behind BN3's
    gamma = 0 (the function-preserving start VARIANTS.md asks for, like a zero-initialised residual branch),
    so the first backward gives them exactly 0. That is expected, not a dead weight: BN3's gamma has a
    gradient, and after one AdamW step they all have one (asserted below), so "trainable" holds from the
    second step. GAB (blocks 0-2: a last-block bias could not reach the logits) starts in its linear form at
    a = 0, where sigma's gradient (proportional to a) is 0 on the first batch too; a's is not."""
    import torch.nn.functional as F

    model = create_model(parse_spec("test+cbs+gab+reattn+refiner", reattn_scale=True), seed=1)
    new = load_checkpoint(model, timm_small_arch[1])
    params = dict(model.named_parameters())
    new_params = {k: params[k] for k in new if k in params}
    assert len(new_params) > 20
    x, y = _digits_batch()
    model.train()

    def grads() -> dict[str, float]:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        return {k: float(p.grad.abs().sum()) if p.grad is not None else 0.0 for k, p in new_params.items()}

    first = grads()
    gated = (".refiner.expand.", ".refiner.dw.", ".refiner.bn1.", ".refiner.bn2.", ".refiner.reduce.", ".gab.sigma")
    assert {k for k, g in first.items() if g == 0} == {k for k in new_params if any(t in k for t in gated)}
    assert all(first[f"blocks.{i}.attn.gab.amplitude"] > 0 for i in range(3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    optimizer.step()
    second = grads()
    assert all(g > 0 for g in second.values()), [k for k, g in second.items() if g == 0]


def test_all_variants_together_load_and_run(timm_small_arch: tuple[torch.nn.Module, Path],
                                            images: torch.Tensor) -> None:
    model = create_model(parse_spec("test+cb+lavit+gab+reattn+refiner"))
    assert sorted(load_checkpoint(model, timm_small_arch[1])) == sorted(model.variant_state_keys())
    with torch.no_grad():
        assert torch.isfinite(model.eval()(images)).all()


def test_a_converted_gab_starts_linear_at_zero_unless_the_user_set_it(
    timm_small_arch: tuple[torch.nn.Module, Path], tmp_path: Path
) -> None:
    """Converted: G = a K with a = 0 (exactly the checkpoint's function); an explicit a0 gives the same starting
    bias as from scratch (a = a0^2, linear); fine-tuned weights carry the form; GAB weights without it are a^2."""
    from export.models.gab import CONVERTED_AMPLITUDE

    default = create_model(parse_spec("test+gab"))
    assert default.blocks[0].attn.gab.amplitude.eq(1.0).all() and not default.blocks[0].attn.gab.is_linear
    load_checkpoint(default, timm_small_arch[1])
    assert CONVERTED_AMPLITUDE == 0.0
    assert all(b.attn.gab.amplitude.eq(0.0).all() and b.attn.gab.is_linear for b in default.blocks[:3])
    assert all(b.attn.gab.sigma.eq(5.0).all() for b in default.blocks[:3])
    chosen = create_model(parse_spec("test+gab", gab_amplitude_init=0.5))
    load_checkpoint(chosen, timm_small_arch[1])
    assert all(b.attn.gab.amplitude.eq(0.25).all() and b.attn.gab.is_linear for b in chosen.blocks[:3])
    with torch.no_grad():
        chosen.blocks[0].attn.gab.amplitude.fill_(-0.3)  # as after a fine-tune: a negative linear amplitude
    torch.save(chosen.state_dict(), tmp_path / "tuned.pth")
    again = create_model(parse_spec("test+gab"))
    assert load_checkpoint(again, tmp_path / "tuned.pth") == []
    assert again.blocks[0].attn.gab.is_linear
    torch.testing.assert_close(again.blocks[0].attn.gab(), chosen.blocks[0].attn.gab())
    old = {k: v for k, v in create_model(parse_spec("test+gab"), seed=2).state_dict().items()
           if not k.endswith("linear_amplitude")}  # GAB weights written before the form flag existed
    torch.save(old, tmp_path / "old.pth")
    legacy = create_model(parse_spec("test+gab"))
    load_checkpoint(legacy, tmp_path / "old.pth")
    assert not legacy.blocks[0].attn.gab.is_linear and legacy.blocks[0].attn.gab.amplitude.eq(1.0).all()


def test_new_parameters_are_reset_to_their_function_preserving_init(
    timm_small_arch: tuple[torch.nn.Module, Path]
) -> None:
    model = create_model(parse_spec("test+reattn+refiner"))
    refiner, reattn = model.blocks[3].attn.refiner, model.blocks[3].attn.reattn
    with torch.no_grad():
        refiner.bn3.weight.fill_(1.0)
        refiner.norm.running_mean.fill_(0.3)
        reattn.conv.weight.fill_(1.0)
    assert not refiner.bn3.frozen_stats and not reattn.norm.frozen_stats  # from scratch: batch statistics
    expand = refiner.expand.weight.clone()
    rng = torch.random.get_rng_state()
    load_checkpoint(model, timm_small_arch[1])
    assert refiner.bn3.weight.eq(0).all() and refiner.norm.weight.eq(1).all()
    assert refiner.norm.running_mean.eq(0).all()
    assert torch.equal(reattn.conv.weight.view(2, 2), torch.eye(2))
    bns = [refiner.bn1, refiner.bn2, refiner.bn3, refiner.norm, reattn.norm]
    assert all(bn.frozen_stats for bn in bns)  # converted: train mode keeps the checkpoint's function
    # deterministic: the seeded expand/depthwise weights are kept and no random numbers are drawn
    assert torch.equal(model.blocks[3].attn.refiner.expand.weight, expand)
    assert torch.equal(torch.random.get_rng_state(), rng)


def test_safetensors_wrapped_and_prefixed_files_load(
    tmp_path: Path, timm_small_arch: tuple[torch.nn.Module, Path], images: torch.Tensor
) -> None:
    from safetensors.torch import save_file

    with torch.no_grad():
        expected = timm_small_arch[0](images)
    state = timm_small_arch[0].state_dict()
    st = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(st))
    wrapped = tmp_path / "w.bin"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, wrapped)
    for path in (st, wrapped):
        model = create_model(parse_spec("test"))
        assert load_checkpoint(model, path) == []
        with torch.no_grad():
            torch.testing.assert_close(model.eval()(images), expected, atol=1e-5, rtol=0)


def test_convert_is_pure_and_resamples_pos_embed() -> None:
    torch.manual_seed(0)
    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=48, **TEST_ARCH)
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    before = {k: v.clone() for k, v in state.items()}
    model = create_model(parse_spec("test+cbs"))
    converted, missing = convert_timm_state_dict(state, model)
    assert state.keys() == before.keys() and all(torch.equal(state[k], before[k]) for k in state)
    assert set(converted) == set(source.state_dict())
    assert sorted(missing) == sorted(model.variant_state_keys())
    assert converted["pos_embed"].shape == (1, 17, 32)
    expected = resample_abs_pos_embed(source.pos_embed.detach(), new_size=[4, 4], old_size=[6, 6], num_prefix_tokens=1)
    torch.testing.assert_close(converted["pos_embed"], expected)
    torch.testing.assert_close(converted["pos_embed"][:, :1], source.pos_embed[:, :1].detach())


def _save(tmp_path: Path, state: dict[str, torch.Tensor], name: str = "bad.pth") -> Path:
    path = tmp_path / name
    torch.save(state, path)
    return path


def test_unexpected_missing_or_misshapen_keys_are_refused(tmp_path: Path) -> None:
    torch.manual_seed(0)
    state = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, **TEST_ARCH).state_dict()
    model = create_model(parse_spec("test+gab"))
    assert load_checkpoint(model, _save(tmp_path, state, "ok.pth"))  # sanity: the good one loads
    with pytest.raises(ValueError, match="unexpected keys"):
        load_checkpoint(model, _save(tmp_path, {**state, "dist_token": torch.zeros(1, 1, 32)}))
    missing = {k: v for k, v in state.items() if k != "blocks.1.attn.qkv.weight"}
    with pytest.raises(ValueError, match=r"missing shared keys \['blocks.1.attn.qkv.weight'\]"):
        load_checkpoint(model, _save(tmp_path, missing))
    with pytest.raises(ValueError, match="wrong shape"):
        load_checkpoint(create_model(parse_spec("test+gab"), num_classes=5), _save(tmp_path, state))


def test_unreadable_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        load_state_dict_file(tmp_path / "nope.pth")
    npz = tmp_path / "w.npz"
    npz.write_bytes(b"x")
    with pytest.raises(ValueError, match="unsupported file type"):
        load_state_dict_file(npz)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not be read"):
        load_state_dict_file(junk)
    torch.save({"weights": [1, 2, 3]}, tmp_path / "list.pth")
    with pytest.raises(ValueError, match="state dict of tensors"):
        load_state_dict_file(tmp_path / "list.pth")

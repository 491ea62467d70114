"""Each variant against its VARIANTS.md formula, identity-init equivalence, composability and folding."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from export.fold import fold_for_inference
from export.models import VariantViT, create_model, diagonality_loss
from export.models.cb import ContextBroadcast, ScaledContextBroadcast
from export.models.gab import FoldedAttentionBias, GaussianAttentionBias
from export.models.reattn import ReAttention
from export.models.refiner import AttentionRefiner
from export.models.vit import AttentionMap, VariantAttention
from export.spec import VARIANTS, BlockConfig, parse_spec



def _valid_variant_sets() -> list[tuple[str, ...]]:
    out = []
    for r in range(len(VARIANTS) + 1):
        for combo in itertools.combinations(VARIANTS, r):
            if "cb" in combo and "cbs" in combo:
                continue
            out.append(combo)
    return out


def _spec_text(variants: tuple[str, ...]) -> str:
    return "+".join(("test", *variants))


def _qkv(attn: VariantAttention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q, K, V [B, H, N, d] written out from the qkv weight rows."""
    B, N, D = x.shape
    H, d = attn.num_heads, D // attn.num_heads
    w, b = attn.qkv.weight, attn.qkv.bias
    parts = [x @ w[i * D:(i + 1) * D].T + b[i * D:(i + 1) * D] for i in range(3)]
    return tuple(p.reshape(B, N, H, d).transpose(1, 2) for p in parts)  # type: ignore[return-value]


def _attend(attn: VariantAttention, probs: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    B, H, N, d = v.shape
    z = (probs @ v).transpose(1, 2).reshape(B, N, H * d)
    return z @ attn.proj.weight.T + attn.proj.bias


def _attention(cfg: BlockConfig, dim: int = 8, heads: int = 2, grid: tuple[int, int] = (3, 3), **kw) -> VariantAttention:
    torch.manual_seed(0)
    attn = VariantAttention(dim, heads, cfg=cfg, grid_size=grid, qkv_bias=True, **kw).eval()
    with torch.no_grad():
        for p in (attn.qkv.weight, attn.qkv.bias, attn.proj.weight, attn.proj.bias):
            p.copy_(0.3 * torch.randn_like(p))
    return attn


# ------------------------------------------------------------------------------------------ CB


def test_cb_mixes_each_token_half_and_half_with_the_token_mean() -> None:
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 9.0]]])  # mean over tokens: [3, 5]
    expected = torch.tensor([[[2.0, 3.5], [3.0, 4.5], [4.0, 7.0]]])
    torch.testing.assert_close(ContextBroadcast()(x), expected)


def test_cbs_adds_lambda_times_the_token_mean() -> None:
    cbs = ScaledContextBroadcast(2)
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 9.0]]])
    torch.testing.assert_close(cbs(x), x)  # lambda = 0 at init
    with torch.no_grad():
        cbs.scale.copy_(torch.tensor([2.0, -1.0]))
    torch.testing.assert_close(cbs(x), x + torch.tensor([6.0, -5.0]))


def test_cb_is_applied_after_the_mlp_residual_of_the_chosen_blocks(images: torch.Tensor) -> None:
    plain = create_model(parse_spec("test")).eval()
    cb = create_model(parse_spec("test+cb", cb_layers=[1])).eval()
    cb.load_state_dict(plain.state_dict())
    x = plain.norm_pre(plain._pos_embed(plain.patch_embed(images)))
    with torch.no_grad():
        h = plain.blocks[0](x)[0]
        h = plain.blocks[1](h)[0]
        h = 0.5 * h + 0.5 * h.mean(dim=1, keepdim=True)
        for blk in plain.blocks[2:]:
            h = blk(h)[0]
        expected = plain.head(plain.norm(h)[:, 0])
        torch.testing.assert_close(cb(images), expected, atol=1e-6, rtol=1e-5)
    assert [type(b.cb).__name__ for b in cb.blocks] == ["Identity", "ContextBroadcast", "Identity", "Identity"]


# ------------------------------------------------------------------------------------------ GAB


def test_gab_bias_values_at_given_patch_pairs() -> None:
    gab = GaussianAttentionBias(num_heads=2, grid_size=(3, 3), sigma_init=1.0, amplitude_init=1.0)
    with torch.no_grad():
        gab.sigma.copy_(torch.tensor([1.0, 2.0]))
        gab.amplitude.copy_(torch.tensor([1.0, -0.5]))
    g = gab()
    assert g.shape == (1, 2, 10, 10)
    # patch 0 = (0, 0), patch 5 = (1, 2): d^2 = 1 + 4 = 5; tokens are patches + 1 (class token first)
    assert g[0, 0, 1, 6].item() == pytest.approx(math.exp(-5 / 2))
    assert g[0, 1, 1, 6].item() == pytest.approx(0.25 * math.exp(-5 / 8))
    assert g[0, 1, 6, 1].item() == pytest.approx(0.25 * math.exp(-5 / 8))  # symmetric
    # patch 4 = (1, 1) with itself: d = 0 -> a^2
    assert g[0, 0, 5, 5].item() == pytest.approx(1.0)
    assert g[0, 1, 5, 5].item() == pytest.approx(0.25)
    # patch 2 = (0, 2), patch 6 = (2, 0): d^2 = 8
    assert g[0, 0, 3, 7].item() == pytest.approx(math.exp(-4))
    # class-token row and column are zero
    assert torch.count_nonzero(g[0, :, 0, :]) == 0 and torch.count_nonzero(g[0, :, :, 0]) == 0


def test_gab_adds_the_bias_to_the_logits_before_softmax() -> None:
    attn = _attention(BlockConfig(index=0, gab=True), gab_sigma_init=1.5, gab_amplitude_init=0.8)
    x = torch.randn(2, 10, 8)
    q, k, v = _qkv(attn, x)
    logits = q @ k.transpose(-2, -1) / math.sqrt(4) + attn.gab()
    expected = _attend(attn, logits.softmax(-1), v)
    out, handed = attn(x)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)
    assert handed is None


# ------------------------------------------------------------------------------------------ re-attention


def test_reattn_mixes_heads_then_batchnorms_without_renormalising() -> None:
    attn = _attention(BlockConfig(index=0, reattn=True))
    theta = torch.tensor([[0.0, 1.0], [1.0, 0.5]])
    with torch.no_grad():
        attn.reattn.conv.weight.copy_(theta.view(2, 2, 1, 1))
        attn.reattn.conv.bias.copy_(torch.tensor([0.1, -0.2]))
        bn = attn.reattn.norm
        bn.weight.copy_(torch.tensor([2.0, 0.5]))
        bn.bias.copy_(torch.tensor([0.0, 1.0]))
        bn.running_mean.copy_(torch.tensor([0.3, -0.1]))
        bn.running_var.copy_(torch.tensor([4.0, 0.25]))
    x = torch.randn(2, 10, 8)
    q, k, v = _qkv(attn, x)
    a = (q @ k.transpose(-2, -1) / 2.0).softmax(-1)
    mixed = torch.einsum("gh,bhqk->bgqk", theta, a) + torch.tensor([0.1, -0.2]).view(1, 2, 1, 1)
    mean = torch.tensor([0.3, -0.1]).view(1, 2, 1, 1)
    var = torch.tensor([4.0, 0.25]).view(1, 2, 1, 1)
    normed = torch.tensor([2.0, 0.5]).view(1, 2, 1, 1) * (mixed - mean) / torch.sqrt(var + bn.eps)
    normed = normed + torch.tensor([0.0, 1.0]).view(1, 2, 1, 1)
    expected = _attend(attn, normed, v)
    torch.testing.assert_close(attn(x)[0], expected, atol=1e-5, rtol=1e-5)


def test_reattn_init_is_exactly_the_identity_in_eval_mode() -> None:
    re = ReAttention(3).eval()
    a = torch.rand(2, 3, 5, 5)
    assert torch.equal(re(a), a)


def test_reattn_fold_removes_batchnorm_and_keeps_the_output(perturb) -> None:
    re = perturb(ReAttention(3)).eval()
    a = torch.rand(2, 3, 5, 5)
    before = re(a)
    re.fold_norm()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in re.modules())
    torch.testing.assert_close(re(a), before, atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------------------------------ refiner


def test_refiner_is_residual_plus_reduce_of_depthwise_of_expand() -> None:
    ref = AttentionRefiner(num_heads=1, expand=1, kernel_size=3)
    with torch.no_grad():
        ref.expand.weight.fill_(2.0)
        ref.expand.bias.zero_()
        ref.dw.weight.fill_(1.0)
        ref.dw.bias.zero_()
        ref.reduce.weight.fill_(0.5)
        ref.reduce.bias.fill_(0.1)
    a = torch.rand(1, 1, 4, 4)
    # 3x3 box sum with zero ("same") padding, written out element by element
    padded = F.pad(a, (1, 1, 1, 1))
    box = torch.zeros_like(a)
    for i in range(4):
        for j in range(4):
            box[0, 0, i, j] = padded[0, 0, i:i + 3, j:j + 3].sum()
    torch.testing.assert_close(ref(a), a + box + 0.1)


def test_refiner_with_zero_reduction_is_the_identity() -> None:
    ref = AttentionRefiner(num_heads=3, expand=3, kernel_size=5)
    a = torch.rand(2, 3, 7, 7)
    assert torch.equal(ref(a), a)
    assert ref.expand.weight.abs().sum() > 0 and ref.dw.weight.abs().sum() > 0  # only Reduce starts at zero


def test_refiner_in_attention_uses_the_refined_map(perturb) -> None:
    attn = _attention(BlockConfig(index=0, refiner=True), refiner_expand=2, refiner_kernel=3)
    perturb(attn.refiner, scale=0.2)
    x = torch.randn(2, 10, 8)
    q, k, v = _qkv(attn, x)
    a = (q @ k.transpose(-2, -1) / 2.0).softmax(-1)
    r = attn.refiner
    refined = a + r.reduce(r.dw(r.expand(a)))
    torch.testing.assert_close(attn(x)[0], _attend(attn, refined, v), atol=1e-6, rtol=1e-5)


def test_refiner_share_blocks_refine_the_previous_refined_map(perturb) -> None:
    full = _attention(BlockConfig(index=0, refiner=True, provides_map=True, provides_refined=True))
    share = _attention(BlockConfig(index=1, attention="reuse", refiner=True))
    perturb(full.refiner, scale=0.2, seed=1)
    perturb(share.refiner, scale=0.2, seed=2)
    x0, x1 = torch.randn(2, 10, 8), torch.randn(2, 10, 8)
    _, handed = full(x0)
    q, k, _ = _qkv(full, x0)
    a0 = (q @ k.transpose(-2, -1) / 2.0).softmax(-1)
    r0 = a0 + full.refiner.reduce(full.refiner.dw(full.refiner.expand(a0)))
    torch.testing.assert_close(handed.probs, r0, atol=1e-6, rtol=1e-5)
    _, _, v1 = _qkv(share, x1)
    r1 = r0 + share.refiner.reduce(share.refiner.dw(share.refiner.expand(r0)))
    torch.testing.assert_close(share(x1, handed)[0], _attend(share, r1, v1), atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------ LaViT


def test_less_attention_block_uses_psi_t_a_theta_and_only_v() -> None:
    attn = _attention(BlockConfig(index=2, attention="reuse", lavit_transform="token"))
    n = 10
    with torch.no_grad():
        attn.lavit.theta.copy_(torch.eye(n) + 0.1 * torch.randn(n, n))
        attn.lavit.psi.copy_(torch.eye(n) + 0.1 * torch.randn(n, n))
        attn.qkv.weight[:16].fill_(float("nan"))  # Q and K rows must not be used
    prev_logits = torch.randn(2, 2, n, n)
    x = torch.randn(2, n, 8)
    out, handed = attn(x, AttentionMap(prev_logits, prev_logits.softmax(-1)))
    logits = attn.lavit.psi.T @ prev_logits @ attn.lavit.theta
    _, _, v = _qkv(attn, x)
    torch.testing.assert_close(handed.logits, logits)
    torch.testing.assert_close(out, _attend(attn, logits.softmax(-1), v), atol=1e-5, rtol=1e-5)
    assert not torch.isnan(out).any()


def _block1_logits(model: VariantViT, images: torch.Tensor) -> torch.Tensor:
    """Pre-softmax logits of block 1, recomputed by hand from the block's input."""
    x = model.norm_pre(model._pos_embed(model.patch_embed(images)))
    x = model.blocks[0](x)[0]
    attn = model.blocks[1].attn
    q, k, _ = _qkv(attn, model.blocks[1].norm1(x))
    return q @ k.transpose(-2, -1) * attn.scale


@pytest.mark.parametrize("transform", ["token", "none"])
def test_lavit_with_identity_maps_reuses_the_previous_attention_exactly(
    images: torch.Tensor, transform: str
) -> None:
    model = create_model(parse_spec("test+lavit", lavit_transform=transform)).eval()
    with torch.no_grad():
        model(images)
        expected = _block1_logits(model, images).softmax(-1)
    maps = model.lavit_attention_maps()
    assert len(maps) == 2  # blocks 2 and 3 are Less-Attention blocks
    for p in maps:
        torch.testing.assert_close(p, expected, atol=1e-6, rtol=1e-5)


def test_lavit_token_maps_transform_the_previous_logits(images: torch.Tensor) -> None:
    model = create_model(parse_spec("test+lavit")).eval()
    n = model.num_tokens
    perm = torch.eye(n)[torch.randperm(n, generator=torch.Generator().manual_seed(0))]
    with torch.no_grad():
        model.blocks[2].attn.lavit.theta.copy_(perm)
        model.blocks[2].attn.lavit.psi.copy_(perm)
        model(images)
        a1 = _block1_logits(model, images)
    a2 = perm.T @ a1 @ perm
    maps = model.lavit_attention_maps()
    torch.testing.assert_close(maps[0], a2.softmax(-1), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(maps[1], a2.softmax(-1), atol=1e-6, rtol=1e-5)  # block 3 has identity maps


def test_diagonality_loss_on_hand_checked_maps() -> None:
    eye = torch.eye(3).expand(1, 2, 3, 3)
    assert diagonality_loss([eye]).item() == 0.0
    assert diagonality_loss([torch.full((1, 1, 4, 4), 0.25)]).item() == pytest.approx(0.0)
    swap = torch.tensor([[[[0.0, 1.0], [1.0, 0.0]]]])
    assert diagonality_loss([swap]).item() == pytest.approx(1.0)  # symmetric, never attends to itself
    lop = torch.tensor([[[[0.5, 0.5], [1.0, 0.0]]]])
    # symmetry mean|P - P^T| = (0.5 + 0.5) / 4; diagonal: rows 0 -> 0, 1 -> 1, mean 0.5
    assert diagonality_loss([lop]).item() == pytest.approx(0.75)
    assert diagonality_loss([swap, lop]).item() == pytest.approx(0.875)
    assert diagonality_loss([]).item() == 0.0


def test_auxiliary_loss_is_weighted_diagonality_of_the_less_attention_maps(images: torch.Tensor) -> None:
    model = create_model(parse_spec("test+lavit", lavit_loss_weight=0.3)).train()
    model(images)
    loss = model.auxiliary_loss()
    assert loss.item() == pytest.approx(0.3 * diagonality_loss(model.lavit_attention_maps()).item())
    assert loss.item() > 0
    loss.backward()
    assert model.blocks[0].attn.qkv.weight.grad is not None
    plain = create_model(parse_spec("test+cb")).train()
    plain(images)
    assert plain.auxiliary_loss().item() == 0.0 and plain.lavit_attention_maps() == []


# ------------------------------------------------------------------------------------------ whole models


@pytest.mark.parametrize(
    ("text", "options"),
    [
        ("test+cbs", {}),
        ("test+gab", {"gab_amplitude_init": 0.0}),
        ("test+reattn", {}),
        ("test+refiner", {}),
        ("test+cbs+gab+reattn+refiner", {"gab_amplitude_init": 0.0}),
    ],
)
def test_function_preserving_variants_equal_vanilla_with_its_weights(
    images: torch.Tensor, text: str, options: dict, perturb
) -> None:
    vanilla = perturb(create_model(parse_spec("test"))).eval()
    model = create_model(parse_spec(text, **options), seed=1).eval()
    result = model.load_state_dict(vanilla.state_dict(), strict=False)
    new = {k for k in model.variant_state_keys() if not k.endswith("num_batches_tracked")}  # torch omits those
    assert not result.unexpected_keys and set(result.missing_keys) == new
    with torch.no_grad():
        torch.testing.assert_close(model(images), vanilla(images), atol=1e-6, rtol=1e-5)


def test_shared_parameter_names_are_timms() -> None:
    import timm

    reference = set(timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10,
                                      img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2).state_dict())
    model = create_model(parse_spec("test+cbs+gab+reattn+refiner"))
    keys = set(model.state_dict())
    assert keys - set(model.variant_state_keys()) == reference
    assert all(k.startswith("blocks.") for k in model.variant_state_keys())


@pytest.mark.parametrize("variants", _valid_variant_sets(), ids=lambda v: "+".join(v) or "vanilla")
def test_every_variant_combination_builds_trains_and_folds(
    images: torch.Tensor, variants: tuple[str, ...], perturb
) -> None:
    spec = parse_spec(_spec_text(variants))
    model = perturb(create_model(spec))
    model.train()
    logits = model(images)
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    (logits.square().mean() + model.auxiliary_loss()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)

    model.eval()
    folded = fold_for_inference(model)
    assert not folded.training
    assert not any(isinstance(m, (nn.BatchNorm2d, GaussianAttentionBias)) for m in folded.modules())
    with torch.no_grad():
        expected = model(images)
        torch.testing.assert_close(folded(images), expected, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(expected).all()


def test_fold_precomputes_one_bias_buffer_per_block_and_leaves_the_original(
    images: torch.Tensor, perturb
) -> None:
    model = perturb(create_model(parse_spec("test+gab+reattn"))).eval()
    folded = fold_for_inference(model)
    biases = [m for m in folded.modules() if isinstance(m, FoldedAttentionBias)]
    assert len(biases) == 4 and all(b.bias.shape == (1, 2, 17, 17) for b in biases)
    torch.testing.assert_close(biases[1].bias, model.blocks[1].attn.gab().detach())
    assert isinstance(model.blocks[0].attn.gab, GaussianAttentionBias)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("text", ["test", "test+cb", "test+gab", "test+cbs+gab"])
def test_fused_and_math_attention_agree(images: torch.Tensor, text: str, perturb) -> None:
    spec = parse_spec(text)
    math_model = perturb(create_model(spec, fused_attn=False)).eval()
    fused = perturb(create_model(spec, fused_attn=True)).eval()
    assert all(torch.equal(a, b) for a, b in zip(math_model.state_dict().values(), fused.state_dict().values()))
    with torch.no_grad():
        torch.testing.assert_close(fused(images), math_model(images), atol=1e-5, rtol=1e-5)


def test_create_model_is_seeded_and_leaves_the_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    a = create_model(parse_spec("test+gab"), seed=3)
    b = create_model(parse_spec("test+gab"), seed=3)
    c = create_model(parse_spec("test+gab"), seed=4)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.blocks[0].attn.qkv.weight, c.blocks[0].attn.qkv.weight)


def test_num_classes_override_and_no_weight_decay() -> None:
    model = create_model(parse_spec("test+cbs+gab"), num_classes=3)
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 3)
    nwd = model.no_weight_decay()
    assert {"pos_embed", "cls_token", "blocks.0.attn.gab.sigma", "blocks.3.attn.gab.amplitude",
            "blocks.2.cb.scale"} <= nwd

"""Each variant against its VARIANTS.md formula, identity-init equivalence, composability and folding."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from export.fold import fold_for_inference
from export.models import VariantViT, create_model
from export.models.cb import ContextBroadcast, ScaledContextBroadcast
from export.models.gab import FoldedAttentionBias, GaussianAttentionBias
from export.models.lavit import diagonality_loss
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


def _attention(cfg: BlockConfig, dim: int = 8, heads: int = 2, grid: tuple[int, int] = (3, 3),
               **kw) -> VariantAttention:
    torch.manual_seed(0)
    attn = VariantAttention(dim, heads, cfg=cfg, grid_size=grid, qkv_bias=True, **kw).eval()
    with torch.no_grad():
        qkv = attn.v if cfg.attention == "reuse" else attn.qkv
        for p in (qkv.weight, qkv.bias, attn.proj.weight, attn.proj.bias):
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
    attn = _attention(BlockConfig(index=0, variants=frozenset({"gab"})), gab_sigma_init=1.5, gab_amplitude_init=0.8)
    x = torch.randn(2, 10, 8)
    q, k, v = _qkv(attn, x)
    logits = q @ k.transpose(-2, -1) / math.sqrt(4) + attn.gab()
    expected = _attend(attn, logits.softmax(-1), v)
    out, handed = attn(x)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)
    assert handed is None


# ------------------------------------------------------------------------------------------ re-attention


def test_reattn_mixes_heads_then_batchnorms_without_renormalising() -> None:
    attn = _attention(BlockConfig(index=0, variants=frozenset({"reattn"})))
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


def _bn(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    """Eval-mode BatchNorm written out: gamma (x - mu) / sqrt(var + eps) + beta per channel."""
    shape = (1, -1, 1, 1)
    return (bn.weight.view(shape) * (x - bn.running_mean.view(shape)) / torch.sqrt(bn.running_var.view(shape) + bn.eps)
            + bn.bias.view(shape))


def _dla_reference(r: AttentionRefiner, a: torch.Tensor) -> torch.Tensor:
    """The authors' DLA + adapt_bn, written out: BN_H(A + BN3(Reduce(ReLU6(BN2(DW(ReLU6(BN1(Expand A))))))))."""
    h = torch.einsum("oc,bcij->boij", r.expand.weight[:, :, 0, 0], a)
    h = _bn(h, r.bn1).clamp(0.0, 6.0)
    h = F.conv2d(h, r.dw.weight, padding=r.dw.kernel_size[0] // 2, groups=h.shape[1])
    h = _bn(h, r.bn2).clamp(0.0, 6.0)
    h = _bn(torch.einsum("oc,bcij->boij", r.reduce.weight[:, :, 0, 0], h), r.bn3)
    return _bn(a + h, r.norm) * r.out_scale


def _randomised_refiner(heads: int = 2, expand: int = 3, kernel: int = 3, out_scale: float = 1.0) -> AttentionRefiner:
    """A refiner away from its init (weights, gammas, betas and statistics), so both ReLU6 bounds bite."""
    torch.manual_seed(3)
    ref = AttentionRefiner(heads, expand, kernel, out_scale)
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for conv in (ref.expand, ref.dw, ref.reduce):
            conv.weight.copy_(3.0 * torch.randn(conv.weight.shape, generator=gen))
        for bn in (ref.bn1, ref.bn2, ref.bn3, ref.norm):
            bn.weight.copy_(1.0 + 2.0 * torch.rand(bn.weight.shape, generator=gen))
            bn.bias.copy_(torch.randn(bn.bias.shape, generator=gen))
            bn.running_mean.copy_(0.2 * torch.randn(bn.running_mean.shape, generator=gen))
            bn.running_var.copy_(0.05 + torch.rand(bn.running_var.shape, generator=gen))
    return ref.eval()


def _maps(*shape: int, seed: int = 0) -> torch.Tensor:
    """Attention maps: rows are softmax distributions."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).mul(2.0).softmax(-1)


def test_refiner_is_the_authors_dla_with_relu6_batchnorms_and_head_bn() -> None:
    ref = _randomised_refiner(out_scale=0.5)
    a = _maps(2, 2, 9, 9)
    with torch.no_grad():
        h = F.relu6(ref.bn1(ref.expand(a)))
        assert (h == 0).any() and (h == 6).any()  # both bounds of ReLU6 are exercised
        torch.testing.assert_close(ref(a), _dla_reference(ref, a), atol=1e-5, rtol=1e-5)
    assert ref.expand.bias is None and ref.dw.bias is None and ref.reduce.bias is None  # the BNs carry it
    assert ref.dw.groups == 6 and ref.dw.kernel_size == (3, 3)


def test_a_randomised_refiner_is_not_a_linear_filter() -> None:
    """Any single (affine) convolution obeys superposition, R(a) + R(b) = R(a + b) + R(0); the DLA does not.

    Without the nonlinearities (the earlier refiner) this held to float rounding."""
    ref = _randomised_refiner()
    a, b = _maps(4, 2, 9, 9, seed=1), _maps(4, 2, 9, 9, seed=2)
    with torch.no_grad():
        violation = ref(a) + ref(b) - ref(a + b) - ref(torch.zeros_like(a))
        scale = ref(a).abs().mean()
    assert violation.abs().mean() > 0.05 * scale


def test_refiner_converted_start_is_the_identity_in_eval_and_train_mode() -> None:
    ref = _randomised_refiner(out_scale=0.25)
    ref.reset_function_preserving()
    a = _maps(3, 2, 9, 9)
    for train in (False, True):
        ref.train(train)
        torch.testing.assert_close(ref(a), a, atol=1e-6, rtol=0)
    assert ref.bn3.weight.eq(0).all() and all(bn.frozen_stats for bn in (ref.bn1, ref.bn2, ref.bn3, ref.norm))
    ref(a).sum().backward()  # the zero gamma of BN3 is not stuck: it has a gradient at once
    assert ref.bn3.weight.grad.abs().sum() > 0


def test_refiner_from_scratch_uses_batch_statistics() -> None:
    """Trained from scratch (the authors' setting) every BN normalises with its batch statistics."""
    torch.manual_seed(0)
    ref = AttentionRefiner(2).train()
    a = _maps(4, 2, 9, 9)
    out = ref(a)
    assert not ref.norm.frozen_stats
    per_head = out.transpose(0, 1).reshape(2, -1)
    torch.testing.assert_close(per_head.mean(1), torch.zeros(2), atol=1e-5, rtol=0)  # BN_H's output
    assert ref.norm.num_batches_tracked.item() == 1


def test_refiner_fold_leaves_convs_with_biases_and_a_head_affine() -> None:
    ref = _randomised_refiner(out_scale=0.5)
    a = _maps(2, 2, 9, 9)
    with torch.no_grad():
        expected = ref(a)
        ref.fold()
        assert not any(isinstance(m, nn.BatchNorm2d) for m in ref.modules())
        assert all(c.bias is not None for c in (ref.expand, ref.dw, ref.reduce))
        torch.testing.assert_close(ref(a), expected, atol=1e-5, rtol=1e-4)


def test_refiner_in_attention_uses_the_refined_map() -> None:
    attn = _attention(BlockConfig(index=0, variants=frozenset({"refiner"})), refiner_expand=2, refiner_kernel=3)
    attn.refiner = _randomised_refiner(expand=2)
    x = torch.randn(2, 10, 8, generator=torch.Generator().manual_seed(5))
    q, k, v = _qkv(attn, x)
    a = (q @ k.transpose(-2, -1) / 2.0).softmax(-1)
    with torch.no_grad():
        want = _attend(attn, _dla_reference(attn.refiner, a), v)
        # the randomised refiner amplifies (outputs in the hundreds), and the two orders of summation differ by
        # rounding: float32's epsilon times the output's scale, times the terms summed along the way (a
        # few dozen); a wrong map is off by the output's own scale
        atol = 64 * torch.finfo(torch.float32).eps * want.abs().max().item()
        torch.testing.assert_close(attn(x)[0], want, atol=atol, rtol=0.0)


def _v(attn: VariantAttention, x: torch.Tensor) -> torch.Tensor:
    """V [B, H, N, d] of a V-only block, from its own [D, D] projection."""
    B, N, D = x.shape
    return (x @ attn.v.weight.T + attn.v.bias).reshape(B, N, attn.num_heads, D // attn.num_heads).transpose(1, 2)


def test_refiner_share_is_the_authors_refined_attention_with_shared_maps() -> None:
    """Attention blocks add s * the handed map to their softmax and hand the sum on unrefined; sharing
    blocks carry only V, use BN_H(DLA(map)) * s and hand on the map they received."""
    model = create_model(parse_spec("test+refiner", refiner_share=True)).eval()
    for blk in model.blocks[1::2]:
        blk.attn.refiner = _randomised_refiner(out_scale=blk.attn.scale)
    s = model.blocks[0].attn.scale
    assert s == 16 ** -0.5
    assert [hasattr(b.attn, "qkv") for b in model.blocks] == [True, False, True, False]
    assert [b.attn.refiner is not None for b in model.blocks] == [False, True, False, True]
    x = torch.randn(2, 17, 32)
    with torch.no_grad():
        a0 = (lambda q, k: (q @ k.transpose(-2, -1) * s).softmax(-1))(*_qkv(model.blocks[0].attn, x)[:2])
        out0, handed0 = model.blocks[0].attn(x)
        torch.testing.assert_close(handed0.probs, a0)
        out1, handed1 = model.blocks[1].attn(x, handed0)
        used1 = _dla_reference(model.blocks[1].attn.refiner, a0)
        torch.testing.assert_close(out1, _attend(model.blocks[1].attn, used1, _v(model.blocks[1].attn, x)),
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(handed1.probs, a0)  # handed on unrefined
        q2, k2, v2 = _qkv(model.blocks[2].attn, x)
        a2 = (q2 @ k2.transpose(-2, -1) * s).softmax(-1) + s * a0
        out2, handed2 = model.blocks[2].attn(x, handed1)
        torch.testing.assert_close(out2, _attend(model.blocks[2].attn, a2, v2), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(handed2.probs, a2)


# ------------------------------------------------------------------------------------------ LaViT


def test_less_attention_block_uses_psi_t_a_theta_and_only_v() -> None:
    attn = _attention(BlockConfig(index=2, attention="reuse", variants=frozenset({"lavit"})))
    n = 10
    assert not hasattr(attn, "qkv") and attn.v.weight.shape == (8, 8)  # only a V projection: no Q/K rows
    with torch.no_grad():
        attn.lavit.theta.copy_(torch.eye(n) + 0.1 * torch.randn(n, n))
        attn.lavit.psi.copy_(torch.eye(n) + 0.1 * torch.randn(n, n))
        attn.v.bias.copy_(0.3 * torch.randn(8))
    prev_logits = torch.randn(2, 2, n, n)
    x = torch.randn(2, n, 8)
    out, handed = attn(x, AttentionMap(prev_logits, prev_logits.softmax(-1)))
    logits = attn.lavit.psi.T @ prev_logits @ attn.lavit.theta
    v = _v(attn, x)
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


def test_lavit_with_identity_maps_reuses_the_previous_attention_exactly(images: torch.Tensor) -> None:
    model = create_model(parse_spec("test+lavit")).eval()
    with torch.no_grad():
        model(images)
        expected = _block1_logits(model, images).softmax(-1)
    maps = model.transformed_attention_maps()
    assert len(maps) == 1  # block 2 is a Less-Attention block; the last block (3) computes full attention
    for p in maps:
        torch.testing.assert_close(p, expected, atol=1e-6, rtol=1e-5)


def test_lavit_none_reuses_the_softmax_and_has_no_diagonality_loss(images: torch.Tensor) -> None:
    """`none` transforms nothing: blocks 2 and 3 use block 1's softmax as is, and there is no transformed
    map for the loss to regularise (VARIANTS.md 2; the decision is in export.spec)."""
    model = create_model(parse_spec("test+lavit", lavit_transform="none")).train()
    x = model.norm_pre(model._pos_embed(model.patch_embed(images)))
    with torch.no_grad():
        x, handed = model.blocks[0](x)
        x, handed = model.blocks[1](x, handed)
        expected = _block1_logits(model, images).softmax(-1)
        torch.testing.assert_close(handed.probs, expected, atol=1e-6, rtol=1e-5)
        y = model.blocks[2].norm1(x)
        out, handed2 = model.blocks[2].attn(y, handed)
        torch.testing.assert_close(out, _attend(model.blocks[2].attn, expected, _v(model.blocks[2].attn, y)),
                                   atol=1e-5, rtol=1e-5)
        assert handed2 is handed
    model(images)
    assert model.transformed_attention_maps() == [] and model.auxiliary_loss().item() == 0.0


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
    maps = model.transformed_attention_maps()
    assert len(maps) == 1  # (the last block computes full attention under `token`)
    torch.testing.assert_close(maps[0], a2.softmax(-1), atol=1e-6, rtol=1e-5)


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
    assert loss.item() == pytest.approx(0.3 * diagonality_loss(model.transformed_attention_maps()).item())
    assert loss.item() > 0
    loss.backward()
    assert model.blocks[0].attn.qkv.weight.grad is not None
    plain = create_model(parse_spec("test+cb")).train()
    plain(images)
    assert plain.auxiliary_loss().item() == 0.0 and plain.transformed_attention_maps() == []


# ------------------------------------------------------------------------------------------ whole models


@pytest.mark.parametrize(
    "text", ["test+cbs", "test+gab", "test+reattn", "test+refiner", "test+cbs+gab+reattn+refiner"]
)
def test_converted_start_equals_vanilla_in_eval_and_train_mode(images: torch.Tensor, text: str, perturb) -> None:
    """The vanilla weights plus each new module's converted start (`reset_function_preserving`, what
    checkpoint import runs) give the vanilla logits, in eval mode and in train mode (dropout is off)."""
    vanilla = perturb(create_model(parse_spec("test"))).eval()
    model = create_model(parse_spec(text), seed=1)
    result = model.load_state_dict(vanilla.state_dict(), strict=False)
    new = {k for k in model.variant_state_keys() if not k.endswith("num_batches_tracked")}  # torch omits those
    assert not result.unexpected_keys and set(result.missing_keys) == new
    for module in model.modules():
        if hasattr(module, "reset_function_preserving"):
            module.reset_function_preserving()
    with torch.no_grad():
        expected = vanilla(images)
        for train in (False, True):
            torch.testing.assert_close(model.train(train)(images), expected, atol=1e-5, rtol=0)


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
    assert len(biases) == 3 and all(b.bias.shape == (1, 2, 17, 17) for b in biases)  # blocks 0-2
    torch.testing.assert_close(biases[1].bias, model.blocks[1].attn.gab().detach())
    assert isinstance(model.blocks[0].attn.gab, GaussianAttentionBias)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("text", ["test", "test+cb", "test+gab", "test+cbs+gab"])
def test_fused_and_math_attention_agree(images: torch.Tensor, text: str, perturb) -> None:
    spec = parse_spec(text)
    math_model = perturb(create_model(spec, fused_attn=False)).eval()
    fused = perturb(create_model(spec, fused_attn=True)).eval()
    assert all(torch.equal(a, b) for a, b in zip(math_model.state_dict().values(), fused.state_dict().values(),
                                                 strict=True))
    with torch.no_grad():
        torch.testing.assert_close(fused(images), math_model(images), atol=1e-5, rtol=1e-5)


def test_create_model_is_seeded_and_leaves_the_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    a = create_model(parse_spec("test+gab"), seed=3)
    b = create_model(parse_spec("test+gab"), seed=3)
    c = create_model(parse_spec("test+gab"), seed=4)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert not torch.equal(a.blocks[0].attn.qkv.weight, c.blocks[0].attn.qkv.weight)


def test_num_classes_override_and_no_weight_decay() -> None:
    model = create_model(parse_spec("test+cbs+gab"), num_classes=3)
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 3)
    nwd = model.no_weight_decay()
    assert {"pos_embed", "cls_token", "blocks.0.attn.gab.sigma", "blocks.2.attn.gab.amplitude",
            "blocks.2.cb.scale"} <= nwd

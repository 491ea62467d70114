"""Re-calibrating converted BatchNorms (issue 28, `--norm-statistics update`): their running statistics move to
what their inputs really have while every BN, and so the model, computes the same eval-mode function."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from export.finetune import release_norm_statistics
from export.models.norms import AttentionBatchNorm, recalibrate_statistics


def _converted(spec: str, tmp_path: Path, seed: int = 3) -> torch.nn.Module:
    """`spec` converted from a seeded vanilla `test` model (frozen statistics, function-preserving start)."""
    from export.checkpoint import load_checkpoint
    from export.models import create_model
    from export.spec import parse_spec

    checkpoint = tmp_path / "test.pth"
    torch.save(create_model(parse_spec("test"), seed=seed).state_dict(), checkpoint)
    model = create_model(parse_spec(spec), seed=0)
    load_checkpoint(model, checkpoint)
    return model


def _batches(n: int, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 3, 32, 32, generator=gen) for _ in range(n)]


@pytest.mark.parametrize("spec", ["test+reattn", "test+refiner", "test+reattn+refiner"])
def test_recalibration_keeps_the_eval_logits_and_moves_the_statistics(spec: str, perturb, tmp_path: Path) -> None:
    model = perturb(_converted(spec, tmp_path), scale=0.05)  # non-trivial gammas, betas and statistics in every BN
    norms = [m for m in model.modules() if isinstance(m, AttentionBatchNorm)]
    assert norms and all(m.frozen_stats for m in norms)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(11))
    model.train()
    with torch.no_grad():
        before = model.eval()(x)
    old_var = [m.running_var.clone() for m in norms]
    model.train()
    assert recalibrate_statistics(model, norms, _batches(3)) == 3
    assert model.training and all(m.training for m in model.modules())  # training flags restored
    with torch.no_grad():
        after = model.eval()(x)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
    moved = [float((m.running_var - v).abs().max()) for m, v in zip(norms, old_var, strict=True)]
    assert min(moved) > 1e-3, moved  # every BN's statistics are its inputs' now, not the converted constants


def test_recalibrated_statistics_are_the_inputs_pooled_mean_and_variance(tmp_path: Path) -> None:
    model = _converted("test+reattn", tmp_path)
    norm = next(m for m in model.modules() if isinstance(m, AttentionBatchNorm))
    seen: list[torch.Tensor] = []
    handle = norm.register_forward_pre_hook(lambda _m, inputs: seen.append(inputs[0].detach()))
    batches = _batches(2)
    recalibrate_statistics(model, [norm], batches)
    handle.remove()
    x = torch.cat(seen).transpose(0, 1).flatten(1).double()  # [C, everything]
    torch.testing.assert_close(norm.running_mean, x.mean(1).float())
    torch.testing.assert_close(norm.running_var, x.var(1).float())


def test_a_released_batch_norm_normalises_with_batch_statistics(tmp_path: Path) -> None:
    """After the release a converted BN is the authors' operator in train mode: it normalises with the batch's
    statistics (and updates its running ones), instead of being the frozen per-channel affine map."""
    from dataclasses import replace

    from export.finetune import FitConfig

    model = _converted("test+reattn", tmp_path)
    norm = next(m for m in model.modules() if isinstance(m, AttentionBatchNorm))

    class _Data:  # a map-style dataset of (image, label)
        def __len__(self) -> int:
            return 16

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            return torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(i)), i % 10

    config = replace(FitConfig(batch_size=4), freeze_norm_stats=True, norm_statistics="update")
    model.train()
    released = release_norm_statistics(model, _Data(), config)  # type: ignore[arg-type]
    assert norm in released and not any(m.frozen_stats for m in released) and norm.training
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    handle = norm.register_forward_hook(lambda _m, inputs, out: seen.append((inputs[0].detach(), out.detach())))
    running = norm.running_var.clone()
    with torch.no_grad():
        model(torch.stack([_Data()[i][0] for i in range(4)]))
    handle.remove()
    x, out = seen[0]
    expected = torch.nn.functional.batch_norm(x, None, None, norm.weight, norm.bias, True, 0.0, norm.eps)
    torch.testing.assert_close(out, expected)
    assert not torch.equal(norm.running_var, running)  # and its running statistics follow the batches

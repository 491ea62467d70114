"""A converted GAB learns its bias (issue 28): `vitserve-export finetune` with the default recipe, from a trained
vanilla demo, leaves the Gaussian bias moving the attention logits by more than 1e-2, and at the converted start
every head's amplitude gets a task-loss gradient above AdamW's eps."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from small_digits import digits_folder  # type: ignore[import-not-found]  (a module of this folder)

from export.cli import main

ADAMW_EPS = 1e-8


@pytest.fixture(scope="session")
def vanilla_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(digits folder, checkpoint of a vanilla demo trained on it for a few epochs of the demo recipe)."""
    from export.data import load_image_folder
    from export.finetune import save_weights, train_spec
    from export.train import DEMO_CONFIG

    root = tmp_path_factory.mktemp("gab-finetune")
    data_dir = digits_folder(root / "digits", 640, 128)
    trained = train_spec("demo", load_image_folder(data_dir), replace(DEMO_CONFIG, epochs=8, device="cpu"),
                         progress=False)
    return data_dir, save_weights(trained.model, root / "demo.pth")


def test_every_heads_amplitude_gets_a_gradient_above_adamw_eps_at_the_converted_start(vanilla_demo) -> None:
    import torch
    import torch.nn.functional as F

    from export.data import load_image_folder
    from export.finetune import make_model
    from export.presets import get_preset
    from export.spec import parse_spec
    from export.train import digits_split, pixel_values

    model, start = make_model(parse_spec("demo+gab"), 10, vanilla_demo[1], seed=0)
    assert "function-preserving" in start and load_image_folder(vanilla_demo[0]).classes
    split = digits_split()
    x = torch.from_numpy(pixel_values(split.train_images[:64], get_preset("demo").data))
    F.cross_entropy(model.train()(x), torch.from_numpy(split.train_labels[:64])).backward()
    gabs = [b.attn.gab for b in model.blocks if b.attn.gab is not None]
    assert gabs and all(g.is_linear and g.amplitude.eq(0).all() for g in gabs)
    grads = torch.cat([g.amplitude.grad.abs() for g in gabs])
    assert (grads > ADAMW_EPS).all(), grads
    print(f"converted demo+gab: |dL/da| per head from {grads.min():.2e} to {grads.max():.2e}")


def test_the_default_finetune_leaves_a_material_gaussian_bias(vanilla_demo, tmp_path: Path) -> None:
    import torch

    from export.models import create_model
    from export.spec import parse_spec
    from service.manifest import Manifest

    data_dir, checkpoint = vanilla_demo
    assert main(["finetune", "demo+gab", "--data", str(data_dir), "--checkpoint", str(checkpoint), "--device", "cpu",
                 "-r", str(tmp_path / "repo"), "--save-weights", str(tmp_path / "w"), "-q"]) == 0
    model = create_model(parse_spec("demo+gab"))
    model.load_state_dict(torch.load(tmp_path / "w" / "demo-gab.pth", weights_only=True))
    with torch.no_grad():
        biases = [b.attn.gab() for b in model.blocks if b.attn.gab is not None]
    contribution = max(float(g.abs().max()) for g in biases)  # the most the bias moves any attention logit
    sigmas = torch.cat([b.attn.gab.sigma for b in model.blocks if b.attn.gab is not None])
    print(f"demo+gab after the default fine-tune: max |G| = {contribution:.3f}, "
          f"sigma in [{float(sigmas.min()):.2f}, {float(sigmas.max()):.2f}]")
    assert contribution > 1e-2
    manifest = Manifest.load(tmp_path / "repo" / "demo-gab")
    assert manifest.evaluation is not None and manifest.evaluation.recipe is not None
    assert manifest.evaluation.recipe.start.startswith("checkpoint:demo.pth")

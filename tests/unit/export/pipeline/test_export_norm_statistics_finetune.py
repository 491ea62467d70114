"""`vitserve-export finetune --norm-statistics` (issue 28): a converted re-attention / Refiner keeps its BatchNorm
statistics frozen by default, and with `update` they are released after the warm-up (re-calibrated, then batch
statistics): the manifest says which, and the trained weights show it. A resumed run releases them as an
uninterrupted run does."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from small_digits import digits_folder  # type: ignore[import-not-found]  (a module of this folder)

from export.cli import main
from service.manifest import Manifest

#: a converted BatchNorm's frozen variance (`AttentionBatchNorm.set_identity`: 1 - eps)
CONVERTED_VAR = 1.0 - 1e-5


@pytest.fixture(scope="module")
def digits_and_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    import torch

    from export.models import create_model
    from export.spec import parse_spec

    root = tmp_path_factory.mktemp("norm-statistics")
    checkpoint = root / "test.pth"
    torch.save(create_model(parse_spec("test"), seed=3).state_dict(), checkpoint)
    return digits_folder(root / "digits", 40, 40), checkpoint


def _running_vars(weights: Path) -> list[float]:
    import torch

    state = torch.load(weights, weights_only=True)
    return [float(v) for k, t in state.items() if k.endswith("running_var") for v in t.flatten()]


#: what each mode does with (re-attention's, the Refiner's) converted BatchNorms: `auto` (the default) takes each
#: variant's own (VariantDef.norm_statistics: the Refiner releases them, re-attention keeps them)
RELEASED = {"frozen": {"test-reattn": False, "test-refiner": False},
            "update": {"test-reattn": True, "test-refiner": True},
            "auto": {"test-reattn": False, "test-refiner": True}}


@pytest.mark.parametrize("mode", ["frozen", "update", "auto"])
def test_the_manifest_and_the_weights_show_the_norm_statistics(digits_and_checkpoint, tmp_path: Path,
                                                                 mode: str) -> None:
    data, checkpoint = digits_and_checkpoint
    argv = ["finetune", "test", "test+reattn", "test+refiner", "--data", str(data), "--checkpoint", str(checkpoint),
            "-r", str(tmp_path / "repo"), "--save-weights", str(tmp_path / "w"), "--device", "cpu",
            "--epochs", "2", "--batch-size", "8", "--warmup-epochs", "0.4", "--max-steps", "4",
            "--augment", "none", "--threads", "1", *(["--norm-statistics", mode] if mode != "auto" else []), "-q"]
    assert main(argv) == 0
    vanilla = Manifest.load(tmp_path / "repo" / "test").evaluation
    assert vanilla is not None and vanilla.recipe is not None
    assert vanilla.recipe.norm_statistics == "frozen"  # no converted BatchNorm to release
    for name, released in RELEASED[mode].items():
        evaluation = Manifest.load(tmp_path / "repo" / name).evaluation
        assert evaluation is not None and evaluation.recipe is not None
        assert evaluation.recipe.norm_statistics == ("batch-after-warmup" if released else "frozen")
        variances = _running_vars(tmp_path / "w" / f"{name}.pth")
        assert variances
        if not released:
            assert all(v == pytest.approx(CONVERTED_VAR, abs=1e-7) for v in variances)
        else:  # re-calibrated on the training batches, then updated by each step's batch statistics
            assert all(abs(v - CONVERTED_VAR) > 1e-3 for v in variances), variances


def test_a_run_that_ends_before_the_warmup_reports_frozen_statistics(digits_and_checkpoint, tmp_path: Path) -> None:
    data, checkpoint = digits_and_checkpoint
    assert main(["finetune", "test+reattn", "--data", str(data), "--checkpoint", str(checkpoint),
                 "-r", str(tmp_path / "repo"), "--device", "cpu", "--epochs", "2", "--batch-size", "8",
                 "--max-steps", "2", "--augment", "none", "--threads", "1", "--norm-statistics", "update", "-q"]) == 0
    evaluation = Manifest.load(tmp_path / "repo" / "test-reattn").evaluation
    assert evaluation is not None and evaluation.recipe is not None
    assert evaluation.recipe.norm_statistics == "frozen"  # warm-up = 1 epoch = 5 steps: never released


def test_a_resumed_update_run_trains_what_an_uninterrupted_one_does(digits_and_checkpoint, tmp_path: Path) -> None:
    import torch

    from export.data import SampleDataset, load_image_folder, train_transform
    from export.finetune import FitConfig, _identity, _spec_config, fit, make_model
    from export.presets import get_preset
    from export.spec import parse_spec

    data_dir, checkpoint = digits_and_checkpoint
    data = load_image_folder(data_dir)
    spec = parse_spec("test+refiner")
    config = _spec_config(FitConfig(epochs=3, batch_size=8, warmup_epochs=0.4, augmentation="none", device="cpu",
                                    norm_statistics="update"), checkpoint, spec)
    dataset = SampleDataset(data.train, train_transform(get_preset("test").data, "none"))

    def run(state: Path, max_steps: int | None = None) -> tuple[torch.nn.Module, int | None]:
        model, start = make_model(spec, len(data.classes), checkpoint, config.seed)
        result = fit(model, dataset, replace(config, max_steps=max_steps), state_file=state,
                     identity=_identity(spec, data, config, start), progress=False)
        return model, result.norm_statistics_released_at

    straight, released = run(tmp_path / "a.pt")
    assert released == 2  # round(0.4 x 5 steps per epoch)
    run(tmp_path / "b.pt", max_steps=10)  # two whole epochs saved, then "killed"
    resumed, released_again = run(tmp_path / "b.pt")
    assert released_again == 2
    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

"""Demo training data and the committed demo repository (models/demo): held-out accuracy through
ONNX Runtime on the 397 held-out digits (through the service's preprocessing of the PNG files for
manifests that record their dataset identity; older manifests were measured on `pixel_values`)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from export.data import load_image_folder
from export.evaluate import evaluate_onnx
from export.presets import get_preset
from export.train import (
    DATASET,
    DEMO_SPECS,
    NUM_TRAIN,
    digit_png,
    digits_split,
    onnx_accuracy,
    pixel_values,
    write_digits_folder,
)
from service.manifest import Manifest, sha256_file

DEMO_REPOSITORY = Path(__file__).resolve().parents[4] / "models" / "demo"
MIN_ACCURACY = 0.95


def test_digits_split_is_sklearn_order_first_1400_then_397():
    from sklearn.datasets import load_digits

    split = digits_split()
    digits = load_digits()
    assert split.train_images.shape == (NUM_TRAIN, 8, 8) and split.test_images.shape == (397, 8, 8)
    assert split.train_images.dtype == np.uint8 and split.test_images.max() == 255
    np.testing.assert_array_equal(split.train_labels, digits.target[:1400])
    np.testing.assert_array_equal(split.test_labels, digits.target[1400:])
    np.testing.assert_array_equal(split.test_images, np.rint(digits.images[1400:] * 255 / 16).astype(np.uint8))


def test_pixel_values_scale_normalise_and_replicate_to_rgb():
    data = get_preset("demo").data
    images = np.zeros((2, 8, 8), np.uint8)
    images[1] = 255
    x = pixel_values(images, data)
    assert x.shape == (2, 3, 32, 32) and x.dtype == np.float32
    np.testing.assert_allclose(x[0], (0.0 - 0.5) / 0.5)
    np.testing.assert_allclose(x[1], (1.0 - 0.5) / 0.5)
    digit = digits_split().test_images[:1]
    y = pixel_values(digit, data)[0]
    np.testing.assert_array_equal(y[0], y[1])
    np.testing.assert_array_equal(y[0], y[2])


def test_digit_png_decodes_to_the_same_pixels():
    image = digits_split().test_images[5]
    decoded = np.asarray(Image.open(io.BytesIO(digit_png(image))))
    np.testing.assert_array_equal(decoded, image)


def _demo_names() -> list[str]:
    from export.spec import parse_spec

    return [parse_spec(s).name for s in DEMO_SPECS]


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory: pytest.TempPathFactory):
    return load_image_folder(write_digits_folder(tmp_path_factory.mktemp("digits") / DATASET), name=DATASET)


def _measured(model_dir: Path, manifest: Manifest, digits_folder) -> float:
    """Held-out top-1 measured the way the manifest says it was measured."""
    assert manifest.evaluation is not None
    if manifest.evaluation.dataset is None:  # legacy manifest: training-time tensors
        split = digits_split()
        return onnx_accuracy(model_dir / "1" / "model.onnx", pixel_values(split.test_images, manifest.preprocess),
                             split.test_labels)
    assert manifest.evaluation.dataset == digits_folder.identity
    assert manifest.evaluation.num_images == 397
    return evaluate_onnx(model_dir / "1" / "model.onnx", digits_folder.heldout, manifest.preprocess,
                         digits_folder.identity).top1


@pytest.mark.parametrize("name", _demo_names())
def test_committed_demo_model_classifies_heldout_digits(name, digits_folder):
    model_dir = DEMO_REPOSITORY / name
    manifest = Manifest.load(model_dir)
    assert manifest.labels == [str(i) for i in range(10)]
    assert manifest.provenance.weights.startswith("trained:sklearn-digits")
    assert manifest.files["1/model.onnx"] == sha256_file(model_dir / "1" / "model.onnx")
    accuracy = _measured(model_dir, manifest, digits_folder)
    assert accuracy >= MIN_ACCURACY
    assert accuracy == pytest.approx(manifest.evaluation.top1)


@pytest.mark.parametrize("name", _demo_names())
def test_committed_int8_demo_model_reports_measured_agreement_and_accuracy(name, digits_folder):
    model_dir = DEMO_REPOSITORY / f"{name}-int8"
    manifest = Manifest.load(model_dir)
    assert manifest.quantization is not None and manifest.quantization.source_model == name
    assert manifest.quantization.num_samples == 397
    assert _measured(model_dir, manifest, digits_folder) == pytest.approx(manifest.evaluation.top1)


def test_committed_demo_repository_is_small():
    total = sum(p.stat().st_size for p in DEMO_REPOSITORY.rglob("*") if p.is_file())
    assert total < 15 * 2**20


def test_training_transforms_see_digits_as_the_service_does_and_affine_keeps_the_background_black(digits_folder):
    import torch

    from export.data import train_transform
    from service.preprocess import preprocess_image

    preprocess = get_preset("demo").data
    sample = digits_folder.train[3]
    from torchvision.datasets.folder import default_loader

    image = default_loader(str(sample.path))
    plain = train_transform(preprocess, "none")(image)
    served = preprocess_image(sample.path.read_bytes(), preprocess, 10**6)
    np.testing.assert_allclose(plain.numpy(), served, atol=1e-6)
    torch.manual_seed(0)
    moved = train_transform(preprocess, "affine")(image)
    assert moved.shape == plain.shape and not torch.allclose(moved, plain)
    black = (0.0 - 0.5) / 0.5
    assert torch.allclose(moved[:, 0, 0], torch.full((3,), black))  # corners stay background

"""Demo training: the `demo` preset, vanilla and every single variant of the table, on scikit-learn's digits.

Why: the embedded default repository must hold models that really classify something, so the
service, its tests and the benchmarks exercise trained weights (and a measured accuracy) rather
than random logits. sklearn's digits ship inside the package: no download.

Data (fixed, recorded as the manifest's dataset identity): the 1797 8x8 images in sklearn's order,
scaled to uint8 (0..16 -> 0..255) and written as grey PNGs into an image folder, the first 1400 under
`train/`, the last 397 under `val/` (held out). Training is export/finetune.py's loop, the one
`vitserve-export finetune` runs (DEMO_CONFIG: from scratch, AdamW with warm-up then cosine decay,
label smoothing, small random affine transforms; a variant adds its own loss), and the held-out
accuracy is measured on the PNG files through the service's preprocessing and the exported graph,
so the manifest's number is what a client gets.

The demo models are `demo` and `demo+NAME` for each variant of the table that is a demo model
(`VariantDef.demo`), trained for its `demo_epochs` where it declares them.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from export.finetune import FitConfig

if TYPE_CHECKING:
    import numpy as np

    from export.spec import ModelSpec
    from service.manifest import PreprocessConfig

    # served by the module `__getattr__` below; declared here so checkers know the names and types
    DEMO_SPECS: tuple[str, ...]
    SPEC_EPOCHS: dict[str, int]

NUM_TRAIN = 1400
DEMO_PRESET = "demo"
DATASET = "sklearn-digits"


def demo_specs() -> tuple[str, ...]:
    """The demo models' specs: the vanilla preset, then `demo+NAME` for each demo variant in table order."""
    from export import variants as registry

    return (DEMO_PRESET, *(f"{DEMO_PRESET}+{v.name}" for v in registry.variants() if v.demo))


def demo_spec_epochs() -> dict[str, int]:
    """Demo specs that train for other than `DEMO_CONFIG.epochs` by default (each variant's `demo_epochs`)."""
    from export import variants as registry

    return {f"{DEMO_PRESET}+{v.name}": v.demo_epochs for v in registry.variants()
            if v.demo and v.demo_epochs is not None}


def __getattr__(name: str) -> Any:
    """The demo lists under their historical names (computed: a variant added to the table appears in them)."""
    if name == "DEMO_SPECS":
        return demo_specs()
    if name == "SPEC_EPOCHS":
        return demo_spec_epochs()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class DigitsSplit:
    """uint8 grey images [n, 8, 8] (0..255) and int labels, train = first 1400, held out = last 397."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def digits_split() -> DigitsSplit:
    """sklearn's digits split as the demo models were trained: first 1400 train, last 397 held out."""
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    return DigitsSplit(images[:NUM_TRAIN], labels[:NUM_TRAIN], images[NUM_TRAIN:], labels[NUM_TRAIN:])


def digit_png(image: np.ndarray) -> bytes:
    """An 8x8 uint8 digit as a PNG file (what a client would send to the service)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def write_digits_folder(root: Path) -> Path:
    """sklearn's digits as an image folder: `train/<digit>/` the first 1400, `val/<digit>/` the last 397.

    Each 8x8 image is an 8-bit grey PNG (what a client sends the service); names keep sklearn's order.
    Idempotent: an existing complete folder is reused.
    """
    root = Path(root)
    marker = root / ".complete"
    if marker.exists():
        return root
    split = digits_split()
    for part, images, labels, offset in (("train", split.train_images, split.train_labels, 0),
                                         ("val", split.test_images, split.test_labels, len(split.train_images))):
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            path = root / part / str(int(label)) / f"{offset + i:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(digit_png(image))
    marker.write_text("sklearn digits, first 1400 train, last 397 val\n")
    return root


def pixel_values(images: np.ndarray, preprocess: PreprocessConfig) -> np.ndarray:
    """uint8 [n, h, w] grey images -> float32 [n, 3, H, W], as the service preprocesses them.

    The manifest's crop_pct is honoured (resize the shorter side to size / crop_pct, centre crop).
    """
    import numpy as np
    from PIL import Image

    _, height, width = preprocess.input_size
    resample = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
                "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}[preprocess.interpolation]
    scale_h, scale_w = math.floor(height / preprocess.crop_pct), math.floor(width / preprocess.crop_pct)
    mean = np.asarray(preprocess.mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(preprocess.std, dtype=np.float32).reshape(3, 1, 1)
    out = np.empty((len(images), 3, height, width), dtype=np.float32)
    for i, image in enumerate(images):
        rgb = Image.fromarray(image, mode="L").convert("RGB").resize((scale_w, scale_h), resample)
        left, top = (scale_w - width) // 2, (scale_h - height) // 2
        rgb = rgb.crop((left, top, left + width, top + height))
        arr = np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1) / 255.0
        out[i] = (arr - mean) / std
    return out


#: the demo recipe: from scratch, small random affine transforms (digits are centred and
#: orientation-sensitive: no flips or random crops), a higher learning rate than fine-tuning.
DEMO_CONFIG = FitConfig(epochs=40, batch_size=64, lr=2e-3, weight_decay=0.05, warmup_epochs=1,
                        label_smoothing=0.1, augmentation="affine", seed=0)


def onnx_accuracy(onnx_file: Path, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of the exported graph in ONNX Runtime (CPU)."""
    from export.parity import ort_session
    from service.manifest import INPUT_NAME

    session = ort_session(str(onnx_file))
    correct = 0
    for start in range(0, len(x), 64):
        logits = session.run(None, {INPUT_NAME: x[start: start + 64]})[0]
        correct += int((logits.argmax(axis=1) == y[start: start + 64]).sum())
    return correct / len(x)


def train_demo_repository(
    repository: Path,
    specs: Sequence[str | ModelSpec] | None = None,
    *,
    config: FitConfig = DEMO_CONFIG,
    checkpoint: Path | None = None,
    int8: bool = False,
    fp16: bool = False,
    progress: bool = True,
    min_accuracy: float | None = None,
    jobs: int = 1,
    threads: int = 1,
    spec_epochs: dict[str, int] | None = None,
    state_dir: Path | None = None,
    weights_dir: Path | None = None,
    **build_kwargs: Any,
) -> dict[str, float]:
    """Train each spec on the digits (written as an image folder) with export/finetune.py's loop,
    export it with its held-out evaluation; return {name: held-out top-1}.

    `specs` defaults to `demo_specs()`. From scratch by default; `checkpoint` starts every spec from it
    (function-preserving conversion). `spec_epochs` overrides the epochs per spec text (default
    `demo_spec_epochs()`; {} for none).
    """
    import tempfile

    from export.finetune import finetune_repository
    from export.spec import parse_spec

    parsed = [parse_spec(s) if isinstance(s, str) else s  # fail fast on a bad spec, parse once
              for s in (demo_specs() if specs is None else specs)]
    epochs = demo_spec_epochs() if spec_epochs is None else spec_epochs
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="vitserve-digits-") as tmp:
        data_dir = write_digits_folder(Path(tmp) / DATASET)
        evaluations = finetune_repository(
            data_dir, parsed, repository, config, checkpoint=checkpoint, dataset_name=DATASET,
            spec_epochs=epochs, jobs=jobs, threads=threads, progress=progress, int8=int8, fp16=fp16,
            state_dir=state_dir if state_dir is not None else Path(tmp) / "state", weights_dir=weights_dir,
            **build_kwargs,
        )
    for name, evaluation in evaluations.items():
        results[name] = evaluation.top1
        if min_accuracy is not None and evaluation.top1 < min_accuracy:
            raise RuntimeError(f"{name}: held-out accuracy {evaluation.top1:.2%} is below {min_accuracy:.0%}")
    return results

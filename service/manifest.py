"""The model manifest (`<model>/vitserve.json`): the contract between export/ and service/.

export/ writes it with these very classes (it may import service/, never the reverse), so a
field added here is a field both sides agree on. Everything the service needs to serve a model
that is not in the ONNX graph itself lives here: preprocessing, labels, costs and provenance.
"""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MANIFEST_FILENAME = "vitserve.json"
MODEL_FILENAME = "model.onnx"
CONFIG_FILENAME = "config.pbtxt"
INPUT_NAME = "pixel_values"
OUTPUT_NAME = "logits"
SCHEMA_VERSION: Literal[1] = 1

Interpolation = Literal["nearest", "bilinear", "bicubic", "lanczos"]
# How far beyond the values a normalised [0, 1] pixel can take an input tensor may go, in units of that
# range's width (on each side): generous for clients that send their own tensors, finite for the model.
INPUT_RANGE_MARGIN = 4.0


def default_input_range(mean: tuple[float, float, float], std: tuple[float, float, float]) -> tuple[float, float]:
    """The values `(pixel - mean) / std` takes for pixels in [0, 1], widened by INPUT_RANGE_MARGIN x its width."""
    lo = min((0.0 - m) / s for m, s in zip(mean, std, strict=True))
    hi = max((1.0 - m) / s for m, s in zip(mean, std, strict=True))
    margin = INPUT_RANGE_MARGIN * (hi - lo)
    return (round(lo - margin, 6), round(hi + margin, 6))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PreprocessConfig(_Strict):
    """How an image becomes `pixel_values`, after timm's data config.

    Resize the shorter side to `input_size / crop_pct` with `interpolation`, centre-crop to
    `input_size`, scale to [0, 1], then normalise with `mean`/`std` per RGB channel.
    """

    input_size: tuple[int, int, int] = Field(description="(channels, height, width) of the model input")
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: Interpolation = "bicubic"
    crop_pct: float = Field(0.875, gt=0.0, le=1.0)
    crop_mode: Literal["center"] = "center"
    input_range: tuple[float, float] | None = Field(
        None,
        description="Smallest and largest value an input tensor element may have (v2 tensors outside get 400: "
        "an extreme value in a batch corrupts the other requests' answers on int8 models). Absent: "
        "`default_input_range(mean, std)`, the normalised pixel range widened by a margin",
    )

    @property
    def value_range(self) -> tuple[float, float]:
        """The accepted input value range: `input_range`, or the one derived from mean/std."""
        return self.input_range if self.input_range is not None else default_input_range(self.mean, self.std)

    @field_validator("input_range")
    @classmethod
    def _ordered_range(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not (math.isfinite(v[0]) and math.isfinite(v[1]) and v[0] < v[1]):
            raise ValueError(f"input_range must be two finite numbers, low < high, got {v}")
        return v

    @field_validator("input_size")
    @classmethod
    def _rgb(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if v[0] != 3 or v[1] <= 0 or v[2] <= 0:
            raise ValueError(f"input_size must be (3, H, W) with H, W > 0, got {v}")
        return v

    @field_validator("std")
    @classmethod
    def _positive_std(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(s <= 0 for s in v):
            raise ValueError(f"std must be positive, got {v}")
        return v


class ParityReport(_Strict):
    """ONNX Runtime vs eval-mode PyTorch on random inputs, measured at export."""

    max_abs_diff: float = Field(ge=0.0)
    tolerance: float = Field(gt=0.0)
    batch_sizes: list[int]
    provider: str = "CPUExecutionProvider"


class QuantizationReport(_Strict):
    """How a reduced-precision or other-runtime copy (dynamic int8, fp16, OpenVINO f32 or bf16) relates to the fp32
    model it was made from.

    Measured at export on `inputs` (e.g. the demo's held-out digits; random pixel values for models
    with random weights, where agreement says little about real images): each sample run at batch 1
    through the fp32 graph in ONNX Runtime (CPU) and through the copy as it is served (ONNX Runtime, or
    OpenVINO at the copy's inference precision).
    """

    method: Literal["dynamic-int8", "fp16", "openvino-f32", "openvino-bf16"] = "dynamic-int8"
    source_model: str
    top1_agreement: float = Field(ge=0.0, le=1.0, description="fraction of inputs whose top-1 matches fp32")
    num_samples: int = Field(gt=0)
    max_abs_logit_diff: float | None = Field(None, ge=0.0, description="max |logit - fp32 logit| over the samples")
    inputs: str | None = Field(None, description="what the samples were, e.g. 'sklearn-digits held-out (397 images)'")


class Costs(_Strict):
    """Per-image cost counted on the exported ONNX graph (see export/flops.py)."""

    flops: int = Field(ge=0, description="FLOPs per image, FLOPs = 2 x multiply-adds for MatMul/Gemm/Conv")
    macs: int = Field(ge=0, description="multiply-adds per image in MatMul, Gemm and Conv")
    parameters: int = Field(
        ge=0,
        description="trainable parameter elements of the model before folding, whatever their value and whether "
        "or not they fold into constants; `convention` says how (export/costs.py count_parameters)",
    )
    convention: str = "FLOPs = 2*MACs (MatMul, Gemm, Conv) + 1 per element for element-wise ops, 5 per Softmax element"
    by_op: dict[str, int] = Field(default_factory=dict, description="FLOPs per image by ONNX op type")


class Provenance(_Strict):
    """Where the weights came from and which tools made the graph."""

    weights: str = Field(description="'random(seed=N)', 'checkpoint:<file name>' or 'trained:<dataset>'")
    new_parameters: list[str] = Field(default_factory=list, description="keys absent from the checkpoint")
    tool_versions: dict[str, str] = Field(default_factory=dict)
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


class DatasetIdentity(_Strict):
    """Which images an evaluation used: accuracies are comparable only between equal identities."""

    name: str = Field(description="dataset name (the image folder's name, or 'sklearn-digits')")
    fingerprint: str = Field(description="sha256 of the sorted 'split/class/file' list of every image used")
    split: str = Field(description="how the held-out images were chosen, e.g. 'val/' or 'fraction 0.2, seed 0'")
    num_classes: int = Field(gt=0)

    @property
    def key(self) -> str:
        """Short identity for labels and tables: `<name>@<first 12 hex digits of the fingerprint>`."""
        return f"{self.name}@{self.fingerprint[:12]}"


class TrainingRecipe(_Strict):
    """How the weights were (fine-)trained, so two evaluations can be seen to be trained alike."""

    start: str = Field(description="'checkpoint:<file>' (function-preserving conversion) or 'random(seed=N)'")
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    optimizer: str = "AdamW"
    lr: float = Field(gt=0.0)
    weight_decay: float = Field(ge=0.0)
    schedule: str = "linear warm-up then cosine decay (per step)"
    warmup_epochs: float = Field(ge=0.0)
    label_smoothing: float = Field(ge=0.0, lt=1.0)
    augmentation: str
    auxiliary_losses: list[str] = Field(default_factory=list, description="e.g. 'lavit diagonality x 0.1'")
    mixed_precision: str | None = Field(None, description="autocast dtype, None for fp32")
    device: str
    seed: int
    train_images: int = Field(ge=1)
    norm_statistics: Literal["batch", "frozen", "batch-after-warmup"] = Field(
        "batch", description="BatchNorm in training: batch statistics, or frozen at the converted values "
                             "(fine-tuning from a checkpoint keeps the function it starts from), or "
                             "batch-after-warmup: frozen during the warm-up, then re-calibrated on training "
                             "batches (same eval-mode function) and trained with batch statistics")


class Evaluation(_Strict):
    """Held-out accuracy of this model file, measured through the exported graph and service preprocessing."""

    top1: float = Field(ge=0.0, le=1.0)
    top5: float | None = Field(None, ge=0.0, le=1.0)
    num_images: int | None = Field(None, gt=0)
    dataset: DatasetIdentity | None = Field(None, description="None only in manifests written before it existed")
    skipped_images: int = Field(0, ge=0, description="held-out files that could not be read")
    measured_with: str = "ONNX Runtime (CPU) on the model file, each image file through service.preprocess"
    recipe: TrainingRecipe | None = None
    note: str = "compare accuracies only between models evaluated on the same dataset identity"

    @model_validator(mode="before")
    @classmethod
    def _legacy(cls, data: Any) -> Any:
        # manifests written before this schema held {"heldout_accuracy": x}: keep them loadable
        if isinstance(data, dict) and "top1" not in data and "heldout_accuracy" in data:
            return {"top1": data["heldout_accuracy"], "measured_with": "legacy: training-time evaluation"}
        return data


class Manifest(_Strict):
    """`vitserve.json`: one per model directory, describing every version in it."""

    schema_version: Literal[1] = SCHEMA_VERSION
    name: str
    spec: str = Field(description="PRESET[+VARIANT...], e.g. vit_small+cb+gab")
    preset: str
    variants: list[str] = Field(default_factory=list)
    variant_options: dict[str, Any] = Field(default_factory=dict)
    architecture: dict[str, Any] = Field(default_factory=dict)
    num_classes: int = Field(gt=0)
    labels: list[str]
    preprocess: PreprocessConfig
    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME
    opset: int = Field(gt=0)
    costs: Costs
    parity: ParityReport | None = None
    quantization: QuantizationReport | None = None
    evaluation: Evaluation | None = Field(None, description="held-out top-1/top-5, dataset identity and recipe")
    files: dict[str, str] = Field(
        default_factory=dict, description="path relative to the model directory -> sha256, e.g. '1/model.onnx'"
    )
    provenance: Provenance

    @field_validator("evaluation", mode="before")
    @classmethod
    def _empty_evaluation(cls, v: Any) -> Any:
        return None if v == {} else v  # older manifests wrote {} for "not evaluated"

    @model_validator(mode="after")
    def _labels_match_classes(self) -> Manifest:
        if len(self.labels) != self.num_classes:
            raise ValueError(f"{len(self.labels)} labels for {self.num_classes} classes")
        return self

    @classmethod
    def load(cls, model_dir: Path) -> Manifest:
        return cls.model_validate_json((model_dir / MANIFEST_FILENAME).read_text())

    def save(self, model_dir: Path) -> Path:
        path = model_dir / MANIFEST_FILENAME
        path.write_text(self.model_dump_json(indent=2) + "\n")
        return path


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (model files can be large)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()

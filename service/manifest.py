"""The model manifest (`<model>/vitserve.json`): the contract between export/ and service/.

export/ writes it with these very classes (it may import service/, never the reverse), so a
field added here is a field both sides agree on. Everything the service needs to serve a model
that is not in the ONNX graph itself lives here: preprocessing, labels, costs and provenance.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MANIFEST_FILENAME = "vitserve.json"
MODEL_FILENAME = "model.onnx"
CONFIG_FILENAME = "config.pbtxt"
INPUT_NAME = "pixel_values"
OUTPUT_NAME = "logits"
SCHEMA_VERSION = 1

Interpolation = Literal["nearest", "bilinear", "bicubic", "lanczos"]


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
    """How a quantised copy relates to the fp32 model it was made from."""

    method: Literal["dynamic-int8"] = "dynamic-int8"
    source_model: str
    top1_agreement: float = Field(ge=0.0, le=1.0, description="fraction of inputs whose top-1 matches fp32")
    num_samples: int = Field(gt=0)


class Costs(_Strict):
    """Per-image cost counted on the exported ONNX graph (see export/flops.py)."""

    flops: int = Field(ge=0, description="FLOPs per image, FLOPs = 2 x multiply-adds for MatMul/Gemm/Conv")
    macs: int = Field(ge=0, description="multiply-adds per image in MatMul, Gemm and Conv")
    parameters: int = Field(
        ge=0,
        description="parameter elements the exported graph needs: its float initializers with more than one "
        "element, less folded constants (GAB bias tables); see export/flops.py graph_parameters",
    )
    convention: str = "FLOPs = 2*MACs (MatMul, Gemm, Conv) + 1 per element for element-wise ops, 5 per Softmax element"
    by_op: dict[str, int] = Field(default_factory=dict, description="FLOPs per image by ONNX op type")


class Provenance(_Strict):
    """Where the weights came from and which tools made the graph."""

    weights: str = Field(description="'random(seed=N)', 'checkpoint:<file name>' or 'trained:<dataset>'")
    new_parameters: list[str] = Field(default_factory=list, description="keys absent from the checkpoint")
    tool_versions: dict[str, str] = Field(default_factory=dict)
    created_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))


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
    evaluation: dict[str, float] = Field(default_factory=dict, description="e.g. held-out accuracy")
    files: dict[str, str] = Field(
        default_factory=dict, description="path relative to the model directory -> sha256, e.g. '1/model.onnx'"
    )
    provenance: Provenance

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

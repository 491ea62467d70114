"""Held-out evaluation through the served path: image files -> service preprocessing -> exported graph.

Why not the training-time tensors: the number a manifest carries must be the number a client gets.
Each held-out file's bytes go through `service.preprocess.preprocess_image` (the very function the
service runs on a request) and the written ONNX file runs in ONNX Runtime, so an evaluation differs
from what the HTTP API answers only if the served graph or the preprocessing changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from service.manifest import INPUT_NAME, DatasetIdentity, Evaluation, PreprocessConfig, TrainingRecipe

if TYPE_CHECKING:
    import numpy as np

    from export.data import Sample

BATCH = 64
#: generous pixel limit for evaluation files (the service's own limit applies to requests)
MAX_PIXELS = 100_000_000


def preprocess_files(
    samples: Sequence[Sample], preprocess: PreprocessConfig
) -> tuple[list[int], list[np.ndarray]]:
    """(indices of readable samples, their [3, H, W] arrays) via the service's preprocessing."""
    from service.errors import ServiceError
    from service.preprocess import preprocess_image

    kept: list[int] = []
    arrays: list[np.ndarray] = []
    for i, sample in enumerate(samples):
        try:
            arrays.append(preprocess_image(Path(sample.path).read_bytes(), preprocess, MAX_PIXELS))
            kept.append(i)
        except (ServiceError, OSError):
            continue
    return kept, arrays


def evaluate_onnx(
    onnx_file: Path,
    samples: Sequence[Sample],
    preprocess: PreprocessConfig,
    dataset: DatasetIdentity,
    *,
    recipe: TrainingRecipe | None = None,
    openvino_precision: Literal["f32", "bf16"] | None = None,
) -> Evaluation:
    """Top-1/top-5 of `onnx_file` on the held-out `samples`; unreadable files are skipped and counted.
    `openvino_precision`: the file is an OpenVINO IR (an `-openvino` copy), run at that inference precision."""
    import numpy as np

    from export.parity import ort_session

    kept, arrays = preprocess_files(samples, preprocess)
    if not kept:
        raise ValueError("no held-out image could be read; cannot evaluate")
    x = np.stack(arrays).astype(np.float32)
    y = np.asarray([samples[i].target for i in kept], dtype=np.int64)
    if openvino_precision is not None:
        from export.openvino import OpenVinoSession

        session: Any = OpenVinoSession(onnx_file, openvino_precision)
        measured = {"measured_with": f"OpenVINO (CPU, {openvino_precision} inference precision) on the model file, "
                                     "each image file through service.preprocess"}
    else:
        session, measured = ort_session(str(onnx_file)), {}
    top1 = top5 = 0
    for start in range(0, len(x), BATCH):
        logits = session.run(None, {INPUT_NAME: x[start:start + BATCH]})[0]
        k = min(5, logits.shape[1])
        best = np.argsort(-logits, axis=1)[:, :k]
        labels = y[start:start + BATCH]
        top1 += int((best[:, 0] == labels).sum())
        top5 += int((best == labels[:, None]).any(axis=1).sum())
    return Evaluation(top1=top1 / len(kept), top5=top5 / len(kept), num_images=len(kept), dataset=dataset,
                      skipped_images=len(samples) - len(kept), recipe=recipe, **measured)

"""Parity between the exported graph in ONNX Runtime and the eval-mode PyTorch model.

Why: folding and export rewrite the maths (constant biases, BatchNorm merged into weights,
decomposed attention). The only proof that the served graph computes the trained model is to
run both on the same inputs. The build fails loudly above the tolerance (VARIANTS.md: 1e-4 on
fp32 logits) and the measured error goes into the manifest.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from service.manifest import INPUT_NAME, ParityReport

if TYPE_CHECKING:
    import numpy as np
    import onnx
    import torch

DEFAULT_TOLERANCE = 1e-4
DEFAULT_BATCH_SIZES = (1, 8)
PROVIDER = "CPUExecutionProvider"


class ParityError(RuntimeError):
    """ONNX Runtime and PyTorch disagree by more than the tolerance."""


def ort_session(model: onnx.ModelProto | bytes | str):  # -> onnxruntime.InferenceSession
    """A CPU ONNX Runtime session built by the service's own session builder (all graph optimisations on),
    so parity is checked on the session the service serves."""
    from service.runtimes.onnxruntime.session import SessionConfig, build_session

    source = model.SerializeToString() if hasattr(model, "SerializeToString") else model
    config = SessionConfig(providers=[PROVIDER], intra_op_threads=0, allow_spinning=True)
    return build_session(source, config, log_severity_level=3)


def random_inputs(input_size: tuple[int, int, int], batch: int, seed: int) -> np.ndarray:
    """Seeded standard-normal `pixel_values` (roughly what normalised images look like)."""
    import numpy as np

    return np.random.default_rng(seed).standard_normal((batch, *input_size)).astype(np.float32)


def torch_logits(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    import torch

    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(x)).float().numpy()


def check_parity(
    model: torch.nn.Module,
    onnx_model: onnx.ModelProto | bytes | str,
    *,
    input_size: tuple[int, int, int],
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    tolerance: float = DEFAULT_TOLERANCE,
    seed: int = 0,
) -> ParityReport:
    """Max |ORT - PyTorch| over logits at each batch size; raise ParityError above `tolerance`."""
    import numpy as np

    if tolerance <= 0:
        raise ValueError(f"tolerance must be positive, got {tolerance}")
    session = ort_session(onnx_model)
    worst = 0.0
    for i, batch in enumerate(batch_sizes):
        x = random_inputs(input_size, batch, seed + i)
        expected = torch_logits(model, x)
        (got,) = session.run(None, {INPUT_NAME: x})
        if got.shape != expected.shape:
            raise ParityError(f"batch {batch}: ONNX output shape {got.shape} != PyTorch {expected.shape}")
        if not np.isfinite(got).all():
            raise ParityError(f"batch {batch}: ONNX Runtime produced non-finite logits")
        diff = float(np.max(np.abs(got.astype(np.float64) - expected)))
        worst = max(worst, diff)
        if diff > tolerance:
            raise ParityError(
                f"ONNX Runtime and PyTorch logits differ by {diff:.3g} at batch {batch} "
                f"(tolerance {tolerance:g}); the export or folding changed the maths"
            )
    return ParityReport(max_abs_diff=worst, tolerance=tolerance, batch_sizes=list(batch_sizes), provider=PROVIDER)

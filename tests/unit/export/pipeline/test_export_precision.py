"""Reduced-precision copies: fp16 (ONNX Runtime's float16 converter, fp32 I/O kept) and int8, each with
its agreement to fp32 measured on real images (the demo's held-out digits) and stated in vitserve.json;
and the TensorRT accelerator flags written into config.pbtxt as Triton reads them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from google.protobuf import text_format

from export.cli import main as export_main
from export.data import load_image_folder
from export.evaluate import preprocess_files
from export.parity import ort_session
from export.train import DATASET, DEMO_CONFIG, onnx_accuracy, train_demo_repository, write_digits_folder
from service.manifest import CONFIG_FILENAME, INPUT_NAME, Manifest, sha256_file
from service.model_config import ModelConfig


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """The demo builder's own path (`vitserve-export train`), one epoch: fp32, int8 and fp16 copies."""
    repo = tmp_path_factory.mktemp("precision")
    train_demo_repository(repo, ["demo"], config=replace(DEMO_CONFIG, epochs=1), int8=True, fp16=True,
                          progress=False)
    return repo


def _heldout(manifest: Manifest, tmp_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The held-out digits as the service sees them (PNG files through its preprocessing)."""
    data = load_image_folder(write_digits_folder(tmp_path / DATASET), name=DATASET)
    kept, arrays = preprocess_files(data.heldout, manifest.preprocess)
    assert len(kept) == len(data.heldout)
    return np.stack(arrays).astype(np.float32), np.asarray([s.target for s in data.heldout])


def _recompute(fp32: Path, other: Path, x: np.ndarray) -> tuple[float, float]:
    a_sess, b_sess = ort_session(str(fp32)), ort_session(str(other))
    agree, worst = 0, 0.0
    for i in range(len(x)):
        a = a_sess.run(None, {INPUT_NAME: x[i:i + 1]})[0]
        b = b_sess.run(None, {INPUT_NAME: x[i:i + 1]})[0]
        agree += int(a.argmax() == b.argmax())
        worst = max(worst, float(np.abs(a.astype(np.float64) - b).max()))
    return agree / len(x), worst


@pytest.mark.parametrize("suffix,method", [("fp16", "fp16"), ("int8", "dynamic-int8")])
def test_copies_state_their_agreement_on_the_heldout_digits(trained: Path, suffix: str, method: str,
                                                            tmp_path: Path) -> None:
    model_dir = trained / f"demo-{suffix}"
    m = Manifest.load(model_dir)
    q = m.quantization
    assert q is not None and q.method == method and q.source_model == "demo"
    assert q.num_samples == 397 and q.inputs is not None and q.inputs.startswith(f"{DATASET}@")
    assert "held-out (397 images" in q.inputs
    assert m.parity is None and m.files["1/model.onnx"] == sha256_file(model_dir / "1" / "model.onnx")
    x, y = _heldout(m, tmp_path)
    agreement, worst = _recompute(trained / "demo" / "1" / "model.onnx", model_dir / "1" / "model.onnx", x)
    assert q.top1_agreement == pytest.approx(agreement)  # measured, not assumed
    assert q.max_abs_logit_diff == pytest.approx(worst, rel=1e-6, abs=1e-9) and worst > 0
    assert m.evaluation is not None
    assert m.evaluation.top1 == pytest.approx(onnx_accuracy(model_dir / "1" / "model.onnx", x, y))


def test_fp16_copy_is_fp16_inside_with_the_fp32_signature(trained: Path) -> None:
    proto = onnx.load(str(trained / "demo-fp16" / "1" / "model.onnx"))
    onnx.checker.check_model(proto)  # topologically sorted, valid ONNX
    f16, f32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    big = [t for t in proto.graph.initializer if np.prod(t.dims) >= 64]
    assert big and all(t.data_type == f16 for t in big)
    assert [i.type.tensor_type.elem_type for i in proto.graph.input] == [f32]
    assert [o.type.tensor_type.elem_type for o in proto.graph.output] == [f32]
    fp32_size = (trained / "demo" / "1" / "model.onnx").stat().st_size
    assert (trained / "demo-fp16" / "1" / "model.onnx").stat().st_size < 0.7 * fp32_size
    # same Triton signature as its source: clients cannot tell them apart
    a = ModelConfig.load(trained / "demo" / CONFIG_FILENAME)
    b = ModelConfig.load(trained / "demo-fp16" / CONFIG_FILENAME)
    assert (a.input, a.output, a.max_batch_size) == (b.input, b.output, b.max_batch_size)


def test_fp16_copy_serves_on_the_cpu_provider(trained: Path, tmp_path: Path) -> None:
    from service.repository import read_model
    from service.runtimes import RuntimeSpec
    from service.runtimes.onnxruntime.runtime import OnnxRuntime
    from service.runtimes.onnxruntime.session import session_config

    entry = read_model(trained, "demo-fp16")
    cfg = session_config(["CPUExecutionProvider"], 1, 1, False, "all")
    rt = OnnxRuntime(RuntimeSpec("demo-fp16", 1, entry.manifest, 8, entry.verify(1), entry.config, options=cfg))
    rt.warmup([1, 8])
    x, _ = _heldout(entry.manifest, tmp_path)
    out = rt.run(x[:8])
    assert out.dtype == np.float32 and out.shape == (8, 10)
    ref = ort_session(str(trained / "demo" / "1" / "model.onnx")).run(None, {INPUT_NAME: x[:8]})[0]
    np.testing.assert_allclose(out, ref, atol=5e-2)


def test_build_cli_writes_fp16_copy_and_tensorrt_accelerator(tmp_path: Path, capsys) -> None:
    from tritonclient.grpc import model_config_pb2 as pb

    rc = export_main(["build", "-r", str(tmp_path), "test", "--fp16", "--quiet", "--max-batch-size", "8",
                      "--tensorrt", "--trt-workspace-bytes", "1073741824", "--trt-engine-cache", "/cache/trt"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "test-fp16" in out and "fp16 top-1 agreement" in out
    q = Manifest.load(tmp_path / "test-fp16").quantization
    assert q is not None and q.inputs == "64 seeded random normal pixel_values (seed=0), not images"
    for name in ("test", "test-fp16"):
        text = (tmp_path / name / CONFIG_FILENAME).read_text()
        proto = text_format.Parse(text, pb.ModelConfig())  # Triton's own parser accepts it
        (acc,) = proto.optimization.execution_accelerators.gpu_execution_accelerator
        assert acc.name == "tensorrt"
        assert dict(acc.parameters) == {
            "precision_mode": "FP16", "max_workspace_size_bytes": "1073741824", "trt_engine_cache_enable": "1",
            "trt_engine_cache_path": "/cache/trt", "trt_profile_min_shapes": "pixel_values:1x3x32x32",
            "trt_profile_opt_shapes": "pixel_values:8x3x32x32", "trt_profile_max_shapes": "pixel_values:8x3x32x32",
        }
        assert ModelConfig.from_pbtxt(text).optimization.gpu_accelerator("tensorrt").parameters == dict(acc.parameters)


@pytest.mark.parametrize("argv,message", [
    (["--trt-engine-cache", "/x"], "need --tensorrt"),
    (["--tensorrt", "--trt-workspace-bytes", "0"], "--trt-workspace-bytes must be >= 1"),
])
def test_build_cli_refuses_bad_accelerator_flags(tmp_path: Path, capsys, argv: list[str], message: str) -> None:
    assert export_main(["build", "-r", str(tmp_path), "test", "--quiet", *argv]) == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())

"""The OpenVINO runtime on its own: what config.pbtxt and the options resolve to (no library needed), and a
compiled tiny model, including a CPU without bf16 (simulated)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.runtimes.openvino.config import compile_plan, model_precision
from service.runtimes.openvino.options import OpenVinoOptions


def plan(parameters: dict[str, str], *, bf16: bool = True, instances: int = 1, **options: object):
    return compile_plan(OpenVinoOptions(**options), parameters, instances=instances, cores=8, cpu_has_bf16=bf16)


def test_precision_comes_from_the_config_then_the_options_and_bf16_only_where_the_cpu_has_it() -> None:
    assert model_precision({"HINT_BF16": "yes"}, "f32") == "bf16"  # Triton's key (its values are case-blind)
    assert model_precision({"INFERENCE_PRECISION_HINT": "F32", "HINT_BF16": "YES"}, "auto") == "f32"
    assert model_precision({}, "auto") == "auto"
    assert plan({}).precision == "bf16" and plan({}, bf16=False).precision == "f32"  # auto: the CPU decides
    assert plan({}, bf16=False).note is None  # auto asks for nothing the CPU lacks
    assert plan({}, openvino_precision="f32").precision == "f32"
    assert plan({"HINT_BF16": "YES"}, openvino_precision="f32").precision == "bf16"  # the model's config wins
    downgraded = plan({"HINT_BF16": "YES"}, bf16=False)
    assert (downgraded.requested, downgraded.precision) == ("bf16", "f32") and "no native bf16" in downgraded.note
    assert downgraded.properties["INFERENCE_PRECISION_HINT"] == "f32"


def test_streams_and_threads() -> None:
    default = plan({}, instances=2)
    assert default.properties["NUM_STREAMS"] == "2" and default.properties["INFERENCE_NUM_THREADS"] == "8"
    assert default.threads_per_batch == 4  # what one batch holds at the compute gate
    assert "PERFORMANCE_HINT" not in default.properties
    configured = plan({"NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": "3", "PERFORMANCE_HINT": "latency"},
                      openvino_streams=4, openvino_threads=6)
    assert configured.properties == {"INFERENCE_PRECISION_HINT": "bf16", "NUM_STREAMS": "1",
                                     "INFERENCE_NUM_THREADS": "3", "PERFORMANCE_HINT": "LATENCY"}
    assert plan({}, openvino_streams=4, openvino_threads=6).threads_per_batch == 1
    assert plan({"NUM_STREAMS": "auto"}).properties["NUM_STREAMS"] == "AUTO"


@pytest.mark.parametrize("parameters, needle", [
    ({"HINT_BF16": "NO"}, "HINT_BF16"), ({"INFERENCE_PRECISION_HINT": "f16"}, "INFERENCE_PRECISION_HINT"),
    ({"NUM_STREAMS": "many"}, "NUM_STREAMS"), ({"INFERENCE_NUM_THREADS": "-1"}, "INFERENCE_NUM_THREADS"),
    ({"PERFORMANCE_HINT": "fast"}, "PERFORMANCE_HINT"), ({"TARGET_DEVICE": "GPU"}, "TARGET_DEVICE"),
])
def test_bad_config_values_name_their_parameter(parameters: dict[str, str], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        plan(parameters)


def test_options_come_from_the_environment_and_refuse_bad_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VITSERVE_OPENVINO_PRECISION", "f32")
    monkeypatch.setenv("VITSERVE_OPENVINO_THREADS", "2")
    options = OpenVinoOptions.from_overrides({"openvino_streams": 3, "providers": ["CPUExecutionProvider"]})
    assert (options.openvino_precision, options.openvino_threads, options.openvino_streams) == ("f32", 2, 3)
    with pytest.raises(ValueError):
        OpenVinoOptions(openvino_precision="fp8")


def test_the_table_knows_the_openvino_backend_and_its_model_file() -> None:
    from service.runtimes.table import runtime_model_filename, runtime_options_types

    assert runtime_model_filename("openvino") == "model.xml"
    assert runtime_model_filename("onnxruntime_onnx") == "model.onnx"
    assert OpenVinoOptions in runtime_options_types()


def test_a_compiled_model_runs_and_reports_f32_on_a_cpu_without_bf16(
    tiny_repository: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    pytest.importorskip("openvino")
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "integration"))
    from openvino_repository import convert_model
    from tiny_repository import TinyModel, expected_logits

    from service.repository import read_model
    from service.runtimes import RuntimeSpec
    from service.runtimes.openvino import runtime as ov_runtime

    convert_model(tiny_repository / "tiny_a", tmp_path / "tiny_a", "bf16")
    entry = read_model(tmp_path, "tiny_a")
    assert entry.versions[1].name == "model.xml"
    monkeypatch.setattr(ov_runtime, "cpu_has_bf16", lambda core: False)
    monkeypatch.setattr(ov_runtime, "_ANNOUNCED", set())
    spec = RuntimeSpec("tiny_a", 1, entry.manifest, 8, entry.verify(1), entry.config, instances=2,
                       options=OpenVinoOptions(openvino_threads=2))
    with caplog.at_level("WARNING", logger="vitserve.runtime"):
        rt = ov_runtime.OpenVinoRuntime(spec)
        ov_runtime.OpenVinoRuntime(spec).close()
    assert rt.provider == "OpenVINO CPU f32" and "no native bf16" in (rt.provider_note or "")
    assert sum("no native bf16" in r.getMessage() for r in caplog.records) == 1
    assert rt.cpu_threads == 1  # 2 threads over 2 streams (one per instance)
    x = np.random.default_rng(0).normal(size=(3, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(rt.run(x), expected_logits(TinyModel("tiny_a"), 1, x), rtol=1e-4, atol=1e-4)
    rt.warmup([1, 4, 8])
    rt.close()

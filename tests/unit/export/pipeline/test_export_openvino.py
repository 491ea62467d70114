"""OpenVINO copies (`--openvino`, `--openvino-bf16`): one IR per copy, config.pbtxt naming Triton's OpenVINO
backend with the copy's precision (Triton's parser accepts it), and the agreement with fp32 and the held-out
evaluation measured through OpenVINO at that precision on the demo's held-out digits (the writer `train`,
`finetune` and `build` share)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

from export.data import load_image_folder
from export.evaluate import preprocess_files
from export.parity import ort_session
from export.train import DATASET, DEMO_CONFIG, train_demo_repository, write_digits_folder
from service.manifest import CONFIG_FILENAME, INPUT_NAME, Manifest, sha256_file
from service.model_config import ModelConfig

pytest.importorskip("openvino", reason="openvino is not installed (make setup installs it)")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("openvino")
    train_demo_repository(repo, ["demo"], config=replace(DEMO_CONFIG, epochs=1), fp16=False, openvino=True,
                          openvino_bf16=True, progress=False)
    return repo


def test_the_copies_sit_beside_the_onnx_model_and_triton_reads_their_configs(trained: Path) -> None:
    from tritonclient.grpc import model_config_pb2

    assert sorted(p.name for p in trained.iterdir() if p.is_dir()) == ["demo", "demo-openvino", "demo-openvino-bf16"]
    for name, parameters in (("demo-openvino", {"INFERENCE_PRECISION_HINT": "f32"}),
                             ("demo-openvino-bf16", {"HINT_BF16": "YES"})):
        model_dir = trained / name
        files = sorted(str(p.relative_to(model_dir)) for p in model_dir.rglob("*") if p.is_file())
        assert files == ["1/model.bin", "1/model.xml", CONFIG_FILENAME, "vitserve.json"]
        text = (model_dir / CONFIG_FILENAME).read_text()
        proto = text_format.Parse(text, model_config_pb2.ModelConfig())
        assert proto.name == name and proto.backend == "openvino" and proto.platform == ""
        assert {k: v.string_value for k, v in proto.parameters.items()} == parameters
        assert proto.HasField("dynamic_batching") and proto.input[0].name == INPUT_NAME
        assert ModelConfig.from_pbtxt(text).parameters == parameters
        m = Manifest.load(model_dir)
        assert m.files == {rel: sha256_file(model_dir / rel) for rel in ("1/model.bin", "1/model.xml")}
        assert m.costs == Manifest.load(trained / "demo").costs and m.parity is None


@pytest.mark.parametrize("name, precision", [("demo-openvino", "f32"), ("demo-openvino-bf16", "bf16")])
def test_agreement_and_evaluation_are_measured_through_openvino_on_the_heldout_digits(
    trained: Path, name: str, precision: str, tmp_path: Path,
) -> None:
    from export.openvino import OpenVinoSession, cpu_has_bf16

    m = Manifest.load(trained / name)
    q = m.quantization
    assert q is not None and q.method == f"openvino-{precision}" and q.source_model == "demo"
    assert q.num_samples == 397 and q.inputs is not None and "held-out (397 images" in q.inputs
    data = load_image_folder(write_digits_folder(tmp_path / DATASET), name=DATASET)
    x = np.stack(preprocess_files(data.heldout, m.preprocess)[1]).astype(np.float32)
    measured = precision if precision == "f32" or cpu_has_bf16() else "f32"
    fp32 = ort_session(str(trained / "demo" / "1" / "model.onnx"))
    copy = OpenVinoSession(trained / name / "1" / "model.xml", measured)
    a = np.concatenate([fp32.run(None, {INPUT_NAME: x[i:i + 1]})[0] for i in range(len(x))])
    b = np.concatenate([copy.run(None, {INPUT_NAME: x[i:i + 1]})[0] for i in range(len(x))])
    assert q.top1_agreement == pytest.approx(float((a.argmax(1) == b.argmax(1)).mean()))  # measured, not assumed
    assert q.max_abs_logit_diff == pytest.approx(float(np.abs(a.astype(np.float64) - b).max()), rel=1e-5)
    assert q.top1_agreement >= 0.99
    assert q.max_abs_logit_diff < (1e-4 if measured == "f32" else 0.2)
    assert m.evaluation is not None and f"OpenVINO (CPU, {measured}" in m.evaluation.measured_with
    ev = Manifest.load(trained / "demo").evaluation
    assert ev is not None and abs(m.evaluation.top1 - ev.top1) <= 0.01

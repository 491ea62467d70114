"""The repository writer and build: DESIGN.md's layout, a valid Triton config, a manifest that
validates and describes the files it sits beside, int8 copies, versions, and the timm claim."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from google.protobuf import text_format

from export.build import build_model
from export.flops import count_costs
from export.parity import ort_session, random_inputs
from export.presets import get_preset
from service.manifest import (
    CONFIG_FILENAME,
    INPUT_NAME,
    MANIFEST_FILENAME,
    Manifest,
    default_input_range,
    sha256_file,
)
from service.model_config import ModelConfig


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repository = tmp_path_factory.mktemp("repo")
    build_model("test+gab+reattn", repository, int8=True, progress=False, seed=3)
    build_model("demo", repository, progress=False, max_batch_size=16, max_queue_delay_us=500)
    return repository


def test_layout_is_exactly_the_design(repo):
    names = sorted(p.name for p in repo.iterdir())
    assert names == ["demo", "test-gab-reattn", "test-gab-reattn-int8"]
    for name in names:
        files = sorted(str(p.relative_to(repo / name)) for p in (repo / name).rglob("*") if p.is_file())
        assert files == ["1/model.onnx", CONFIG_FILENAME, MANIFEST_FILENAME]


@pytest.mark.parametrize("name", ["demo", "test-gab-reattn", "test-gab-reattn-int8"])
def test_config_pbtxt_is_valid_triton_configuration(repo, name):
    from tritonclient.grpc import model_config_pb2

    text = (repo / name / CONFIG_FILENAME).read_text()
    cfg = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert cfg.name == name and cfg.platform == "onnxruntime_onnx"
    assert cfg.max_batch_size > 0
    assert cfg.input[0].name == INPUT_NAME and list(cfg.input[0].dims) == [3, 32, 32]
    assert cfg.input[0].data_type == model_config_pb2.TYPE_FP32
    assert cfg.output[0].name == "logits" and list(cfg.output[0].dims) == [10]
    assert cfg.HasField("dynamic_batching")
    assert list(cfg.dynamic_batching.preferred_batch_size)[-1] == cfg.max_batch_size
    assert cfg.dynamic_batching.default_queue_policy.max_queue_size >= cfg.max_batch_size
    assert cfg.version_policy.latest.num_versions == 1
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_AUTO
    # and the service's own reader agrees with protobuf's
    ours = ModelConfig.from_pbtxt(text)
    assert ours.max_batch_size == cfg.max_batch_size
    assert ours.dynamic_batching.preferred_batch_size == list(cfg.dynamic_batching.preferred_batch_size)
    assert ours.dynamic_batching.max_queue_delay_microseconds == cfg.dynamic_batching.max_queue_delay_microseconds
    assert ModelConfig.from_pbtxt(ours.to_pbtxt()) == ours


def test_batching_options_reach_the_config(repo):
    cfg = ModelConfig.load(repo / "demo" / CONFIG_FILENAME)
    assert cfg.max_batch_size == 16
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 500
    assert cfg.dynamic_batching.preferred_batch_size == [4, 8, 16]


def test_manifest_describes_the_model_beside_it(repo):
    m = Manifest.load(repo / "test-gab-reattn")
    assert m.name == "test-gab-reattn" and m.spec == "test+gab+reattn" and m.preset == "test"
    assert m.variants == ["gab", "reattn"]
    assert m.variant_options["gab_sigma_init"] == 5.0 and m.variant_options["reattn_layers"] == [2, 3]
    data = get_preset("test").data
    # export states the accepted input range (the normalised pixel range with the service's margin)
    assert m.preprocess.input_range == default_input_range(data.mean, data.std)
    assert m.preprocess.model_copy(update={"input_range": None}) == data
    assert m.labels == [f"class_{i}" for i in range(10)]
    assert m.opset == 18
    assert m.parity is not None and m.parity.max_abs_diff <= 1e-4 and m.parity.batch_sizes == [1, 8]
    assert m.provenance.weights == "random(seed=3)"
    assert {"torch", "onnx", "timm"} <= m.provenance.tool_versions.keys()
    assert any(k.startswith("onnxruntime") for k in m.provenance.tool_versions)
    assert set(m.files) == {"1/model.onnx"}
    assert m.files["1/model.onnx"] == sha256_file(repo / "test-gab-reattn" / "1" / "model.onnx")
    proto = onnx.load(str(repo / "test-gab-reattn" / "1" / "model.onnx"))
    assert m.costs.flops == count_costs(proto).flops and m.costs.macs == count_costs(proto).macs
    from export.costs import count_parameters
    from export.flops import graph_parameters
    from export.models import create_model
    from export.spec import parse_spec

    # counted on the model before folding (GAB's sigma/a and re-attention's BN gamma/beta included); the graph
    # holds fewer (a constant table, a folded conv)
    assert m.costs.parameters == count_parameters(create_model(parse_spec("test+gab+reattn")))
    assert m.costs.parameters > graph_parameters(proto, num_tokens=17)


def test_demo_models_get_digit_labels(repo):
    m = Manifest.load(repo / "demo")
    assert m.labels == [str(i) for i in range(10)]
    assert json.loads((repo / "demo" / MANIFEST_FILENAME).read_text())["preprocess"]["interpolation"] == "bilinear"


def test_int8_copy_is_its_own_model_with_agreement(repo):
    m = Manifest.load(repo / "test-gab-reattn-int8")
    assert m.quantization is not None and m.quantization.source_model == "test-gab-reattn"
    assert 0.0 <= m.quantization.top1_agreement <= 1.0 and m.quantization.num_samples == 64
    assert m.parity is None
    proto = onnx.load(str(repo / "test-gab-reattn-int8" / "1" / "model.onnx"))
    assert "MatMulInteger" in {n.op_type for n in proto.graph.node}
    assert m.files["1/model.onnx"] == sha256_file(repo / "test-gab-reattn-int8" / "1" / "model.onnx")
    # the agreement is measured, not assumed: recompute it
    fp32 = ort_session(str(repo / "test-gab-reattn" / "1" / "model.onnx"))
    int8 = ort_session(str(repo / "test-gab-reattn-int8" / "1" / "model.onnx"))
    x = random_inputs((3, 32, 32), 64, seed=3)
    agree = np.mean([fp32.run(None, {INPUT_NAME: x[i:i + 1]})[0].argmax()
                     == int8.run(None, {INPUT_NAME: x[i:i + 1]})[0].argmax()
                     for i in range(len(x))])
    assert m.quantization.top1_agreement == pytest.approx(agree)


def test_a_new_version_is_added_and_listed(tmp_path):
    first = build_model("test+cb", tmp_path, progress=False, seed=0)
    build_model("test+cb", tmp_path, progress=False, seed=1, version=2)
    m = Manifest.load(first)
    assert set(m.files) == {"1/model.onnx", "2/model.onnx"}
    for rel, digest in m.files.items():
        assert sha256_file(first / rel) == digest
    assert m.files["1/model.onnx"] != m.files["2/model.onnx"]
    assert m.provenance.weights == "random(seed=1)"
    # rebuilding version 1 replaces it in place and keeps version 2 listed
    build_model("test+cb", tmp_path, progress=False, seed=2, version=1)
    m = Manifest.load(first)
    assert set(m.files) == {"1/model.onnx", "2/model.onnx"}
    assert m.files["1/model.onnx"] == sha256_file(first / "1" / "model.onnx")


def test_build_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="unknown variant"):
        build_model("test+nope", tmp_path, progress=False)
    with pytest.raises(ValueError, match="labels"):
        build_model("test", tmp_path, labels=["a", "b"], progress=False)
    with pytest.raises(ValueError, match="version"):
        build_model("test", tmp_path, version=0, progress=False)
    assert not (tmp_path / "test" / MANIFEST_FILENAME).exists()


def test_timm_checkpoint_gives_timm_logits_in_onnx_runtime(tmp_path):
    """The timm claim: a timm ViT state dict, exported through --checkpoint, computes timm's logits."""
    import timm
    import torch

    torch.manual_seed(0)
    reference = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
    with torch.no_grad():  # timm zero-initialises the head bias; make every tensor matter
        reference.head.bias.normal_(0, 0.1)
    ckpt = tmp_path / "vit_tiny.pth"
    torch.save(reference.state_dict(), ckpt)
    model_dir = build_model("vit_tiny", tmp_path / "repo", checkpoint=ckpt, progress=False)
    m = Manifest.load(model_dir)
    assert m.provenance.weights == "checkpoint:vit_tiny.pth" and m.provenance.new_parameters == []
    assert m.num_classes == 1000 and m.preprocess.input_size == (3, 224, 224)
    x = random_inputs((3, 224, 224), 2, seed=11)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy()
    (got,) = ort_session(str(model_dir / "1" / "model.onnx")).run(None, {INPUT_NAME: x})
    assert np.abs(got - expected).max() <= 1e-4


def test_variants_built_from_a_timm_checkpoint_start_as_timm(tmp_path):
    """cbs/gab/reattn/refiner take function-preserving inits for their new parameters, so the
    exported graph of a variant loaded from a timm checkpoint still computes timm's logits."""
    import torch
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(1)
    reference = VisionTransformer(**get_preset("test").arch).eval()
    ckpt = tmp_path / "test.pth"
    torch.save(reference.state_dict(), ckpt)
    model_dir = build_model("test+cbs+gab+reattn+refiner", tmp_path / "repo", checkpoint=ckpt, progress=False)
    m = Manifest.load(model_dir)
    tags = (".cb.scale", ".attn.gab.", ".attn.reattn.", ".attn.refiner.")
    new = m.provenance.new_parameters
    assert all(any(tag in k for tag in tags) for k in new)
    assert all(any(tag in k for k in new) for tag in tags)
    x = random_inputs((3, 32, 32), 4, seed=2)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy()
    (got,) = ort_session(str(model_dir / "1" / "model.onnx")).run(None, {INPUT_NAME: x})
    assert np.abs(got - expected).max() <= 1e-4


def test_build_test_repository_writes_servable_models(tmp_path):
    from repository_builder import build_test_repository

    repo = build_test_repository(tmp_path / "r", specs=("test", "test+cb"))
    for name in ("test", "test-cb"):
        m = Manifest.load(repo / name)
        session = ort_session(str(repo / name / "1" / "model.onnx"))
        (logits,) = session.run(None, {INPUT_NAME: random_inputs(m.preprocess.input_size, 2, seed=0)})
        assert logits.shape == (2, m.num_classes)

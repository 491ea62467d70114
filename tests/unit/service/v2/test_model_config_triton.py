"""service/model_config.py against Triton's own protobuf schema (the classes tritonclient ships).

Both directions: what we write parses as a Triton `ModelConfig` with the same values, and what
protobuf writes (`MessageToString`) reads back into the same `ModelConfig`. The /config endpoint's
JSON must also parse with protobuf's JSON parser.
"""

from __future__ import annotations

import pytest
from google.protobuf import json_format, text_format
from hypothesis import given, settings
from hypothesis import strategies as st
from tritonclient.grpc import model_config_pb2 as pb

from service.api.v2_meta import config_to_v2_json
from service.model_config import (
    DynamicBatching,
    InstanceGroup,
    ModelConfig,
    PbtxtError,
    QueuePolicy,
    TensorConfig,
)

DATA_TYPES = [n for n in pb.DataType.keys() if n != "TYPE_INVALID"]


def full_config() -> ModelConfig:
    return ModelConfig(
        name="vit_small-cb-gab",
        max_batch_size=16,
        input=[TensorConfig(name="pixel_values", dims=[3, 224, 224])],
        output=[TensorConfig(name="logits", dims=[1000]), TensorConfig(name="aux", data_type="TYPE_INT64", dims=[-1])],
        dynamic_batching=DynamicBatching(
            preferred_batch_size=[4, 8],
            max_queue_delay_microseconds=2000,
            default_queue_policy=QueuePolicy(default_timeout_microseconds=5_000_000, max_queue_size=64,
                                             allow_timeout_override=False, timeout_action="DELAY"),
        ),
        instance_group=[InstanceGroup(count=2, kind="KIND_CPU"), InstanceGroup(kind="KIND_GPU")],
        latest_versions=2,
    )


def to_proto(cfg: ModelConfig) -> pb.ModelConfig:
    return text_format.Parse(cfg.to_pbtxt(), pb.ModelConfig())


def assert_same(cfg: ModelConfig, proto: pb.ModelConfig) -> None:
    assert proto.name == cfg.name and proto.platform == cfg.platform
    assert proto.max_batch_size == cfg.max_batch_size
    assert proto.version_policy.latest.num_versions == cfg.latest_versions
    for mine, theirs in ((cfg.input, proto.input), (cfg.output, proto.output)):
        assert [(t.name, t.data_type, list(t.dims)) for t in mine] == [
            (t.name, pb.DataType.Name(t.data_type), list(t.dims)) for t in theirs
        ]
    assert proto.HasField("dynamic_batching") == (cfg.dynamic_batching is not None)
    if cfg.dynamic_batching is not None:
        db, pdb = cfg.dynamic_batching, proto.dynamic_batching
        assert list(pdb.preferred_batch_size) == db.preferred_batch_size
        assert pdb.max_queue_delay_microseconds == db.max_queue_delay_microseconds
        assert pdb.HasField("default_queue_policy") == (db.default_queue_policy is not None)
        if db.default_queue_policy is not None:
            qp, pqp = db.default_queue_policy, pdb.default_queue_policy
            assert pb.ModelQueuePolicy.TimeoutAction.Name(pqp.timeout_action) == qp.timeout_action
            assert (pqp.default_timeout_microseconds, pqp.allow_timeout_override, pqp.max_queue_size) == (
                qp.default_timeout_microseconds, qp.allow_timeout_override, qp.max_queue_size)
    assert [(g.count, g.kind) for g in cfg.instance_group] == [
        (g.count, pb.ModelInstanceGroup.Kind.Name(g.kind)) for g in proto.instance_group
    ]


@pytest.mark.parametrize(
    "cfg",
    [
        full_config(),
        ModelConfig(name="demo", max_batch_size=0, input=[TensorConfig(name="x", dims=[3])],
                    output=[TensorConfig(name="y", dims=[1])]),
        ModelConfig(name="demo", max_batch_size=8, input=[TensorConfig(name="x", dims=[3, 32, 32])],
                    output=[TensorConfig(name="y", dims=[10])], dynamic_batching=DynamicBatching()),
    ],
    ids=["full", "minimal", "empty-batching"],
)
def test_written_config_parses_as_triton_protobuf(cfg: ModelConfig) -> None:
    assert_same(cfg, to_proto(cfg))


@pytest.mark.parametrize("as_one_line", [False, True])
def test_protobuf_text_reads_back(as_one_line: bool) -> None:
    cfg = full_config()
    text = text_format.MessageToString(to_proto(cfg), as_one_line=as_one_line)
    assert ModelConfig.from_pbtxt(text) == cfg


def test_every_triton_data_type_round_trips() -> None:
    for dtype in DATA_TYPES:
        cfg = ModelConfig(name="m", max_batch_size=1, input=[TensorConfig(name="x", data_type=dtype, dims=[2])],
                          output=[TensorConfig(name="y", data_type=dtype, dims=[2])])
        assert_same(cfg, to_proto(cfg))
        assert ModelConfig.from_pbtxt(text_format.MessageToString(to_proto(cfg))) == cfg


names = st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), min_size=1, max_size=12)
names |= st.sampled_from(['a"b', "back\\slash", "tab\there", "new\nline", "bell\x07", "é", "模型"])


@given(name=names, tensor=names)
@settings(max_examples=80, deadline=None)
def test_names_with_quotes_and_unicode_survive_both_ways(name: str, tensor: str) -> None:
    cfg = ModelConfig(name=name, max_batch_size=2, input=[TensorConfig(name=tensor, dims=[1])],
                      output=[TensorConfig(name="y", dims=[1])])
    assert_same(cfg, to_proto(cfg))
    for as_utf8 in (False, True):
        assert ModelConfig.from_pbtxt(text_format.MessageToString(to_proto(cfg), as_utf8=as_utf8)) == cfg


def test_triton_written_configs_with_unmodelled_fields_still_read() -> None:
    text = """
    name: "resnet"  # a comment
    platform: "onnxruntime_onnx"
    max_batch_size: 8
    input [ { name: "in" data_type: TYPE_FP32 format: FORMAT_NCHW dims: [ 3, 224, 224 ] } ]
    output [ { name: "out" data_type: TYPE_FP32 dims: [ 1000 ] label_filename: "labels.txt" } ]
    dynamic_batching { preferred_batch_size: 4 preferred_batch_size: 8 max_queue_delay_microseconds: 100 }
    optimization { execution_accelerators { gpu_execution_accelerator : [ { name : "tensorrt" } ] } }
    parameters { key: "k" value: { string_value: "v" } }
    """
    text_format.Parse(text, pb.ModelConfig())  # it is valid Triton config
    cfg = ModelConfig.from_pbtxt(text)
    assert cfg.input[0].dims == [3, 224, 224] and cfg.dynamic_batching.preferred_batch_size == [4, 8]


@pytest.mark.parametrize("text", ['name: "x', "input [ { name: \"x\" }", "name: {", "dims: [ 1, 2", "}"])
def test_broken_text_raises_pbtxt_error(text: str) -> None:
    with pytest.raises(PbtxtError):
        ModelConfig.from_pbtxt(text)


@pytest.mark.parametrize("cfg", [full_config(), full_config().model_copy(update={"dynamic_batching": None,
                                                                                 "instance_group": []})])
def test_config_json_parses_as_triton_protobuf_json(cfg: ModelConfig) -> None:
    doc = config_to_v2_json(cfg)
    proto = json_format.ParseDict(doc, pb.ModelConfig())
    assert_same(cfg, proto)
    assert proto.backend == "onnxruntime"
    assert doc["input"][0]["dims"] == [3, 224, 224], "integers are JSON numbers, as Triton prints them"


def test_an_openvino_backend_config_parses_as_triton_protobuf_both_ways() -> None:
    """A config naming Triton's OpenVINO backend: no platform (Triton refuses one naming another backend), the
    model file name and the backend's parameters map, written and read back, and as the /config endpoint's JSON."""
    cfg = full_config().model_copy(update={
        "backend": "openvino", "platform": "", "default_model_filename": "model.xml",
        "parameters": {"HINT_BF16": "YES", "NUM_STREAMS": "1", "INFERENCE_PRECISION_HINT": "bf16"}})
    proto = to_proto(cfg)
    assert_same(cfg, proto)
    assert proto.backend == "openvino" and proto.platform == "" and proto.default_model_filename == "model.xml"
    assert {k: v.string_value for k, v in proto.parameters.items()} == cfg.parameters
    assert ModelConfig.from_pbtxt(text_format.MessageToString(proto)) == cfg
    assert ModelConfig.from_pbtxt(cfg.to_pbtxt()) == cfg
    json_format.ParseDict(config_to_v2_json(cfg), pb.ModelConfig())
    # read without a platform, a backend's config has none (not the ONNX default)
    assert ModelConfig.from_pbtxt('name: "m" backend: "openvino" max_batch_size: 1').platform == ""
    assert ModelConfig.from_pbtxt('name: "m" max_batch_size: 1').platform == "onnxruntime_onnx"

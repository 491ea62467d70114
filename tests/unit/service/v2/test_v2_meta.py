"""Metadata, /config JSON and statistics of the v2 protocol (service/api/v2_meta.py)."""

from __future__ import annotations

import pytest

from service.api.v2_meta import ModelStatisticsResponse, model_metadata, model_statistics, server_metadata
from service.api.v2_wire import TensorSpec, input_specs
from service.model_config import DynamicBatching, ModelConfig, TensorConfig
from service.stats import StatsAccumulator

CFG = ModelConfig(
    name="demo",
    max_batch_size=4,
    input=[TensorConfig(name="pixel_values", dims=[3, 4, 4])],
    output=[TensorConfig(name="logits", dims=[5])],
    dynamic_batching=DynamicBatching(max_queue_delay_microseconds=2000),
)


def test_model_metadata_matches_triton_shape_convention() -> None:
    meta = model_metadata("demo", [1, 2], CFG).model_dump()
    assert meta == {
        "name": "demo", "versions": ["1", "2"], "platform": "onnxruntime_onnx",
        "inputs": [{"name": "pixel_values", "datatype": "FP32", "shape": [-1, 3, 4, 4]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 5]}],
    }
    unbatched = CFG.model_copy(update={"max_batch_size": 0})
    assert model_metadata("demo", ["1"], unbatched).inputs[0].shape == [3, 4, 4]
    assert input_specs(CFG) == {"pixel_values": TensorSpec("FP32", (3, 4, 4))}


def test_server_metadata_lists_extensions() -> None:
    meta = server_metadata("0.1.0")
    assert meta.name == "vitserve" and "binary_tensor_data" in meta.extensions


def test_statistics_accumulate_like_triton() -> None:
    acc = StatsAccumulator("demo", "1")
    acc.record_execution(batch_size=3, compute_infer_ns=900, now_ms=1234)
    acc.record_execution(batch_size=1, compute_infer_ns=100, compute_input_ns=5, now_ms=2000)
    for _ in range(4):
        acc.record_success(total_ns=1000, queue_ns=200, compute_infer_ns=300)
    acc.record_failure(total_ns=50)
    stats = model_statistics(acc.snapshot())
    assert (stats.inference_count, stats.execution_count, stats.last_inference) == (4, 2, 2000)
    assert stats.inference_stats.success.model_dump() == {"count": 4, "ns": 4000}
    assert stats.inference_stats.fail.model_dump() == {"count": 1, "ns": 50}
    assert stats.inference_stats.queue.model_dump() == {"count": 4, "ns": 800}
    assert [(b.batch_size, b.compute_infer.ns) for b in stats.batch_stats] == [(1, 100), (3, 900)]
    doc = ModelStatisticsResponse(model_stats=[stats]).model_dump()
    assert doc["model_stats"][0]["inference_stats"]["compute_infer"] == {"count": 4, "ns": 1200}
    with pytest.raises(ValueError, match="batch_size"):
        acc.record_execution(batch_size=0)

"""ONNX Runtime sessions: providers actually obtained, thread settings, warm-up, top-k."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.postprocess import top_k_predictions
from service.repository import read_model
from service.runtimes import RuntimeSpec, warmup_sizes
from service.runtimes.onnxruntime.runtime import OnnxRuntime
from service.runtimes.onnxruntime.session import session_config


def spec_for(repo: Path, name: str, providers: list[str]) -> RuntimeSpec:
    entry = read_model(repo, name)
    cfg = session_config(providers, 0, 1, False, "all", cpu_count=4)
    version = max(entry.versions)
    return RuntimeSpec(name, version, entry.manifest, 8, entry.verify(version), entry.config, options=cfg)


def test_session_runs_and_reports_the_provider_it_really_got(tiny_repository: Path) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "integration"))
    from tiny_repository import TinyModel, expected_logits

    rt = OnnxRuntime(spec_for(tiny_repository, "tiny_a", ["TensorrtExecutionProvider", "CPUExecutionProvider"]))
    import onnxruntime as ort

    assert rt.provider == rt._session.get_providers()[0]
    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        assert rt.provider == "CPUExecutionProvider"
    # what its batches hold at the compute gate: the session's intra-op threads on the CPU, nothing on a GPU
    assert rt.cpu_threads == (4 if rt.provider == "CPUExecutionProvider" else 0)
    assert rt._session.get_session_options().intra_op_num_threads == 4
    x = np.random.default_rng(0).normal(size=(3, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(rt.run(x), expected_logits(TinyModel("tiny_a"), 1, x), rtol=1e-5, atol=1e-5)
    rt.warmup(warmup_sizes(8, "all"))


def test_every_session_may_use_every_core_and_spins_only_when_asked() -> None:
    auto = session_config(["CPUExecutionProvider"], 0, 1, None, "all", cpu_count=8)
    assert (auto.intra_op_threads, auto.allow_spinning) == (8, False)  # the compute gate shares the cores
    explicit = session_config(["CPUExecutionProvider"], 3, 1, True, "all", cpu_count=2)
    assert (explicit.intra_op_threads, explicit.allow_spinning) == (3, True)


def test_provider_choice_keeps_order_and_cpu_fallback() -> None:
    from service.runtimes.onnxruntime.providers import CudaStatus, usable_providers

    gpu = CudaStatus(usable={"TensorrtExecutionProvider": True, "CUDAExecutionProvider": True}, reasons={})
    none = CudaStatus(usable={"TensorrtExecutionProvider": False, "CUDAExecutionProvider": False},
                      reasons={"CUDAExecutionProvider": "no NVIDIA driver"})
    both = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert usable_providers(["TensorrtExecutionProvider", "CUDAExecutionProvider"], ["CPUExecutionProvider"], gpu) == [
        "CPUExecutionProvider"
    ]
    assert usable_providers(["CUDAExecutionProvider"], both, none) == ["CPUExecutionProvider"]
    assert usable_providers(both, both, gpu) == both


def test_warmup_covers_every_batch_size_the_batcher_can_make() -> None:
    assert warmup_sizes(5, "all") == [1, 2, 3, 4, 5]
    assert warmup_sizes(12, "pow2") == [1, 2, 4, 8, 12]
    assert warmup_sizes(12, "one") == [1]


def test_automatic_warmup_is_batch_one_on_cpu_and_the_sizes_that_matter_elsewhere(tiny_repository: Path) -> None:
    from fakes import EchoRuntime

    cpu = OnnxRuntime(spec_for(tiny_repository, "tiny_a", ["CPUExecutionProvider"]))
    assert cpu.provider == "CPUExecutionProvider"
    assert cpu.auto_warmup_sizes(32, [4, 8]) == [1]  # a new batch size costs no more on its first run
    other = EchoRuntime(spec_for(tiny_repository, "tiny_a", ["CPUExecutionProvider"]))  # not ONNX Runtime's CPU
    assert other.auto_warmup_sizes(32, [3, 8, 40]) == [1, 2, 3, 4, 8, 16, 32]
    assert other.auto_warmup_sizes(12) == [1, 2, 4, 8, 12]


def test_signature_mismatch_is_refused(tiny_repository: Path) -> None:
    spec = spec_for(tiny_repository, "tiny_a", ["CPUExecutionProvider"])
    bad = spec.manifest.model_copy(update={"input_name": "images"})
    with pytest.raises(ValueError, match="no input 'images'"):
        OnnxRuntime(RuntimeSpec(spec.name, 1, bad, 8, spec.model_path, options=spec.options))


def test_top_k_is_sorted_softmax() -> None:
    logits = np.array([[0.0, 2.0, 1.0]], dtype=np.float32)
    preds = top_k_predictions(logits, 2, ["a", "b", "c"])[0]
    assert [p.label for p in preds] == ["b", "c"]
    assert preds[0].score == pytest.approx(np.exp(2) / (1 + np.exp(1) + np.exp(2)))
    assert len(top_k_predictions(logits, 10, ["a", "b", "c"])[0]) == 3


def test_top_k_predictions_are_the_softmax_ranks_with_labels_and_serialise_the_same() -> None:
    from service.schemas import Prediction

    rng = np.random.default_rng(1)
    logits = np.concatenate([rng.standard_normal((3, 7)), np.zeros((1, 7)), np.full((1, 7), 80.0)]).astype(np.float32)
    labels = [f"class {i} ✓" for i in range(7)]
    for k in (1, 3, 7, 9):
        got = top_k_predictions(logits, k, labels)
        for row, preds in zip(logits, got, strict=True):
            z = np.exp(row.astype(np.float64) - row.max())
            probs = z / z.sum()
            order = sorted(range(7), key=lambda i: (-probs[i], i))[:k]  # ties: the lower index first
            expected = [Prediction.model_construct(label=labels[i], index=i, score=float(probs[i])) for i in order]
            assert [p.model_dump_json() for p in preds] == [p.model_dump_json() for p in expected]
            assert all(type(p.score) is float and type(p.index) is int for p in preds)

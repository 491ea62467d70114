"""The ONNX Runtime runtime's own options: the same VITSERVE_* variables and serve flags as before they left the
server-wide Settings, overridden by `Settings.runtime_options`, checked at start."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.cli import build_parser, main, settings_from_args
from service.runtimes import check_runtime_options, runtime_options_types
from service.runtimes.onnxruntime.options import OnnxRuntimeOptions
from service.runtimes.onnxruntime.runtime import settings_session_config
from service.settings import Settings

ORT_VARIABLES = ("PROVIDERS", "INTRA_OP_THREADS", "INTER_OP_THREADS", "ALLOW_SPINNING", "GRAPH_OPTIMIZATION_LEVEL",
                 "TRT_ENGINE_CACHE_DIR")


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ORT_VARIABLES:
        monkeypatch.delenv(f"VITSERVE_{name}", raising=False)


def test_defaults() -> None:
    o = OnnxRuntimeOptions()
    assert o.providers == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    threads = (o.intra_op_threads, o.inter_op_threads)
    assert threads == (0, 1) and (o.allow_spinning, o.graph_optimization_level) == (False, "all")
    assert o.trt_engine_cache_dir is None


def test_the_same_environment_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VITSERVE_PROVIDERS", "CUDAExecutionProvider,CPUExecutionProvider")
    monkeypatch.setenv("VITSERVE_INTRA_OP_THREADS", "3")
    monkeypatch.setenv("VITSERVE_INTER_OP_THREADS", "2")
    monkeypatch.setenv("VITSERVE_ALLOW_SPINNING", "true")
    monkeypatch.setenv("VITSERVE_GRAPH_OPTIMIZATION_LEVEL", "basic")
    monkeypatch.setenv("VITSERVE_TRT_ENGINE_CACHE_DIR", str(tmp_path))
    o = OnnxRuntimeOptions()
    assert o.providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    threads = (o.intra_op_threads, o.inter_op_threads)
    assert threads == (3, 2) and (o.allow_spinning, o.graph_optimization_level) == (True, "basic")
    assert o.trt_engine_cache_dir == tmp_path


@pytest.mark.parametrize("field, value", [("providers", ["WarpDriveExecutionProvider"]), ("providers", []),
                                          ("intra_op_threads", -1), ("inter_op_threads", 0),
                                          ("graph_optimization_level", "max")])
def test_bad_values_fail(field: str, value: object) -> None:
    with pytest.raises(ValidationError):
        OnnxRuntimeOptions(**{field: value})


def test_flags_land_in_runtime_options_and_win_over_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VITSERVE_INTRA_OP_THREADS", "5")
    monkeypatch.setenv("VITSERVE_ALLOW_SPINNING", "1")
    args = build_parser().parse_args(["serve", "--repository", str(tmp_path), "--providers", "CPUExecutionProvider",
                                      "--intra-op-threads", "2", "--inter-op-threads", "3", "--port", "9000"])
    s = settings_from_args(args)
    assert s.port == 9000
    assert s.runtime_options == {"providers": ["CPUExecutionProvider"], "intra_op_threads": 2, "inter_op_threads": 3}
    cfg = settings_session_config(s, 1)
    assert (cfg.providers, cfg.intra_op_threads, cfg.inter_op_threads, cfg.allow_spinning) == (
        ["CPUExecutionProvider"], 2, 3, True)


def test_bad_runtime_values_fail_at_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--repository", str(tmp_path), "--providers", "WarpDriveExecutionProvider"]) == 2
    assert "WarpDriveExecutionProvider" in capsys.readouterr().err
    monkeypatch.setenv("VITSERVE_GRAPH_OPTIMIZATION_LEVEL", "max")
    assert main(["serve", "--repository", str(tmp_path)]) == 2
    assert "graph_optimization_level" in capsys.readouterr().err


def test_an_override_no_runtime_knows_is_refused(tmp_path: Path) -> None:
    assert OnnxRuntimeOptions in runtime_options_types()
    check_runtime_options(Settings(repository=tmp_path, runtime_options={"intra_op_threads": 1}).runtime_options)
    with pytest.raises(ValueError, match="belong to no runtime"):
        check_runtime_options({"intra_op_thread": 1})

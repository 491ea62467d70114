"""Comparison 6 (GPU) harness: refuses without a usable CUDA (figures stay "unmeasured on GPU"), and its
--cpu-check mode runs every configuration end to end (fp32, fp16 copy, TensorRT-configured model with
an empty then a warm engine cache) on the CPU provider — the script works, the figures are labelled
as not GPU ones, and the summary keeps saying "unmeasured on GPU". Never timings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import gpu
from bench.loadgen import MeasureConfig
from bench.summary import UNMEASURED, _gpu_section

CFG = MeasureConfig(window_s=0.5, warmup_s=0.2, max_windows=2, stability_windows=2, fixed_duration_s=0.8)


def test_refuses_without_cuda(tmp_path: Path) -> None:
    if gpu.cuda_problem() is None:
        pytest.skip("this machine has a usable CUDA")
    with pytest.raises(RuntimeError, match="GPU figures stay unmeasured"):
        gpu.run(["vit_small"], quick=True, cache=tmp_path, out_dir=tmp_path)
    assert not (tmp_path / "gpu-repository").exists()  # refused before building anything


def test_cpu_check_runs_every_configuration(tmp_path: Path) -> None:
    directory = gpu.run(["demo"], quick=True, cache=tmp_path / "cache", out_dir=tmp_path / "out", cpu_check=True,
                        concurrencies=(1,), measure=CFG)
    data = json.loads((directory / "gpu.json").read_text())
    assert data["cpu_check"] is True
    rows = {r["config"]: r for r in data["results"]}
    assert list(rows) == ["fp32 CUDA", "fp16 CUDA", "TensorRT FP16"]
    assert [rows[c]["model"] for c in rows] == ["demo", "demo-fp16", "demo-trt"]
    for r in rows.values():
        assert r["provider"] == "CPUExecutionProvider" and r["valid"]
        (point,) = r["points"]
        assert point["concurrency"] == 1 and point["requests"] > 0 and point["errors_by_status"] == {}
        assert point["server_cpu_cores"] is not None
    trt = rows["TensorRT FP16"]
    assert trt["engine_build_load_seconds"] > 0 and trt["cached_engine_load_seconds"] > 0
    md = (directory / "gpu.md").read_text()
    assert "these are not GPU figures" in md
    # a CPU check never fills the GPU table of BENCHMARKS.md
    section = "\n".join(_gpu_section(data))
    assert UNMEASURED in section and "|" not in section  # no table of figures, only what a GPU run would fill

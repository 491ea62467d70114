"""Smoke: `vitserve-bench multi` on the demo preset, this checkout measured against itself as the baseline.

Uses the committed demo models (same names as the preset's build) so nothing is exported; checks
the report's structure, the results files and that no request failed — never timings.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from bench import multi
from bench.loadgen import MeasureConfig
from bench.summary import build_summary

ROOT = Path(__file__).resolve().parents[2]
TINY = MeasureConfig(window_s=0.4, warmup_s=0.2, max_windows=2, stability_windows=2, fixed_duration_s=0.6)


def test_multi_compares_the_side_by_side_repository_with_single_model_servers(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    names = [m.model_name for m in multi.side_by_side_models("demo")]
    for name in names:  # the trained demo models stand in for the preset's random-weight build
        shutil.copytree(ROOT / "models" / "demo" / name, cache / "repository" / name, copy_function=os.link)
    out = tmp_path / "results"
    directory = multi.run("demo", quick=True, cache=cache, out_dir=out, baseline_root=ROOT, all_at_once=True,
                          measured=1, cfg=TINY)

    data = json.loads((directory / "multi_demo.json").read_text())
    assert data["models"] == names and data["measured"] == ["demo"]
    assert [r["label"] for r in data["runs"]] == ["before", "after"]
    for run in data["runs"]:
        points = [*run["single"]["demo"].values(), *run["multi"]["loaded_idle"]["demo"].values(),
                  *run["multi"]["all_at_once"].values()]
        points = [p for p in points if isinstance(p, dict)]
        assert len(points) == 4 + len(names)
        assert all(p["errors_by_status"] == {} and p["requests"] > 0 for p in points)
        assert set(run["multi"]["all_at_once"]) == set(names)
        assert set(run["multi"]["load_seconds"]) == set(names)
        assert all(v is not None and v > 0 for v in run["multi"]["load_seconds"].values())
        assert [t["target"].split(",")[0] for t in run["targets"]] == [
            "lone-request p50", "throughput at c=16", "time to ready"]
        assert run["ratios"]["per_model"]["demo"]["p50_ratio"] > 0
    assert run["server_root"] is None and data["runs"][0]["server_root"] == str(ROOT)
    for png in ("p50_ratio_demo.png", "throughput_ratio_demo.png"):
        assert (directory / png).stat().st_size > 0
    # the whole repository is linked, not copied, into the side-by-side repository
    assert (cache / "multi-demo" / "demo" / "1" / "model.onnx").stat().st_nlink >= 2
    summary = build_summary(out, tmp_path / "BENCHMARKS.md")
    assert "## 7. Every variant side by side" in summary and "| before | demo |" in summary


def test_the_side_by_side_repository_follows_a_rebuilt_cache(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(ROOT / "models" / "demo" / "demo", cache / "repository" / "demo")
    repo = multi.side_by_side_repository(cache, "demo", ["demo"])
    linked = repo / "demo" / "1" / "model.onnx"
    assert linked.samefile(cache / "repository" / "demo" / "1" / "model.onnx")
    # the cache's model is rebuilt (new files, new manifest): the next run links the new build
    shutil.rmtree(cache / "repository" / "demo")
    shutil.copytree(ROOT / "models" / "demo" / "demo-cb", cache / "repository" / "demo")
    multi.side_by_side_repository(cache, "demo", ["demo"])
    assert linked.samefile(cache / "repository" / "demo" / "1" / "model.onnx")
    assert not list(repo.glob(".*.tmp"))

"""Reports: markdown tables, JSON without NaN, plots written, BENCHMARKS.md generated from results."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench.cli import build_parser
from bench.loadgen import Sample, summarise
from bench.report import fmt, md_table, perf_analyzer_table, plot_latency_throughput, write_result
from bench.summary import build_summary


def _point(c: int, errors: int = 0):
    samples = [Sample(start=0.0, end=0.001 * (i + 1), status=200, server={"queue": 1e-4, "compute": 5e-4})
               for i in range(20)]
    samples += [Sample(start=0.0, end=0.1, status=503)] * errors
    return summarise(samples, wall_s=1.0, cpu_s=0.01, mode="concurrency", windows=3, stable=True, concurrency=c)


def test_md_table_formats_cells() -> None:
    table = md_table(["a", "b"], [[1.23456, None], [float("nan"), 12345.6]])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1.23 | — |", "| — | 12,346 |"]
    assert fmt(0.0123) == "0.0123"


def test_perf_analyzer_table_lists_errors_by_status() -> None:
    table = perf_analyzer_table([_point(1), _point(4, errors=2)])
    lines = table.splitlines()
    assert lines[0].startswith("| Concurrency | Inferences/Second | Client Send |")
    assert "503: 2" in lines[3]


def test_results_are_strict_json_and_plots_are_written(tmp_path: Path) -> None:
    point = _point(2)
    nan_point = summarise([Sample(start=0, end=1, status=0)], wall_s=1.0, cpu_s=0.0, mode="concurrency", windows=1,
                          stable=False, concurrency=1)
    assert math.isnan(nan_point.latency_us["p50"])
    directory = write_result("x", {"points": [point, nan_point], "path": tmp_path}, "# x", tmp_path)
    data = json.loads((directory / "x.json").read_text())  # NaN became null: strict JSON
    assert data["points"][1]["latency_us"]["p50"] is None
    assert (directory / "x.md").read_text() == "# x\n"
    png = plot_latency_throughput({"s": [point, _point(4)]}, directory / "p.png", "t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_summary_without_results_says_so_and_lists_targets_not_run(tmp_path: Path) -> None:
    text = build_summary(tmp_path / "results", tmp_path / "BENCHMARKS.md")
    assert "No results yet" in text
    assert "**not run**" in text
    assert (tmp_path / "BENCHMARKS.md").read_text() == text


@pytest.mark.parametrize("argv", [
    ["load", "--url", "http://127.0.0.1:1", "--model", "m", "--concurrency", "1,2"],
    ["variants", "--quick"], ["ceiling", "--preset", "demo", "--quick"], ["gemm", "--quick"], ["roofline"],
    ["int8", "--quick"], ["peers", "--peer", "litserve", "--quick"], ["summary"], ["all", "--quick", "--skip-peers"],
])
def test_every_comparison_has_a_subcommand(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert callable(args.func)


def test_bad_concurrency_list_is_refused() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["load", "--url", "u", "--model", "m", "--concurrency", "0,x"])

"""Reports: markdown tables, JSON without NaN, plots written, BENCHMARKS.md generated from results."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench.cli import build_parser
from bench.report import fmt, md_table, perf_analyzer_table, plot_latency_throughput, write_result
from bench.results import Sample, summarise
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


def test_pareto_front_keeps_points_no_other_beats_on_both_cost_and_accuracy(tmp_path: Path) -> None:
    from bench.report import pareto_front, plot_pareto

    points = [("vanilla", 1.0, 96.0), ("cb", 1.1, 97.0), ("gab", 1.2, 96.5), ("reattn", 1.5, 97.0), ("fast", 0.8, 90.0)]
    assert pareto_front(points) == ["vanilla", "cb", "fast"]
    assert plot_pareto(points, tmp_path / "p.png", "t", "ms", "top-1 %").stat().st_size > 0


def test_variants_table_shows_accuracy_only_within_the_vanilla_dataset_identity() -> None:
    from bench.variants import accuracy_points, markdown

    def row(label: str, top1: float | None, dataset: str | None) -> dict:
        timings = [{"batch_size": b, "median_s": 0.001 * b} for b in (1, 8, 32)]
        return {"label": label, "flops": 1e9, "parameters": 1e6, "flops_ratio": 1.0, "ort": timings,
                "torch_eager": timings, "ort_latency_ratio": {1: 1.0, 8: 1.0, 32: 1.0},
                "torch_latency_ratio": {1: 1.0, 8: 1.0}, "top1": top1, "top5": top1, "dataset": dataset}

    res = {"rows": [row("vanilla", 0.96, "d@1"), row("cb", 0.97, "d@1"), row("gab", 0.99, "other@2"),
                    row("reattn", None, None)]}
    assert [p[0] for p in accuracy_points(res)] == ["vanilla", "cb"]
    lines = markdown(res).splitlines()
    assert "top-1 %" in lines[0] and "dataset" in lines[0]
    delta = lines[0].split(" | ").index("Δ top-1 vs vanilla (points)")
    cb, gab = lines[3].split(" | "), lines[4].split(" | ")
    assert cb[delta] == "1.00" and gab[delta] == "—"  # Δ vs vanilla only on the same dataset identity


def test_random_builds_report_the_accuracy_of_the_same_architecture_trained_model(tmp_path: Path) -> None:
    from bench.variants import _accuracy, _evaluated
    from service.manifest import Manifest

    trained = tmp_path / "trained"
    committed = Path(__file__).resolve().parents[2] / "models" / "demo" / "demo-cb" / "vitserve.json"
    data = json.loads(committed.read_text())
    data["evaluation"] = {"top1": 0.96, "top5": 1.0, "num_images": 397, "dataset": {
        "name": "digits", "fingerprint": "ab" * 32, "split": "val/", "num_classes": 10}}
    (trained / "demo-cb").mkdir(parents=True)
    (trained / "demo-cb" / "vitserve.json").write_text(json.dumps(data))
    random_build = Manifest.model_validate({**data, "evaluation": None})
    source, where = _evaluated(random_build, trained)
    assert _accuracy(source, where)["top1"] == 0.96 and where == str(trained)
    other = Manifest.model_validate({**data, "evaluation": None, "variant_options": {"cb_layers": [0]}})
    assert _evaluated(other, trained) == (other, None)  # another architecture lends nothing
    assert _accuracy(*_evaluated(random_build, None))["top1"] is None


def test_each_row_says_how_its_model_was_obtained_and_reports_the_fine_tuned_copy(tmp_path: Path) -> None:
    from bench.variants import _accuracy, _finetuned, markdown, obtained
    from service.manifest import Manifest

    committed = Path(__file__).resolve().parents[2] / "models" / "demo" / "demo-cb" / "vitserve.json"
    data = json.loads(committed.read_text())
    recipe = {"start": "random(seed=0)", "epochs": 30, "batch_size": 64, "lr": 1e-3, "weight_decay": 0.05,
              "warmup_epochs": 1, "label_smoothing": 0.1, "augmentation": "affine", "device": "cpu", "seed": 0,
              "train_images": 1400}
    evaluation = {"top1": 0.95, "top5": 1.0, "num_images": 397, "dataset": {
        "name": "digits", "fingerprint": "ab" * 32, "split": "val/", "num_classes": 10}}
    scratch = Manifest.model_validate({**data, "evaluation": {**evaluation, "recipe": recipe}})
    assert obtained(scratch) == "from scratch (30 epochs)"
    assert _accuracy(scratch)["obtained"] == "from scratch (30 epochs)"
    tuned = {**data, "evaluation": {**evaluation, "top1": 0.97, "recipe": {
        **recipe, "start": "checkpoint:demo.pth", "epochs": 8, "norm_statistics": "frozen"}}}
    (tmp_path / "demo-cb").mkdir()
    (tmp_path / "demo-cb" / "vitserve.json").write_text(json.dumps(tuned))
    row = _finetuned(scratch, tmp_path)
    assert row == {"finetuned_top1": 0.97, "finetuned_obtained": "converted + fine-tuned (8 epochs)",
                   "finetuned_dataset": scratch.evaluation.dataset.key}
    assert _finetuned(scratch, None)["finetuned_top1"] is None
    other = Manifest.model_validate({**data, "variant_options": {"cb_layers": [0]}, "evaluation": evaluation})
    assert _finetuned(other, tmp_path)["finetuned_top1"] is None  # another architecture lends nothing

    timings = [{"batch_size": b, "median_s": 0.001 * b} for b in (1, 8, 32)]
    rows = [{"label": "cb", "flops": 1e9, "parameters": 1e6, "flops_ratio": 1.0, "ort": timings,
             "torch_eager": timings, "ort_latency_ratio": {1: 1.0, 8: 1.0, 32: 1.0},
             "torch_latency_ratio": {1: 1.0, 8: 1.0}, **_accuracy(scratch), **row}]
    header, _, line = markdown({"rows": rows}).splitlines()
    cells = dict(zip(header.split(" | "), line.split(" | "), strict=True))
    assert cells["obtained"] == "from scratch (30 epochs)"
    assert cells["top-1 % converted + fine-tuned"] == "97.00"

"""Writing results: JSON (everything), a markdown table (for people) and PNG plots (matplotlib, Agg).

Each comparison writes into `bench/results/<comparison>/`: `<comparison>.json` with the machine
block, the exact command line and every raw figure; `<comparison>.md` with the tables; and its
plots. The files are overwritten by the next run, so the directory always holds the latest run
and BENCHMARKS.md can link to it.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from bench.results import PERF_ANALYZER_COLUMNS, LoadPoint

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def command_line() -> str:
    """The command as typed (entry point name instead of the script path)."""
    argv = list(sys.argv)
    if argv and argv[0].endswith("vitserve-bench"):
        argv[0] = "vitserve-bench"
    return " ".join(argv)


def fmt(value: Any, digits: int = 2) -> str:
    """A table cell: floats rounded, NaN/None as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if value != 0 and abs(value) < 0.1:
            return f"{value:.3g}"
        return f"{value:.{digits}f}"
    return str(value)


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table."""
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        out.append("| " + " | ".join(fmt(c) for c in row) + " |")
    return "\n".join(out)


def frontend_table(frontend: Mapping[str, Mapping[str, Any]]) -> str:
    """Front-end CPU per inference per path (bench/ceiling.py: `frontend_cpu`, or `paired_frontend_cpu`'s median
    rounds, whose every round is listed in two more columns), as a markdown table."""
    rounds = any("rounds" in f for f in frontend.values())
    headers = ["path", "server CPU µs/inference", "server mean batch", "raw CPU µs/image at that batch",
               "front-end CPU µs/inference", "event-loop thread CPU µs/inference"]
    if rounds:
        headers += ["front-end, each round", "event loop, each round"]
    rows = []
    for path, f in frontend.items():
        row = [path, _us(f["server_cpu_us_per_inference"]), f["server_mean_batch_size"], _us(f["raw_cpu_us_per_image"]),
               _us(f["frontend_cpu_us_per_inference"]), _us(f.get("event_loop_cpu_us_per_inference"))]
        if rounds:
            row += [" / ".join(str(_us(v)) for v in f.get(key, [])) for key in ("rounds", "event_loop_rounds")]
        rows.append(row)
    return md_table(headers, rows)


def _us(value: float | None) -> int | None:
    return None if value is None or math.isnan(value) else round(value)


def perf_analyzer_table(points: Sequence[LoadPoint]) -> str:
    """Load points as perf_analyzer's table (usec), plus errors and the generator's CPU use."""
    headers = [*PERF_ANALYZER_COLUMNS, "errors", "client CPU (cores)", "server CPU (cores)", "server CPU us/inference",
               "stable"]
    if points and points[0].mode == "rate":
        headers[0] = "Request Rate"
    rows = []
    for p in points:
        row = list(p.perf_analyzer_row().values())
        errs = ", ".join(f"{k}: {v}" for k, v in sorted(p.errors_by_status.items())) or "0"
        rows.append([*row, errs, round(p.client_cpu_cores, 2), p.server_cpu_cores, p.server_cpu_us_per_inference,
                     "yes" if p.stable else "no"])
    return md_table(headers, rows)


def jsonable(obj: Any) -> Any:
    if isinstance(obj, BaseModel):
        return jsonable(obj.model_dump(mode="json"))
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


def write_result(comparison: str, data: Mapping[str, Any], markdown: str, out_dir: Path | None = None) -> Path:
    """Write `<out>/<comparison>/<comparison>.json` and `.md`; return the directory."""
    directory = (out_dir or RESULTS_DIR) / comparison
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{comparison}.json").write_text(json.dumps(jsonable(data), indent=2, allow_nan=False) + "\n")
    (directory / f"{comparison}.md").write_text(markdown.rstrip() + "\n")
    return directory


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_axes(plt: Any, fig: Any, ax: Any, path: Path, title: str, xlabel: str, ylabel: str) -> Path:
    """Label, grid and save a one-axes figure (the scatter plots' common finish)."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_latency_throughput(
    curves: Mapping[str, Sequence[LoadPoint]], path: Path, title: str, percentile_key: str = "p99"
) -> Path:
    """Latency (ms, log scale) against throughput (infer/s), one line per server or variant."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, points in curves.items():
        pts = sorted((p for p in points if p.requests > 0), key=lambda p: p.inferences_per_second)
        if not pts:
            continue
        xs = [p.inferences_per_second for p in pts]
        ys = [p.latency_us[percentile_key] / 1000 for p in pts]
        ax.plot(xs, ys, marker="o", label=label)
        for p, x, y in zip(pts, xs, ys, strict=True):
            tag = f"c{p.concurrency}" if p.mode == "concurrency" else f"{p.request_rate:g}/s"
            ax.annotate(tag, (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
    ax.set_xlabel("throughput (inferences/s)")
    ax.set_ylabel(f"{percentile_key} latency (ms)")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_scatter(
    points: Sequence[tuple[str, float, float]], path: Path, title: str, xlabel: str, ylabel: str, diagonal: bool = False
) -> Path:
    """Labelled scatter (e.g. FLOPs ratio vs latency ratio); `diagonal` draws y = x."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for label, x, y in points:
        ax.scatter([x], [y])
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if diagonal and points:
        lo = min(min(p[1], p[2]) for p in points) * 0.95
        hi = max(max(p[1], p[2]) for p in points) * 1.05
        ax.plot([lo, hi], [lo, hi], linestyle="--", color="grey", linewidth=1, label="y = x")
        ax.legend(fontsize=8)
    return _save_axes(plt, fig, ax, path, title, xlabel, ylabel)


def pareto_front(points: Sequence[tuple[str, float, float]]) -> list[str]:
    """Labels of the (label, cost, gain) points no other point beats on both (lower cost, higher gain)."""
    front = []
    for label, cost, gain in points:
        dominated = any((c <= cost and g >= gain) and (c < cost or g > gain) for _, c, g in points)
        if not dominated:
            front.append(label)
    return front


def plot_pareto(points: Sequence[tuple[str, float, float]], path: Path, title: str, xlabel: str, ylabel: str) -> Path:
    """Accuracy (y) against a cost (x): every point labelled, the Pareto front joined by a line."""
    plt = _plt()
    front = set(pareto_front(points))
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for label, x, y in points:
        ax.scatter([x], [y], color="tab:blue" if label in front else "tab:grey")
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    line = sorted((x, y) for label, x, y in points if label in front)
    if len(line) > 1:
        ax.plot([p[0] for p in line], [p[1] for p in line], linestyle="--", color="tab:blue", linewidth=1,
                label="Pareto front")
        ax.legend(fontsize=8)
    return _save_axes(plt, fig, ax, path, title, xlabel, ylabel)


def plot_bars(values: Mapping[str, float], path: Path, title: str, ylabel: str, target: float | None = None) -> Path:
    """Bar chart of named values, with an optional target line."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5.0, 0.8 * len(values) + 2), 4))
    names = list(values)
    ax.bar(names, [values[n] for n in names])
    if target is not None:
        ax.axhline(target, color="red", linestyle="--", linewidth=1, label=f"target {target:g}")
        ax.legend(fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

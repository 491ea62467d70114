"""Issue 13 — the front end alone: the off-CPU stand-in served by 1 and by 2 front-end processes.

On a GPU a small model's batch costs the host next to nothing and the HTTP front end is what limits
throughput. The stand-in runtime (service/runtimes/standin.py) shows that regime without a GPU: it waits a
fixed time per batch (2 ms per batch of up to 64 by default) and computes nothing on the CPU, so
the server's throughput is its front end's. The benchmark serves a demo-shaped stand-in model
(3x32x32 input, 10 classes, max batch 64) with `--http-workers 1` (today's single-process server)
and `--http-workers 2` (two front ends and the engine process), each on a fresh server, and
measures v2 binary tensors and JPEG uploads at concurrency 16 and 64 (and 32, 128 without --quick).

Target (issue 13): 2 front ends ≥ 1.6 × the throughput of 1. The load generator shares the cores:
its CPU use is reported beside each point.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from bench.ceiling import measure_config
from bench.loadgen import sweep
from bench.results import LoadPoint
from bench.machine import machine_info
from bench.payloads import classify_request, encode_image, infer_request, synthetic_image
from bench.procs import vitserve_server
from bench.report import command_line, md_table, perf_analyzer_table, plot_bars, plot_latency_throughput, write_result

MODEL = "standin"
SIZE = 32
CLASSES = 10
MAX_BATCH = 64
TARGET = 1.6
WORKERS = (1, 2)


def build_repository(cache: Path) -> Path:
    """The stand-in model, demo-shaped (a repository of its own, rewritten each run: it is a few bytes)."""
    from service.runtimes.standin import write_standin_model

    root = cache / "frontend_repository"
    write_standin_model(root, MODEL, size=SIZE, num_classes=CLASSES, max_batch_size=MAX_BATCH)
    return root


def run(*, quick: bool, cache: Path, out_dir: Path | None = None, batch_ms: float = 2.0) -> Path:
    machine = machine_info()
    repository = build_repository(cache)
    v2 = infer_request(MODEL, (1, 3, SIZE, SIZE))
    jpeg = classify_request(MODEL, encode_image(synthetic_image(SIZE, SIZE), "jpeg"), "jpeg")
    cfg = measure_config(quick)
    # a closed loop is latency-bound at low concurrency (each request crosses more processes with front ends):
    # enough requests in flight to keep every front end busy
    concurrencies = [16, 64] if quick else [16, 32, 64, 128]
    log_dir = (out_dir or Path(__file__).resolve().parent / "results") / "tmp"
    log_dir.mkdir(parents=True, exist_ok=True)
    points: dict[str, dict[int, list[LoadPoint]]] = {"v2": {}, "jpeg": {}}
    env: dict[str, str] = {}
    for workers in WORKERS:
        env = {"VITSERVE_HTTP_WORKERS": str(workers), "VITSERVE_STANDIN_BATCH_MS": f"{batch_ms:g}",
               "VITSERVE_WARMUP": "one"}
        print(f"[frontend] {workers} front-end process(es)", file=sys.stderr, flush=True)
        with vitserve_server(repository, [MODEL], env=env, log_path=log_dir / f"frontend-{workers}.log") as srv:
            stats = f"/v2/models/{MODEL}/stats"
            points["v2"][workers] = sweep(srv.url, v2, concurrencies=concurrencies, cfg=cfg, protocol="v2-binary",
                                          stats_path=stats, server_pgid=srv.pid)
            points["jpeg"][workers] = sweep(srv.url, jpeg, concurrencies=concurrencies, cfg=cfg, protocol="v1-jpeg",
                                            stats_path=stats, server_pgid=srv.pid)
    machine = machine.finish()

    def best(path: str, workers: int) -> LoadPoint:
        return max(points[path][workers], key=lambda p: p.inferences_per_second)

    ratios = {path: best(path, 2).inferences_per_second / best(path, 1).inferences_per_second for path in points}
    targets = [{"target": f"2 front ends ÷ 1 ({path}, best concurrency)", "goal": f">= {TARGET}",
                "measured": ratio, "met": ratio >= TARGET} for path, ratio in ratios.items()]
    rows = [[path, workers, p.concurrency, p.inferences_per_second, p.latency_us["p50"] / 1e3,
             p.latency_us["p99"] / 1e3, p.server_cpu_cores, p.server_cpu_us_per_inference, p.client_cpu_cores,
             p.errors]
            for path in points for workers in WORKERS for p in points[path][workers]]
    data: dict[str, Any] = {
        "comparison": "frontend",
        "quick": quick,
        "command": command_line(),
        "machine": machine,
        "model": {"name": MODEL, "input": [3, SIZE, SIZE], "classes": CLASSES, "max_batch_size": MAX_BATCH,
                  "batch_ms": batch_ms},
        "points": {path: {str(w): pts for w, pts in by.items()} for path, by in points.items()},
        "ratio_2_over_1": ratios,
        "server_env": env,
        "targets": targets,
    }
    md = [
        "# Front end: the off-CPU stand-in with 1 and 2 front-end processes",
        "",
        f"Command: `{command_line()}`  ",
        f"Machine: {machine.summary()}  ",
        f"Model: stand-in, {batch_ms:g} ms per batch of up to {MAX_BATCH} (no CPU), input 3x{SIZE}x{SIZE}, "
        f"{CLASSES} classes.",
        "",
        "## Target",
        "",
        md_table(["target", "goal", "measured", "met"],
                 [[t["target"], t["goal"], t["measured"], "met" if t["met"] else "MISSED"] for t in targets]),
        "",
        "## Points",
        "",
        md_table(["path", "front ends", "concurrency", "infer/s", "p50 ms", "p99 ms", "server CPU (cores)",
                  "server CPU us/inference", "client CPU (cores)", "errors"], rows),
    ]
    for path in points:
        for workers in WORKERS:
            md += ["", f"### {path}, {workers} front end(s) (usec, perf_analyzer columns)", "",
                   perf_analyzer_table(points[path][workers])]
    directory = write_result("frontend", data, "\n".join(md), out_dir)
    plot_bars({f"{path} x{workers}": best(path, workers).inferences_per_second
               for path in points for workers in WORKERS},
              directory / "frontend_throughput.png", f"stand-in ({batch_ms:g} ms/batch): throughput by front ends",
              "inferences/s")
    plot_latency_throughput({f"{path}, {workers} front end(s)": points[path][workers]
                             for path in points for workers in WORKERS},
                            directory / "frontend_latency_throughput.png", "stand-in: latency vs throughput")
    return directory


def summary_lines(data: dict[str, Any] | None, results: Path, rel: Any) -> list[str]:
    """The BENCHMARKS.md section (bench/summary.py); `rel(path)` makes a link relative to the document."""
    md = ["", "## Front end: off-CPU stand-in with 1 and 2 front-end processes (issue 13)", ""]
    if data is None:
        return md + ["Not run (`vitserve-bench frontend --quick`).", ""]
    ratios = data["ratio_2_over_1"]
    rows = []
    for path, by in data["points"].items():
        best = {w: max(pts, key=lambda p: p["inferences_per_second"]) for w, pts in by.items()}
        rows.append([path, best["1"]["inferences_per_second"], best["2"]["inferences_per_second"], ratios[path],
                     best["2"]["client_cpu_cores"]])
    m = data["model"]
    md += [f"Command: `{data['command']}`. Stand-in: {m['batch_ms']:g} ms per batch of up to {m['max_batch_size']} "
           f"(no CPU), input {'x'.join(map(str, m['input']))}.", "",
           md_table(["path", "infer/s, 1 front end", "infer/s, 2 front ends", "2 ÷ 1 (target ≥ 1.6)",
                     "client CPU (cores), 2"], rows), "",
           "![throughput](" + rel(results / "frontend" / "frontend_throughput.png") + ")", ""]
    return md

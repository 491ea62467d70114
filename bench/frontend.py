"""Issue 13 — the front end alone: the off-CPU stand-in served by 1 and by 2 front-end processes.

On a GPU a small model's batch costs the host next to nothing and the HTTP front end is what limits
throughput. The stand-in runtime (service/runtimes/standin.py) shows that regime without a GPU: it waits a
fixed time per batch (2 ms per batch of up to 64 by default) and computes nothing on the CPU, so
the server's throughput is its front end's. The benchmark serves a demo-shaped stand-in model
(3x32x32 input, 10 classes, max batch 64) with `--http-workers 1` (today's single-process server)
and `--http-workers 2` (two front ends and the engine process), and measures v2 binary tensors and
JPEG uploads at concurrency 16 and 64 (and 128, 256 without --quick): one path at a time, both
configurations' servers up together and measured alternately at each concurrency, in `--rounds` rounds
(3 without --quick; the order of the two flips every round). This host's speed drifts by tens of percent
within minutes, so two configurations measured a sweep apart compare the host as much as the servers; a
pair measured seconds apart does not. Each configuration's point at a concurrency is its median round
(by throughput). A round's ratio is paired: the best throughput of 2 over the best of 1, both from that
round, measured seconds apart. The target reads the median of the rounds' ratios (`median_round_ratio`).
The best median of 2 over the best median of 1 is reported beside it, but the two medians can come from
different rounds and concurrencies, so the host's drift enters it: one run read 1.66 on it while none of
its rounds reached 1.60, another 1.57 while four of its five rounds passed 1.60.

Target (issue 13): 2 front ends ≥ 1.6 × the throughput of 1. The load generator shares the cores:
its CPU use is reported beside each point, and `--client wrk` (bench/wrk.py, the default when wrk is
installed) measures with a C generator that costs a fraction of the Python one's CPU per request, so
the cores go to the server. Each configuration first sends one request of each kind and checks the
answer (the stand-in's logits are a gather of the input, so a v2 answer is checked exactly); the
server's CPU per inference is split by process (engine, front ends) in the proportions each used, and the
front ends' share among them (fe0, fe1: even when the connections spread evenly).
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import urllib.error
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from bench import handoff
from bench.ceiling import measure_config
from bench.loadgen import Client, sweep
from bench.machine import machine_info
from bench.payloads import (
    RequestSpec,
    classify_request,
    encode_image,
    infer_request,
    parse_v2_binary_response,
    synthetic_image,
)
from bench.procs import group_cpu_by_name, vitserve_server
from bench.report import command_line, md_table, perf_analyzer_table, plot_bars, plot_latency_throughput, write_result
from bench.results import LoadPoint
from bench.stats import lower_median
from bench.wrk import wrk_path

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


def default_client() -> Client:
    """wrk where it is installed (the server, not the client, gets the cores), else the Python client."""
    return "wrk" if wrk_path() else "python"


def _post(url: str, spec: RequestSpec) -> tuple[int, str | None, bytes]:
    """(status, Inference-Header-Content-Length, body) of one request."""
    req = urllib.request.Request(url + spec.path, data=spec.body, headers=spec.headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.headers.get("Inference-Header-Content-Length"), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, None, e.read()


def check_answers(url: str, v2: RequestSpec, jpeg: RequestSpec) -> None:
    """One request of each kind, answered right (RuntimeError otherwise): a benchmark of wrong answers is none."""
    from service.runtimes.standin import standin_outputs
    from service.schemas import ClassifyResult

    status, length, body = _post(url, v2)
    if status != 200:
        raise RuntimeError(f"v2 check: status {status}: {body[:300]!r}")
    _, outputs = parse_v2_binary_response(body, int(length) if length else None)
    json_size = int(v2.headers["Inference-Header-Content-Length"])
    tensor = np.frombuffer(v2.body[json_size:], dtype="<f4").reshape(1, 3, SIZE, SIZE)
    if not np.array_equal(outputs.get("logits"), standin_outputs(tensor, CLASSES)):
        raise RuntimeError(f"v2 check: wrong logits {outputs.get('logits')}")
    status, _, body = _post(url, jpeg)
    if status != 200:
        raise RuntimeError(f"jpeg check: status {status}: {body[:300]!r}")
    result = ClassifyResult.model_validate(json.loads(body))
    scores = [p.score for p in result.predictions]
    if (result.model != MODEL or len(scores) != 5 or scores != sorted(scores, reverse=True)
            or len({p.index for p in result.predictions}) != 5
            or not all(0 <= p.index < CLASSES for p in result.predictions)
            or not all(math.isfinite(x) and 0 <= x <= 1 for x in scores)):
        raise RuntimeError(f"jpeg check: wrong answer {result}")


def role(name: str, several: bool) -> str:
    """A server process by its job: the engine, a front end, the supervisor (`several` front ends), or the
    single-process server (front end and engine in one)."""
    if name.startswith("vitserve-engine"):
        return "engine"
    if name.startswith("vitserve-fe"):
        return "front ends"
    return "supervisor" if several else "server"


def cpu_by_role(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds per role between two `group_cpu_by_name` readings (processes that exited are not counted)."""
    several = any(name.startswith("vitserve-engine") for name in after)
    out: dict[str, float] = {}
    for name, seconds in after.items():
        r = role(name, several)
        out[r] = out.get(r, 0.0) + seconds - before.get(name, 0.0)
    return out


def per_front_end(split: dict[str, float], before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """The front ends' CPU per inference (`split["front ends"]`) divided among them (fe0, fe1, …) as each used
    it over the point: an even division is the connections spread evenly (service/workers/accept.py)."""
    used = {name.removeprefix("vitserve-"): seconds - before.get(name, 0.0)
            for name, seconds in after.items() if name.startswith("vitserve-fe")}
    total = sum(used.values())
    if "front ends" not in split or total <= 0:
        return {}
    return {name: split["front ends"] * v / total for name, v in sorted(used.items())}


def _split(point: LoadPoint, shares: dict[str, float]) -> dict[str, float]:
    """The point's server CPU per inference split by role, in the proportions each role used over the point."""
    total = sum(shares.values())
    if point.server_cpu_us_per_inference is None or total <= 0:
        return {}
    return {r: point.server_cpu_us_per_inference * v / total for r, v in sorted(shares.items())}


def median_trial(trials: list[tuple[LoadPoint, dict[str, float]]]) -> tuple[LoadPoint, dict[str, float]]:
    """The trial of median throughput (the lower middle one of an even count): a measured point, not an average
    of points, so its latencies and CPU belong together."""
    return lower_median(trials, key=lambda t: t[0].inferences_per_second)


def best_rate(points: list[LoadPoint]) -> float:
    return max(p.inferences_per_second for p in points)


def round_ratios(trials: dict[int, dict[int, list[tuple[LoadPoint, dict[str, float]]]]]) -> list[float]:
    """Per round, the best throughput of 2 front ends over the best of 1 (`trials[workers][concurrency]` holds
    one trial per round, in order)."""
    rounds = min(len(t) for by in trials.values() for t in by.values())
    return [best_rate([t[r][0] for t in trials[2].values()]) / best_rate([t[r][0] for t in trials[1].values()])
            for r in range(rounds)]


def median_round_ratio(by_round: list[float]) -> float:
    """The target's reading: the median of the rounds' paired ratios (the mean of the middle two of an even
    count)."""
    return statistics.median(by_round)


def run(*, quick: bool, cache: Path, out_dir: Path | None = None, batch_ms: float = 2.0,
        client: Client | None = None, wrk_threads: int = 1, rounds: int | None = None) -> Path:
    client = client or default_client()
    rounds = rounds or (1 if quick else 3)
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    print(f"[frontend] load generator: {client}" + (f" ({wrk_path()}, {wrk_threads} thread(s))" if client == "wrk"
                                                     else " (bench/client.py, aiohttp)"), file=sys.stderr, flush=True)
    machine = machine_info()
    floors = handoff.measure(500 if quick else 2000)
    print("[frontend] hand-off floor, CPU µs per round trip: " + ", ".join(f"{k} {v:.0f}" for k, v in floors.items()),
          file=sys.stderr, flush=True)
    repository = build_repository(cache)
    v2 = infer_request(MODEL, (1, 3, SIZE, SIZE))
    jpeg = classify_request(MODEL, encode_image(synthetic_image(SIZE, SIZE), "jpeg"), "jpeg")
    cfg = measure_config(quick)
    # a closed loop is latency-bound at low concurrency (each request crosses more processes with front ends,
    # and more of them wait for each batch): enough requests in flight to keep every process busy
    concurrencies = [16, 64] if quick else [16, 64, 128, 256]
    log_dir = (out_dir or Path(__file__).resolve().parent / "results") / "tmp"
    log_dir.mkdir(parents=True, exist_ok=True)
    # trials[path][workers][concurrency]: one (point, CPU split by role) per round
    trials: dict[str, dict[int, dict[int, list[tuple[LoadPoint, dict[str, float]]]]]] = {}
    envs = {workers: {"VITSERVE_HTTP_WORKERS": str(workers), "VITSERVE_STANDIN_BATCH_MS": f"{batch_ms:g}",
                      "VITSERVE_WARMUP": "one"} for workers in WORKERS}
    total = 2 * rounds * len(concurrencies) * len(WORKERS)
    done = 0
    for path, spec, protocol in (("v2", v2, "v2-binary"), ("jpeg", jpeg, "v1-jpeg")):
        trials[path] = {workers: {c: [] for c in concurrencies} for workers in WORKERS}
        with ExitStack() as stack:  # both configurations up at once (the one not measured idles)
            servers = {}
            for workers in WORKERS:
                servers[workers] = stack.enter_context(vitserve_server(
                    repository, [MODEL], env=envs[workers], log_path=log_dir / f"frontend-{path}-{workers}.log"))
                check_answers(servers[workers].url, v2, jpeg)
            for r in range(rounds):
                for c in concurrencies:
                    for workers in (WORKERS if r % 2 == 0 else WORKERS[::-1]):
                        done += 1
                        print(f"[frontend] {done}/{total}: {path}, round {r + 1}/{rounds}, concurrency {c}, "
                              f"{workers} front end(s)", file=sys.stderr, flush=True)
                        srv = servers[workers]
                        cpu0 = group_cpu_by_name(srv.pid)
                        (p,) = sweep(srv.url, spec, concurrencies=[c], cfg=cfg, protocol=protocol,
                                     stats_path=f"/v2/models/{MODEL}/stats", server_pgid=srv.pid, client=client,
                                     wrk_threads=wrk_threads)
                        cpu1 = group_cpu_by_name(srv.pid)
                        split = _split(p, cpu_by_role(cpu0, cpu1))
                        trials[path][workers][c].append((p, split | per_front_end(split, cpu0, cpu1)))
    medians = {path: {w: [median_trial(t) for t in by.values()] for w, by in per.items()}
               for path, per in trials.items()}
    points = {path: {w: [m[0] for m in ms] for w, ms in per.items()} for path, per in medians.items()}
    splits = {path: {w: [m[1] for m in ms] for w, ms in per.items()} for path, per in medians.items()}
    by_round = {path: round_ratios(per) for path, per in trials.items()}
    machine = machine.finish()

    def best(path: str, workers: int) -> LoadPoint:
        return max(points[path][workers], key=lambda p: p.inferences_per_second)

    ratios = {path: best(path, 2).inferences_per_second / best(path, 1).inferences_per_second for path in points}
    paired = {path: median_round_ratio(by_round[path]) for path in points}
    targets = [{"target": f"2 front ends ÷ 1 ({path}, best concurrency; median of {rounds} paired round(s))",
                "goal": f">= {TARGET}", "measured": ratio, "met": ratio >= TARGET,
                "by_round": by_round[path], "best_median_ratio": ratios[path]} for path, ratio in paired.items()]
    rows = [[path, workers, p.concurrency, p.inferences_per_second,
             " / ".join(f"{t[0].inferences_per_second:,.0f}" for t in trials[path][workers][p.concurrency]),
             p.latency_us["p50"] / 1e3, p.latency_us["p99"] / 1e3, p.server_cpu_cores, p.server_cpu_us_per_inference,
             ", ".join(f"{r} {us:.0f}" for r, us in split.items()) or "—", p.client, p.client_cpu_cores,
             p.client_cpu_us_per_request, p.errors]
            for path in points for workers in WORKERS
            for p, split in zip(points[path][workers], splits[path][workers], strict=True)]
    data: dict[str, Any] = {
        "comparison": "frontend",
        "quick": quick,
        "command": command_line(),
        "client": client,
        "wrk_threads": wrk_threads if client == "wrk" else None,
        "machine": machine,
        "model": {"name": MODEL, "input": [3, SIZE, SIZE], "classes": CLASSES, "max_batch_size": MAX_BATCH,
                  "batch_ms": batch_ms},
        "points": {path: {str(w): pts for w, pts in by.items()} for path, by in points.items()},
        "server_cpu_us_per_inference_by_role": {path: {str(w): sp for w, sp in by.items()}
                                                for path, by in splits.items()},
        "ratio_2_over_1": ratios,
        "rounds": rounds,
        "ratio_2_over_1_by_round": by_round,
        "trials": {path: {str(w): {str(c): [t[0].inferences_per_second for t in ts] for c, ts in by.items()}
                          for w, by in per.items()} for path, per in trials.items()},
        "handoff_cpu_us": floors,
        "server_env": {str(w): e for w, e in envs.items()},  # per number of front ends
        "targets": targets,
    }
    md = [
        "# Front end: the off-CPU stand-in with 1 and 2 front-end processes",
        "",
        f"Command: `{command_line()}`  ",
        f"Machine: {machine.summary()}  ",
        f"Model: stand-in, {batch_ms:g} ms per batch of up to {MAX_BATCH} (no CPU), input 3x{SIZE}x{SIZE}, "
        f"{CLASSES} classes.  ",
        f"Load generator: {client}" + (f" ({wrk_threads} thread(s), one connection per request in flight)"
                                       if client == "wrk" else " (bench/client.py, aiohttp)") + ".",
        "",
        "## Target",
        "",
        md_table(["target", "goal", "measured", "each round", "best median ÷ best median", "met"],
                 [[t["target"], t["goal"], t["measured"], " / ".join(f"{x:.2f}" for x in t["by_round"]),
                   t["best_median_ratio"], "met" if t["met"] else "MISSED"] for t in targets]),
        "",
        "## Points",
        "",
        f"Each row is the configuration's median round at that concurrency (its latencies and CPU are that "
        f"round's); the rounds' throughputs are listed in order. Rounds: {rounds}; the two configurations were "
        "measured alternately, seconds apart, the order flipped every round.",
        "",
        md_table(["path", "front ends", "concurrency", "infer/s", "infer/s by round", "p50 ms", "p99 ms",
                  "server CPU (cores)", "server CPU us/inference", "… by process (us)", "client", "client CPU (cores)",
                  "client CPU us/request", "errors"], rows),
        "",
        "## Hand-off floor on this machine (bench/handoff.py)",
        "",
        handoff_table(floors),
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


def handoff_table(floors: dict[str, float]) -> str:
    """CPU µs per round trip of the hand-offs a batch makes (`bench.handoff.measure`), as a markdown table."""
    what = {"executor": "event loop → worker thread → event loop, asyncio `run_in_executor` (no-op)",
            "compute_threads": "the same through the batcher's worker threads (service/compute_threads.py): "
                               "once per batch",
            "compute_threads_2ms": "the same with a 2 ms batch (the loop idles meanwhile, as the engine's does)",
            "process": "process → process → process (one byte each way, socket pair): a control frame each way"}
    return md_table(["hand-off", "CPU µs per round trip"], [[what.get(k, k), v] for k, v in floors.items()])


def summary_lines(data: dict[str, Any] | None, results: Path, rel: Any) -> list[str]:
    """The BENCHMARKS.md section (bench/summary.py); `rel(path)` makes a link relative to the document."""
    md = ["", "## 8. Front end: off-CPU stand-in with 1 and 2 front-end processes (issue 13)", ""]
    if data is None:
        return md + ["Not run (`vitserve-bench frontend --quick`).", ""]
    ratios = data["ratio_2_over_1"]
    by_round = data.get("ratio_2_over_1_by_round")  # runs before the rounds measured each configuration once
    rows = []
    for path, by in data["points"].items():
        best = {w: max(pts, key=lambda p: p["inferences_per_second"]) for w, pts in by.items()}
        # the target reads the median of the paired rounds' ratios (a run without rounds: its one ratio)
        rows.append([path, best["1"]["inferences_per_second"], best["2"]["inferences_per_second"],
                     median_round_ratio(by_round[path]) if by_round else ratios[path],
                     *([" / ".join(f"{x:.2f}" for x in by_round[path]), ratios[path]] if by_round else []),
                     best["2"]["client_cpu_cores"]])
    m = data["model"]
    rounds = (f" Both configurations measured alternately at each concurrency, {data['rounds']} round(s); each "
              "point is its median round. A round's ratio is paired (both configurations' best of that round, "
              "measured seconds apart); the target reads the median of the rounds' ratios. The best median of 2 "
              "over the best median of 1 is listed too: its medians can come from different rounds, so the host's "
              "drift enters it." if by_round else "")
    md += [f"Command: `{data['command']}` (load generator: {data.get('client', 'python')}). "
           f"Stand-in: {m['batch_ms']:g} ms per batch of up to {m['max_batch_size']} "
           f"(no CPU), input {'x'.join(map(str, m['input']))}.{rounds}", "",
           md_table(["path", "infer/s, 1 front end", "infer/s, 2 front ends", "2 ÷ 1 (target ≥ 1.6)",
                     *(["2 ÷ 1, each round", "best median ÷ best median"] if by_round else []),
                     "client CPU (cores), 2"], rows), ""]
    if data.get("handoff_cpu_us"):
        md += ["What a hand-off costs on this machine, measured in the same run (CPU µs per round trip; each batch "
               "makes one thread round trip, and with front ends its frames cross processes both ways):", "",
               handoff_table(data["handoff_cpu_us"]), ""]
    md += ["![throughput](" + rel(results / "frontend" / "frontend_throughput.png") + ")", ""]
    return md

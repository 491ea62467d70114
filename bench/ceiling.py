"""Comparison 2 — how close the service gets to the runtime's ceiling.

Raw ONNX Runtime in-process at its best batch size is the most images per second this machine can
compute with this model; the service over HTTP at concurrency 16 (batch-1 requests, which its
dynamic batcher must combine) is divided by it, once with binary v2 tensors (serving overhead
only) and once with JPEG uploads (plus decode and resize). The latency cost of the service is
its p50 at concurrency 1 minus the raw batch-1 latency. The server is started here, serving only
this model (so its session gets every core, as the raw session does), and stopped by PID.

Targets (issue 5): service ÷ raw ≥ 0.90 with binary tensors, ≥ 0.80 with JPEG; p50 at
concurrency 1 minus raw batch-1 latency ≤ 2 ms. The client runs on the same cores: its CPU use is
reported beside each point, and its own ceiling is measured against a trivial server.

Front-end CPU per inference (issue 13): the server's CPU time per inference at concurrency 16 (its
whole process group: event loop, decoding threads, the session's threads, spinning included) minus
the raw session's CPU time per image. A session's CPU per image depends on the batch size (batch 1
costs more per image), so the raw figure is taken at the batch size the server really executed
(its mean, from the /v2 statistics; interpolated between the batch sizes timed raw). CPU time depends
less than throughput on what else the machine runs, but this host's speed drifts within minutes: the
figure compared with the goals comes from paired rounds, each server point with the raw session timed
right before and after it (`paired_frontend_cpu`), and is the median round.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.inproc import Timing, best_throughput, ort_session, time_ort
from bench.loadgen import Client, MeasureConfig, sweep
from bench.machine import machine_info
from bench.models import BenchModel, ensure_models, model_file
from bench.overhead import measure_overhead
from bench.payloads import RequestSpec, classify_request, encode_image, infer_request, synthetic_image
from bench.procs import vitserve_server
from bench.report import (
    command_line,
    frontend_table,
    md_table,
    perf_analyzer_table,
    plot_latency_throughput,
    write_result,
)
from bench.results import LoadPoint
from bench.stats import lower_median

TARGET_BINARY = 0.90
TARGET_JPEG = 0.80
TARGET_ADDED_MS = 2.0
#: issue 13: front-end CPU per inference at concurrency 16, in µs
TARGET_FRONTEND_V2_US = 250.0
TARGET_FRONTEND_JPEG_US = 600.0

#: paired rounds of the front-end CPU reading in a full run (`paired_frontend_cpu`; one with --quick)
FRONTEND_ROUNDS = 3

#: Settings tried by `--tune` (issue 5: thread settings, spinning; execution instances), as service settings.
#: The default is one instance with every core and spinning off.
TUNING: dict[str, dict[str, str]] = {
    "service default": {},
    "spinning on": {"VITSERVE_ALLOW_SPINNING": "true"},
    "1 intra-op thread": {"VITSERVE_INTRA_OP_THREADS": "1"},
    "2 instances (1 thread each)": {"VITSERVE_INSTANCES": "2"},
}


def measure_config(quick: bool) -> MeasureConfig:
    if quick:
        return MeasureConfig(window_s=1.5, warmup_s=1.0, max_windows=4, stability_windows=3)
    return MeasureConfig(window_s=3.0, warmup_s=2.0, max_windows=10, stability_windows=3)


def image_side(input_hw: tuple[int, int]) -> int:
    """Upload size: 256 px for 224-px models (an ImageNet-style crop source), the input size for small models."""
    return 256 if input_hw[0] >= 128 else input_hw[0]


def raw_batch_sizes(max_batch: int) -> list[int]:
    sizes = [1, 2, 4, 8, 16, 32, 64]
    return [b for b in sizes if b <= max_batch] + ([max_batch] if max_batch not in sizes else [])


def server_spinning(env: dict[str, str] | None) -> bool:
    """Whether the server's sessions spin (its VITSERVE_ALLOW_SPINNING, else the setting's default): the raw
    session is built the same way, since spinning threads' CPU is part of what both are charged."""
    from pydantic import TypeAdapter

    from service.runtimes.onnxruntime.options import OnnxRuntimeOptions

    value = {**os.environ, **(env or {})}.get("VITSERVE_ALLOW_SPINNING")
    if value is None:
        return bool(OnnxRuntimeOptions.model_fields["allow_spinning"].default)
    return TypeAdapter(bool).validate_python(value)


def raw_cpu_us_at(raw: list[Timing], batch: float) -> float:
    """Raw CPU µs per image at `batch` images per run: linear between the timed batch sizes, clamped to them."""
    points = sorted((t.batch_size, t.cpu_s / t.batch_size * 1e6) for t in raw if t.cpu_s)
    if not points:
        return float("nan")
    if batch <= points[0][0]:
        return points[0][1]
    for (b0, c0), (b1, c1) in zip(points, points[1:], strict=False):
        if batch <= b1:
            return c0 + (c1 - c0) * (batch - b0) / (b1 - b0)
    return points[-1][1]


def frontend_cpu(point: LoadPoint, raw: list[Timing]) -> dict[str, float | None]:
    """Server CPU per inference, the raw CPU per image at the server's batch size, and their difference."""
    server = point.server_cpu_us_per_inference
    batch = point.server_mean_batch_size
    raw_us = raw_cpu_us_at(raw, batch) if batch else None
    return {
        "server_cpu_us_per_inference": server,
        "server_mean_batch_size": batch,
        "raw_cpu_us_per_image": raw_us,
        "frontend_cpu_us_per_inference": server - raw_us if server is not None and raw_us is not None else None,
        # a direct reading beside the difference: the server's event-loop thread alone (the raw figure it
        # needs no subtraction from, so it is not moved by the noise of two CPU measurements)
        "event_loop_cpu_us_per_inference": point.server_loop_cpu_us_per_inference,
    }


def at(points: Sequence[LoadPoint], concurrency: int) -> LoadPoint:
    """The point measured at `concurrency`."""
    return next(p for p in points if p.concurrency == concurrency)


def bracket(sizes: Sequence[int], batch: float) -> list[int]:
    """The timed batch sizes on either side of `batch` (one when `batch` is one of them or beyond an end)."""
    ordered = sorted(sizes)
    below = [b for b in ordered if b <= batch]
    above = [b for b in ordered if b >= batch]
    return sorted({*(below[-1:] or ordered[:1]), *(above[:1] or ordered[-1:])})


def mean_timing(a: Timing, b: Timing) -> Timing:
    """Two timings of one batch size taken apart, as one (their means; CPU per call averaged)."""
    if a.batch_size != b.batch_size:
        raise ValueError(f"timings of different batch sizes: {a.batch_size} and {b.batch_size}")
    cpu = None if a.cpu_s is None or b.cpu_s is None else (a.cpu_s + b.cpu_s) / 2
    return Timing(batch_size=a.batch_size, repeats=a.repeats + b.repeats, median_s=(a.median_s + b.median_s) / 2,
                  p90_s=(a.p90_s + b.p90_s) / 2, mean_s=(a.mean_s + b.mean_s) / 2, min_s=min(a.min_s, b.min_s),
                  cpu_s=cpu)


def median_round(readings: Sequence[dict[str, float | None]]) -> dict[str, Any]:
    """The reading whose front-end CPU is the median of the rounds' (the lower middle one for an even count),
    with every round's front-end and event-loop figures beside it, in the order measured."""
    known = [r for r in readings if r["frontend_cpu_us_per_inference"] is not None]
    if not known:
        raise ValueError("no round has a front-end reading")
    chosen = lower_median(known, key=lambda r: r["frontend_cpu_us_per_inference"])  # type: ignore[arg-type,return-value]
    return {**chosen,
            "rounds": [r["frontend_cpu_us_per_inference"] for r in readings],
            "event_loop_rounds": [r.get("event_loop_cpu_us_per_inference") for r in readings]}


def paired_frontend_cpu(
    url: str, session: Any, specs: dict[str, tuple[RequestSpec, str]], batch_sizes: dict[str, list[int]], *,
    rounds: int, cfg: MeasureConfig, stats_path: str, server_pgid: int | None, client: Client,
    raw_time_s: float = 1.0,
) -> dict[str, dict[str, Any]]:
    """Front-end CPU at concurrency 16, each reading against raw ONNX Runtime timed right before and right after it.

    The host's speed drifts by more in a few minutes than the front end costs: a raw figure timed before
    the sweeps, minutes from the server point it is subtracted from, moves the difference by its own drift
    (10 % of the raw CPU is about a third of the front end's). Here every round times the raw session at
    `batch_sizes[path]` (those around the batch the server formed), measures the server point, times the raw
    session again, and subtracts the mean of the two; the paths alternate their order each round. The
    result per path is its median round (`median_round`), with every round's figure.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    readings: dict[str, list[dict[str, float | None]]] = {path: [] for path in specs}
    order = list(specs)
    for r in range(rounds):
        for path in order if r % 2 == 0 else order[::-1]:
            spec, protocol = specs[path]
            print(f"[ceiling] front-end CPU, round {r + 1}/{rounds}: {path}", file=sys.stderr, flush=True)
            before = time_ort(session, batch_sizes[path], min_repeats=3, min_time_s=raw_time_s)
            point = sweep(url, spec, concurrencies=[16], cfg=cfg, protocol=protocol, stats_path=stats_path,
                          server_pgid=server_pgid, client=client, progress=None)[0]
            after = time_ort(session, batch_sizes[path], min_repeats=3, min_time_s=raw_time_s)
            reading = frontend_cpu(point, [mean_timing(a, b) for a, b in zip(before, after, strict=True)])
            print(f"  => front-end {reading['frontend_cpu_us_per_inference'] or float('nan'):.0f} µs/inference "
                  f"(event loop {reading['event_loop_cpu_us_per_inference'] or float('nan'):.0f})",
                  file=sys.stderr, flush=True)
            readings[path].append(reading)
    return {path: median_round(rs) for path, rs in readings.items()}


def _status(met: bool | None) -> str:
    return "inconclusive (negative: raw and service timed under different load)" if met is None else (
        "met" if met else "MISSED")


def tune(repository: Path, name: str, spec: RequestSpec, cfg: MeasureConfig, base_env: dict[str, str],
         log_dir: Path, client: Client = "python") -> dict[str, LoadPoint]:
    """The service at concurrency 16 under each TUNING setting (each on a fresh server)."""
    out: dict[str, LoadPoint] = {}
    for label, extra in TUNING.items():
        print(f"[ceiling] tuning: {label} {extra}", file=sys.stderr, flush=True)
        with vitserve_server(repository, [name], env={**base_env, **extra},
                             log_path=log_dir / f"tune-{name}.log") as srv:
            stats = f"/v2/models/{name}/stats"
            out[label] = sweep(srv.url, spec, concurrencies=[16], cfg=cfg, protocol="v2-binary", stats_path=stats,
                               server_pgid=srv.pid, client=client)[0]
    return out


def run(preset: str, *, quick: bool, cache: Path, out_dir: Path | None = None, env: dict[str, str] | None = None,
        tuning: bool = False, server_root: Path | None = None, client: Client = "python") -> Path:
    """`server_root`: the service of another checkout (e.g. a commit before a change), measured by this code.
    `client`: the load generator ("wrk": the C one, whose small CPU use leaves the cores to the server)."""
    machine = machine_info()
    repository = cache / "repository"
    model = BenchModel(preset)
    manifest = ensure_models([model], repository)[model.model_name]
    name = model.model_name
    from service.manifest import CONFIG_FILENAME
    from service.model_config import ModelConfig

    max_batch = ModelConfig.load(repository / name / CONFIG_FILENAME).max_batch_size
    chw = tuple(manifest.preprocess.input_size)

    spinning = server_spinning(env)
    print(f"[ceiling] raw ORT {name} at batch sizes {raw_batch_sizes(max_batch)} "
          f"(spinning {'on' if spinning else 'off'}, as the server's sessions)", file=sys.stderr, flush=True)
    sess = ort_session(model_file(repository, name), spinning=spinning)  # kept for the paired front-end rounds
    raw = time_ort(sess, raw_batch_sizes(max_batch), min_repeats=5 if quick else 20, min_time_s=0.5 if quick else 3.0)
    best = best_throughput(raw)
    raw_b1 = next(t for t in raw if t.batch_size == 1)
    for t in raw:
        print(f"  batch {t.batch_size:3d}: {t.images_per_s:9.1f} img/s, median {t.median_s * 1000:.2f} ms",
              file=sys.stderr)

    side = image_side((chw[1], chw[2]))
    jpeg = encode_image(synthetic_image(side, side), "jpeg")
    v2 = infer_request(name, (1, *chw), input_name=manifest.input_name, output_name=manifest.output_name)
    v1 = classify_request(name, jpeg, "jpeg")
    cfg = measure_config(quick)
    concurrencies = [1, 16] if quick else [1, 2, 4, 8, 16, 32]

    overhead = measure_overhead(v2, 16) if client == "python" else None
    if overhead is not None:
        print(f"[ceiling] {overhead.sentence()}", file=sys.stderr, flush=True)

    log = (out_dir or Path(__file__).resolve().parent / "results") / "tmp" / f"ceiling-{name}.log"
    with vitserve_server(repository, [name], env=env, log_path=log, server_root=server_root) as srv:
        print(f"[ceiling] vitserve pid {srv.pid} at {srv.url}", file=sys.stderr, flush=True)
        server_env = dict(srv.env or {})
        stats = f"/v2/models/{name}/stats"
        v2_points = sweep(srv.url, v2, concurrencies=concurrencies, cfg=cfg, protocol="v2-binary", stats_path=stats,
                          server_pgid=srv.pid, client=client)
        jpeg_points = sweep(srv.url, v1, concurrencies=[1, 16] if quick else concurrencies, cfg=cfg, protocol="v1-jpeg",
                            stats_path=stats, server_pgid=srv.pid, client=client)
        around = {path: bracket(raw_batch_sizes(max_batch), at(points, 16).server_mean_batch_size or 1)
                  for path, points in (("v2 c=16", v2_points), ("jpeg c=16", jpeg_points))}
        frontend = paired_frontend_cpu(
            srv.url, sess, {"v2 c=16": (v2, "v2-binary"), "jpeg c=16": (v1, "v1-jpeg")}, around,
            rounds=1 if quick else FRONTEND_ROUNDS, cfg=cfg, stats_path=stats, server_pgid=srv.pid, client=client)
    del sess
    tuned = tune(repository, name, v2, cfg, env or {}, log.parent, client) if tuning else {}
    machine = machine.finish()

    v2_16, v2_1, jpeg_16 = at(v2_points, 16), at(v2_points, 1), at(jpeg_points, 16)
    ratio_v2 = v2_16.inferences_per_second / best.images_per_s
    ratio_jpeg = jpeg_16.inferences_per_second / best.images_per_s
    added_ms = (v2_1.latency_us["p50"] / 1000) - raw_b1.median_s * 1000
    # CPU cost per image, service vs raw: insensitive to other load on the machine (what it cannot take
    # is CPU time, not wall time), so it locates the serving overhead even when throughput is noisy
    raw_cpu_us = best.cpu_s / best.batch_size * 1e6 if best.cpu_s else float("nan")
    cpu_ratio = {
        "v2 c=16": (v2_16.server_cpu_us_per_inference or float("nan")) / raw_cpu_us,
        "jpeg c=16": (jpeg_16.server_cpu_us_per_inference or float("nan")) / raw_cpu_us,
    }
    # the sweep's own points against the raw timings taken before the server started (minutes apart): kept for
    # the record; the targets read the paired rounds (`paired_frontend_cpu`)
    frontend_sweep = {"v2 c=16": frontend_cpu(v2_16, raw), "jpeg c=16": frontend_cpu(jpeg_16, raw)}
    fe_v2, fe_jpeg = (frontend[k]["frontend_cpu_us_per_inference"] for k in ("v2 c=16", "jpeg c=16"))
    targets = [
        {"target": "service (v2 binary, c=16) ÷ raw ORT best", "goal": f">= {TARGET_BINARY}", "measured": ratio_v2,
         "met": ratio_v2 >= TARGET_BINARY},
        {"target": "service (JPEG, c=16) ÷ raw ORT best", "goal": f">= {TARGET_JPEG}", "measured": ratio_jpeg,
         "met": ratio_jpeg >= TARGET_JPEG},
        # negative: the service beat the raw session, i.e. the two were timed under different background load
        {"target": "p50 at c=1 (v2) − raw batch-1 latency (ms)", "goal": f"<= {TARGET_ADDED_MS}", "measured": added_ms,
         "met": None if added_ms < 0 else added_ms <= TARGET_ADDED_MS},
        {"target": "front-end CPU per inference, v2 binary c=16 (µs)", "goal": f"<= {TARGET_FRONTEND_V2_US:.0f}",
         "measured": fe_v2, "met": None if fe_v2 is None or fe_v2 < 0 else fe_v2 <= TARGET_FRONTEND_V2_US},
        {"target": "front-end CPU per inference, JPEG c=16 (µs)", "goal": f"<= {TARGET_FRONTEND_JPEG_US:.0f}",
         "measured": fe_jpeg,
         "met": None if fe_jpeg is None or fe_jpeg < 0 else fe_jpeg <= TARGET_FRONTEND_JPEG_US},
    ]
    data: dict[str, Any] = {
        "comparison": "ceiling",
        "quick": quick,
        "command": command_line(),
        "client": client,
        "machine": machine,
        "model": name,
        "flops_per_image": manifest.costs.flops,
        "max_batch_size": max_batch,
        "raw_ort": [t.model_dump() for t in raw],
        "raw_best": best.model_dump(),
        "raw_cpu_us_per_image": raw_cpu_us,
        "raw_spinning": spinning,
        "server_cpu_over_raw_cpu": cpu_ratio,
        "frontend_cpu": frontend,
        "frontend_cpu_rounds": 1 if quick else FRONTEND_ROUNDS,
        "frontend_cpu_sweep": frontend_sweep,
        "upload": {"format": "jpeg", "side_px": side, "bytes": len(jpeg)},
        "service_v2": v2_points,
        "service_jpeg": jpeg_points,
        "generator_overhead": overhead,
        "server_env": server_env,
        "server_root": str(server_root) if server_root else None,
        "tuning": {label: {"env": TUNING[label], "point": p,
                           "ratio_to_raw": p.inferences_per_second / best.images_per_s}
                   for label, p in tuned.items()},
        "targets": targets,
    }
    md = [
        f"# Comparison 2 — ceiling: raw ONNX Runtime vs the service ({name})",
        "",
        f"Command: `{command_line()}`  ",
        f"Machine: {machine.summary()}  ",
        f"Load generator: {client}" + ("" if client == "wrk" else f"; {overhead.sentence()}") + ".",
        "",
        "## Targets",
        "",
        md_table(["target", "goal", "measured", "met"],
                 [[t["target"], t["goal"], t["measured"], _status(t["met"])] for t in targets]),
        "",
        "## Raw ONNX Runtime in-process (this machine)",
        "",
        md_table(["batch", "median ms", "p90 ms", "images/s"],
                 [[t.batch_size, t.median_s * 1000, t.p90_s * 1000, t.images_per_s] for t in raw]),
        "",
        f"Best: batch {best.batch_size}, {best.images_per_s:.1f} images/s; "
        f"batch 1 median {raw_b1.median_s * 1000:.2f} ms; "
        f"{raw_cpu_us:.0f} µs of CPU per image at the best batch (session spinning {'on' if spinning else 'off'}, "
        "as the server's).",
        "",
        "CPU per inference, service ÷ raw (robust to other load on the machine): "
        + ", ".join(f"{k} {v:.2f}" for k, v in cpu_ratio.items()) + ".",
        "",
        "## Front-end CPU per inference (server CPU − raw CPU at the server's batch size)",
        "",
        f"Paired rounds ({1 if quick else FRONTEND_ROUNDS}): "
        "each a server point at concurrency 16 with the raw session "
        "timed right before and right after it at the batch sizes around the server's; the median round per path, "
        "every round's figure beside it.",
        "",
        frontend_table(frontend),
        "",
        "The event-loop column is read directly: the CPU time of the server's main thread (its event loop: HTTP, "
        "parsing, decoding small images, encoding, batching) per inference. The front-end figure is a difference of "
        "two CPU measurements and carries the noise of both; this one needs no subtraction.",
        "",
        "The sweep's own concurrency-16 points against the raw timings above (taken before the server started, "
        "minutes apart; kept for the record):",
        "",
        frontend_table(frontend_sweep),
        "",
        "## Service, v2 binary tensors (batch-1 requests; usec, perf_analyzer columns)",
        "",
        perf_analyzer_table(v2_points),
        "",
        f"## Service, JPEG uploads ({side}x{side}, {len(jpeg)} bytes, multipart /v1 classify)",
        "",
        perf_analyzer_table(jpeg_points),
    ]
    if tuned:
        md += [
            "",
            "## ORT thread settings (v2 binary, concurrency 16, each on a fresh server)",
            "",
            md_table(["setting", "env", "ratio to raw best", "infer/s", "p50 ms", "p99 ms", "server compute us",
                      "server queue us", "server CPU us/inference"],
                     [[label, " ".join(f"{k}={v}" for k, v in TUNING[label].items()) or "—",
                       p.inferences_per_second / best.images_per_s, p.inferences_per_second, p.latency_us["p50"] / 1e3,
                       p.latency_us["p99"] / 1e3, p.server_us.get("compute"), p.server_us.get("queue"),
                       p.server_cpu_us_per_inference]
                      for label, p in tuned.items()]),
        ]
    directory = write_result("ceiling", data, "\n".join(md), out_dir)
    # one file per preset too, so demo and vit_small runs do not overwrite each other
    (directory / f"ceiling_{preset}.md").write_text((directory / "ceiling.md").read_text())
    (directory / f"ceiling_{preset}.json").write_text((directory / "ceiling.json").read_text())
    plot_latency_throughput(
        {"vitserve v2 binary": v2_points, "vitserve JPEG": jpeg_points},
        directory / f"latency_throughput_{preset}.png",
        f"{name}: service latency vs throughput (raw ORT best {best.images_per_s:.0f} img/s)",
    )
    return directory

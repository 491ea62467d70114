"""Comparison — ONNX Runtime vs OpenVINO, served over HTTP in one run (issue 27).

Four copies of one model, each served by the same `vitserve serve` process and driven by the same closed-loop
generator (v2 binary tensors, c=1 and c=16; wrk by default where installed, as in the ceiling comparison: the
generator shares the cores with the server, and the in-process readings have none beside them): ONNX Runtime fp32,
ONNX Runtime dynamic int8, OpenVINO f32 and OpenVINO bf16
(`vitserve-export build --int8 --openvino --openvino-bf16`). Beside them, OpenVINO's and ONNX Runtime's own
in-process throughput at batch 16 (what c=16 batches reach at most) and at the mean batch size the server ran at
c=16 (timed right after the served sweeps). The service's share of OpenVINO bf16's own speed is read in paired
rounds at the served batch size: each round times a served c=16 window, then OpenVINO in-process (the server idle)
seconds later, and the target is the median of the rounds' ratios, so the host's drift between two readings minutes
apart does not decide it. Top-1 agreement with fp32 is each copy's manifest figure (measured at export through the
runtime that serves it; random inputs for random-weight presets, held-out images after `train`/`finetune`). The
targets: served OpenVINO bf16 >= 1.8x served ORT fp32 at c=16, >= 99 % agreement, and the service >= 0.9x OpenVINO
bf16 in-process at the same batch size.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.inproc import Timing, ort_session, time_call, time_ort
from bench.loadgen import Client, sweep
from bench.machine import machine_info
from bench.models import is_built, model_file
from bench.payloads import infer_request
from bench.procs import vitserve_server
from bench.report import command_line, md_table, plot_bars, write_result

#: label -> model-name suffix (the export's copies)
CONFIGS = {"ORT fp32": "", "ORT int8": "-int8", "OpenVINO f32": "-openvino", "OpenVINO bf16": "-openvino-bf16"}
BATCH = 16
TARGET_SPEEDUP = 1.8
TARGET_AGREEMENT = 0.99
TARGET_SERVICE_SHARE = 0.9
#: served-then-in-process rounds for the service-share target (twice as many without --quick)
PAIRED_ROUNDS = 5
PAIRED_INPROCESS_S = 3.0


def _measure_config(quick: bool) -> Any:
    from bench.ceiling import measure_config

    return measure_config(quick)


def ensure_copies(preset: str, repository: Path) -> str:
    """Build `preset` with its int8 and OpenVINO copies into `repository` unless all are there; its name."""
    name = preset
    if not all(is_built(repository, name + s) or (repository / (name + s) / "1" / "model.xml").is_file()
               for s in CONFIGS.values()):
        from export.build import build_model

        print(f"[openvino] building {name} with int8 and OpenVINO copies into {repository} ...", file=sys.stderr,
              flush=True)
        build_model(preset, repository, int8=True, openvino=True, openvino_bf16=True, seed=0, progress=True)
    return name


def openvino_timer(xml: Path, precision: str, batch: int) -> Callable[[float], Timing]:
    """OpenVINO in-process, compiled as the service compiles a one-instance model (one stream, every core): a
    function timing `batch`-image calls for at least the seconds it is given."""
    import openvino as ov

    from service.compute_gate import cpu_cores

    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(xml)), "CPU", {
        "INFERENCE_PRECISION_HINT": precision, "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": str(cpu_cores())})
    request = compiled.create_infer_request()
    shape = tuple(compiled.inputs[0].get_partial_shape().get_min_shape())[1:]
    x = np.random.default_rng(0).standard_normal((batch, *shape), dtype=np.float32)
    return lambda seconds: time_call(lambda: request.infer({0: x}), batch, min_repeats=3, min_time_s=seconds)


def time_openvino(xml: Path, precision: str, batch: int, quick: bool) -> Timing:
    return openvino_timer(xml, precision, batch)(1.0 if quick else 3.0)


def run(preset: str, *, quick: bool, cache: Path, out_dir: Path | None = None, client: Client = "python") -> Path:
    from service.manifest import Manifest

    machine = machine_info()
    repository = cache / "repository"
    name = ensure_copies(preset, repository)
    names = {label: name + suffix for label, suffix in CONFIGS.items()}
    manifests = {label: Manifest.load(repository / n) for label, n in names.items()}
    chw = tuple(manifests["ORT fp32"].preprocess.input_size)

    print(f"[openvino] in-process at batch {BATCH}: ORT fp32, OpenVINO f32 and bf16", file=sys.stderr, flush=True)
    sess = ort_session(model_file(repository, name))
    inproc = {"ORT fp32": time_ort(sess, [BATCH], min_repeats=3 if quick else 10,
                                   min_time_s=1.0 if quick else 3.0)[0]}
    del sess
    for label, precision in (("OpenVINO f32", "f32"), ("OpenVINO bf16", "bf16")):
        inproc[label] = time_openvino(repository / names[label] / "1" / "model.xml", precision, BATCH, quick)
    for label, t in inproc.items():
        print(f"  {label}: {t.images_per_s:.1f} img/s", file=sys.stderr)

    cfg = _measure_config(quick)
    served: dict[str, Any] = {}
    info: dict[str, Any] = {}
    log = (out_dir or Path(__file__).resolve().parent / "results") / "tmp" / f"openvino-{name}.log"
    with vitserve_server(repository, list(names.values()), log_path=log, warmup="auto") as srv:
        import httpx

        models = {m["name"]: m for m in httpx.get(srv.url + "/v1/models", timeout=30).json()["models"]}
        for label, model in names.items():
            info[label] = {"provider": models[model].get("provider"),
                           "provider_note": models[model].get("provider_note")}
            spec = infer_request(model, (1, *chw))
            served[label] = {p.concurrency: p for p in sweep(
                srv.url, spec, concurrencies=[1, 16], cfg=cfg, protocol="v2-binary",
                stats_path=f"/v2/models/{model}/stats", server_pgid=srv.pid, client=client)}
        served_batch = max(1, round(served["OpenVINO bf16"][16].server_mean_batch_size or BATCH))
        bf16_xml = repository / names["OpenVINO bf16"] / "1" / "model.xml"
        timer = openvino_timer(bf16_xml, "bf16", served_batch)
        spec = infer_request(names["OpenVINO bf16"], (1, *chw))
        pairs, timings = [], []
        for round_no in range(PAIRED_ROUNDS if quick else 2 * PAIRED_ROUNDS):
            print(f"[openvino] paired round {round_no + 1}: bf16 served c=16, then in-process b{served_batch}",
                  file=sys.stderr, flush=True)
            point = sweep(srv.url, spec, concurrencies=[16], cfg=cfg, protocol="v2-binary", progress=None,
                          stats_path=f"/v2/models/{names['OpenVINO bf16']}/stats", server_pgid=srv.pid,
                          client=client)[0]
            timings.append(timer(PAIRED_INPROCESS_S))
            inproc_ips = timings[-1].images_per_s
            pairs.append({"served": point.inferences_per_second, "in_process": inproc_ips,
                          "ratio": point.inferences_per_second / inproc_ips})
    paired_share = float(np.median([p["ratio"] for p in pairs]))
    print(f"[openvino] in-process at the served batch {served_batch}", file=sys.stderr, flush=True)
    at_served = {"OpenVINO f32": time_openvino(repository / names["OpenVINO f32"] / "1" / "model.xml", "f32",
                                               served_batch, quick),
                 # bf16's reading: the paired rounds' median one, the in-process figure the target reads too
                 "OpenVINO bf16": sorted(timings, key=lambda t: t.images_per_s)[len(timings) // 2]}
    sess = ort_session(model_file(repository, name))
    at_served["ORT fp32"] = time_ort(sess, [served_batch], min_repeats=3 if quick else 10,
                                     min_time_s=1.0 if quick else 3.0)[0]
    del sess
    machine = machine.finish()

    base16 = served["ORT fp32"][16].inferences_per_second
    rows, results = [], {}
    for label in CONFIGS:
        q = manifests[label].quantization
        agreement = 1.0 if label == "ORT fp32" else (q.top1_agreement if q else None)
        c1, c16 = served[label][1], served[label][16]
        t, ts = inproc.get(label), at_served.get(label)
        results[label] = {
            "model": names[label], **info[label], "c1": c1, "c16": c16, "top1_agreement": agreement,
            "max_abs_logit_diff": q.max_abs_logit_diff if q else None, "agreement_inputs": q.inputs if q else None,
            "inprocess_b16": t, "speedup_c16_vs_ort_fp32": c16.inferences_per_second / base16,
            "service_over_inprocess": c16.inferences_per_second / t.images_per_s if t else None,
            "inprocess_served_batch": ts,
            "service_over_inprocess_served_batch": c16.inferences_per_second / ts.images_per_s if ts else None,
        }
        r = results[label]
        rows.append([label, info[label]["provider"], c1.inferences_per_second, c1.latency_us["p50"] / 1000,
                     c1.latency_us["p99"] / 1000, c16.inferences_per_second, c16.latency_us["p50"] / 1000,
                     c16.latency_us["p99"] / 1000, r["speedup_c16_vs_ort_fp32"], agreement,
                     r["max_abs_logit_diff"], t.images_per_s if t else None, ts.images_per_s if ts else None,
                     r["service_over_inprocess_served_batch"]])
    bf16 = results["OpenVINO bf16"]
    targets = [
        {"target": "served OpenVINO bf16 ÷ served ORT fp32 (c=16)", "goal": f">= {TARGET_SPEEDUP}",
         "measured": bf16["speedup_c16_vs_ort_fp32"], "met": bf16["speedup_c16_vs_ort_fp32"] >= TARGET_SPEEDUP},
        {"target": "OpenVINO bf16 top-1 agreement with fp32", "goal": f">= {TARGET_AGREEMENT}",
         "measured": bf16["top1_agreement"], "met": (bf16["top1_agreement"] or 0) >= TARGET_AGREEMENT},
        {"target": f"served OpenVINO bf16 (c=16) ÷ OpenVINO in-process at the served batch ({served_batch}), "
                   f"median of {len(pairs)} paired rounds",
         "goal": f">= {TARGET_SERVICE_SHARE}", "measured": paired_share, "met": paired_share >= TARGET_SERVICE_SHARE},
    ]
    md = [
        f"# ONNX Runtime vs OpenVINO, served ({name})",
        "",
        f"Command: `{command_line()}`  ",
        f"Machine: {machine.summary()}  ",
        f"Load generator: {client}",
        "",
        md_table(["runtime", "provider", "img/s c=1", "p50 ms c=1", "p99 ms c=1", "img/s c=16", "p50 ms c=16",
                  "p99 ms c=16", "÷ ORT fp32 (c=16)", "top-1 agreement", "max |Δlogit|",
                  f"in-process img/s b{BATCH}", f"in-process img/s b{served_batch} (served batch)",
                  "served ÷ in-process (served batch)"], rows),
        "",
        md_table(["target", "goal", "measured", "met"],
                 [[t["target"], t["goal"], t["measured"], t["met"]] for t in targets]),
        "",
        f"Agreement inputs: {bf16['agreement_inputs']}",
        "",
        f"Paired rounds, served bf16 c=16 ÷ in-process b{served_batch} (img/s): "
        + ", ".join(f"{p['served']:.1f}/{p['in_process']:.1f} = {p['ratio']:.2f}" for p in pairs),
    ]
    data = {"comparison": "openvino", "quick": quick, "command": command_line(), "machine": machine, "model": name,
            "client": client,
            "batch": BATCH, "served_batch": served_batch, "results": results, "paired_rounds": pairs,
            "targets": targets}
    directory = write_result("openvino", data, "\n".join(md), out_dir)
    plot_bars({label: r["c16"].inferences_per_second for label, r in results.items()},
              directory / "openvino_throughput.png", f"{name}: served throughput at c=16 (img/s)", "img/s")
    return directory

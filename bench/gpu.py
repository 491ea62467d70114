"""Comparison 6 — the GPU regime: fp32 vs fp16 vs TensorRT through the service, on one GPU.

One script measures, per preset (vit_small and vit_base by default), three configurations each on a
fresh `vitserve serve`:

* `fp32 CUDA`    — the fp32 graph on the CUDA provider (I/O binding, pinned host buffers);
* `fp16 CUDA`    — the `<name>-fp16` copy (export/fp16.py) on the CUDA provider;
* `TensorRT FP16` — the fp32 graph with a Triton `tensorrt` accelerator (precision_mode FP16) in its
  config.pbtxt: the server is started twice on one engine cache directory, first empty (the engine
  build time is the model's load time) and then warm (the load time with cached engines).

At closed-loop concurrency 1, 16 and 64 (v2 binary tensors, batch-1 requests) it records throughput,
p50/p99, the server's CPU cores while serving (the front end's share of the CPU: HTTP, batching and
copies, the GPU doing the maths) and the GPU series the server exports (nv_gpu_*). A configuration
whose session did not get the provider it asked for is reported as such, never as a GPU figure.

Without a usable CUDA it refuses (figures stay "unmeasured on GPU"); `--cpu-check` runs the same
harness with the CPU provider on whatever preset is given, to check the script itself.
"""

from __future__ import annotations

import shutil
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.loadgen import MeasureConfig, sweep
from bench.machine import machine_info
from bench.models import is_built
from bench.payloads import infer_request
from bench.procs import vitserve_server
from bench.report import command_line, md_table, write_result
from bench.results import LoadPoint

CONCURRENCIES = (1, 16, 64)
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
CPU = "CPUExecutionProvider"


@dataclass(frozen=True)
class GpuConfig:
    label: str
    suffix: str  # model-name suffix in the repository
    providers: tuple[str, ...]
    expected: str  # the provider the session must get for the figures to count


CONFIGS = (
    GpuConfig("fp32 CUDA", "", (CUDA, CPU), CUDA),
    GpuConfig("fp16 CUDA", "-fp16", (CUDA, CPU), CUDA),
    GpuConfig("TensorRT FP16", "-trt", (TENSORRT, CUDA, CPU), TENSORRT),
)


def cuda_problem() -> str | None:
    """None when this process could serve on CUDA, else why not (service/runtimes/onnxruntime/providers.py's probe)."""
    import onnxruntime as ort

    from service.runtimes.onnxruntime.providers import cuda_status

    status = cuda_status(tuple(ort.get_available_providers()))
    return None if status.ok(CUDA) else status.reasons.get(CUDA, "CUDA not usable")


def ensure_gpu_models(preset: str, repository: Path) -> None:
    """`<preset>` with its fp16 copy, and `<preset>-trt` (same graph, tensorrt FP16 accelerator in config)."""
    from export.build import build_model

    if not (is_built(repository, preset) and is_built(repository, f"{preset}-fp16")):
        print(f"[gpu] building {preset} and {preset}-fp16 into {repository}", file=sys.stderr, flush=True)
        build_model(preset, repository, fp16=True, seed=0, progress=True)
    if not is_built(repository, f"{preset}-trt"):
        print(f"[gpu] building {preset}-trt into {repository}", file=sys.stderr, flush=True)
        build_model(preset, repository, name=f"{preset}-trt", tensorrt={"precision_mode": "FP16"}, seed=0,
                    progress=True)


def _get_json(url: str) -> Any:
    import json

    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.load(resp)


def _gpu_samples(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("nv_gpu_"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def _serve(repository: Path, model: str, providers: tuple[str, ...], env: dict[str, str], cfg: MeasureConfig,
           concurrencies: tuple[int, ...], log: Path, sweep_load: bool) -> dict[str, Any]:
    env = {"VITSERVE_PROVIDERS": ",".join(providers), "VITSERVE_LOG_LEVEL": "info", **env}
    with vitserve_server(repository, [model], env=env, log_path=log, ready_timeout_s=1800) as srv:
        info = _get_json(f"{srv.url}/v1/models/{model}")
        out: dict[str, Any] = {"provider": info.get("provider"), "provider_note": info.get("provider_note"),
                               "load_seconds": info.get("load_seconds"), "points": []}
        if sweep_load:
            chw = tuple(info["input_size"])
            spec = infer_request(model, (1, *chw))
            out["points"] = sweep(srv.url, spec, concurrencies=list(concurrencies), cfg=cfg, protocol="v2-binary",
                                  stats_path=f"/v2/models/{model}/stats", server_pgid=srv.pid)
            out["gpu_metrics"] = _gpu_samples(srv.url)
    return out


def run(presets: list[str], *, quick: bool, cache: Path, out_dir: Path | None = None, cpu_check: bool = False,
        concurrencies: tuple[int, ...] = CONCURRENCIES, measure: MeasureConfig | None = None) -> Path:
    problem = cuda_problem()
    if problem and not cpu_check:
        raise RuntimeError(f"no usable CUDA here ({problem}): GPU figures stay unmeasured; "
                           "--cpu-check runs this harness on the CPU provider to check it")
    machine = machine_info()
    repository = cache / "gpu-repository"
    logs = (out_dir or Path(__file__).resolve().parent / "results") / "tmp"
    cfg = measure or (MeasureConfig(window_s=1.5, warmup_s=1.0, max_windows=4) if quick
                      else MeasureConfig(window_s=3.0, warmup_s=2.0))
    results: list[dict[str, Any]] = []
    for preset in presets:
        ensure_gpu_models(preset, repository)
        for config in CONFIGS:
            model = f"{preset}{config.suffix}"
            providers = (CPU,) if cpu_check else config.providers
            expected = CPU if cpu_check else config.expected
            row: dict[str, Any] = {"preset": preset, "config": config.label, "model": model,
                                   "requested": list(providers)}
            env: dict[str, str] = {}
            if config.expected == TENSORRT:
                engines = cache / "trt-engines" / preset
                shutil.rmtree(engines, ignore_errors=True)  # the first start builds the engines
                env["VITSERVE_TRT_ENGINE_CACHE_DIR"] = str(engines)
                print(f"[gpu] {model}: engine build (empty cache)", file=sys.stderr, flush=True)
                cold = _serve(repository, model, providers, env, cfg, concurrencies, logs / f"gpu-{model}-cold.log",
                              sweep_load=False)
                row["engine_build_load_seconds"] = cold["load_seconds"]
            print(f"[gpu] {model} on {','.join(providers)}", file=sys.stderr, flush=True)
            served = _serve(repository, model, providers, env, cfg, concurrencies, logs / f"gpu-{model}.log",
                            sweep_load=True)
            row.update(served)
            row["valid"] = served["provider"] == expected
            if config.expected == TENSORRT:
                row["cached_engine_load_seconds"] = served["load_seconds"]
            results.append(row)
    machine = machine.finish()
    md = _markdown(results, machine.summary(), cpu_check)
    data = {"comparison": "gpu", "quick": quick, "cpu_check": cpu_check, "command": command_line(),
            "machine": machine, "results": results}
    return write_result("gpu", data, "\n".join(md), out_dir)


def _markdown(results: list[dict[str, Any]], machine: str, cpu_check: bool) -> list[str]:
    rows = []
    for r in results:
        points: list[LoadPoint] = r["points"]
        for p in points:
            rows.append([r["preset"], r["config"], p.concurrency,
                         p.inferences_per_second if r["valid"] else "not served on it",
                         p.latency_us["p50"] / 1e3 if r["valid"] else "—",
                         p.latency_us["p99"] / 1e3 if r["valid"] else "—",
                         p.server_cpu_cores, r["provider"]])
    builds = [[r["preset"], r.get("engine_build_load_seconds"), r.get("cached_engine_load_seconds")]
              for r in results if "engine_build_load_seconds" in r]
    md = [
        "# Comparison 6 — GPU: fp32 vs fp16 vs TensorRT through the service",
        "",
        f"Command: `{command_line()}`  ",
        f"Machine: {machine}",
        "",
    ]
    if cpu_check:
        md += ["**CPU check of the harness (--cpu-check): every configuration ran on the CPU provider; "
               "these are not GPU figures.**", ""]
    md += [md_table(["preset", "configuration", "concurrency", "infer/s", "p50 ms", "p99 ms",
                     "server CPU cores (front end)", "provider"], rows), ""]
    if builds:
        md += ["TensorRT engine build (model load + warm-up, s): empty cache vs cached engines", "",
               md_table(["preset", "empty cache", "cached"], builds), ""]
    return md

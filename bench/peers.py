"""Comparison 3 — vitserve against other serving stacks on the same ONNX model, same machine, same run.

Peers (bench/peers/<peer>/: exact versions in requirements.txt, a server script): LitServe, BentoML,
Ray Serve and Triton through PyTriton. Each gets its own virtualenv under the cache directory
(created and filled by pip on first use), serves the very ONNX file vitserve serves with the same
ORT session settings and equivalent batching (the model's max batch size, 2 ms max delay where the
peer has the knob), binds 127.0.0.1 and runs as its own process group, stopped by PID.

Two phases per model, each server started fresh for each:
1. saturation: closed-loop concurrency sweep, the best throughput is the server's saturation rate;
2. a common moderate load: open-loop Poisson arrivals at half the *lowest* saturation rate any
   server reached, so every server is below its own saturation, and its p99 latency there.
Targets (issue 5): vitserve ≥ 1.3x each peer's throughput on `demo`, ≥ 1.05x on `vit_small`, and a
lower p99 than each peer at the common load.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.loadgen import MeasureConfig, sweep
from bench.machine import machine_info, usable_cores
from bench.models import BenchModel, ensure_models, model_file
from bench.payloads import RequestSpec, infer_request
from bench.procs import ServerProcess, free_port, poll_ok, vitserve_server
from bench.report import command_line, md_table, perf_analyzer_table, plot_latency_throughput, write_result
from bench.results import LoadPoint

PEERS_DIR = Path(__file__).resolve().parent / "peers"
ALL_PEERS = ("litserve", "bentoml", "rayserve", "pytriton")
MAX_DELAY_MS = 2.0
TARGET_THROUGHPUT = {"demo": 1.3, "vit_small": 1.05}


@dataclass(frozen=True)
class Peer:
    name: str
    script: str
    ready_path: str
    protocol: str  # "json" or "v2"


PEERS = {
    "litserve": Peer("litserve", "server.py", "/health", "json"),
    "bentoml": Peer("bentoml", "server.py", "/readyz", "json"),
    "rayserve": Peer("rayserve", "server.py", "/-/healthz", "json"),
    "pytriton": Peer("pytriton", "server.py", "/v2/health/ready", "v2"),
}


def ensure_venv(peer: str, cache: Path) -> Path:
    """The peer's virtualenv with its pinned requirements (created on first use); returns its python."""
    venv = cache / "peers" / peer
    python = venv / "bin" / "python"
    stamp = venv / ".requirements-installed"
    req = PEERS_DIR / peer / "requirements.txt"
    if stamp.is_file() and stamp.read_text() == req.read_text():
        return python
    if not python.exists():
        print(f"[peers] creating virtualenv {venv}", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    print(f"[peers] installing {req} into {venv} (first use only)", file=sys.stderr, flush=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(req)], check=True)
    stamp.write_text(req.read_text())
    return python


_KEY_PACKAGES = ("litserve", "bentoml", "ray", "nvidia-pytriton", "onnxruntime", "numpy", "fastapi", "uvicorn",
                 "starlette", "tritonclient")


def installed_versions(python: Path) -> dict[str, str]:
    """The versions pip actually installed in a peer's virtualenv (the key packages)."""
    out = subprocess.run([str(python), "-m", "pip", "list", "--format=json"], capture_output=True, text=True)
    if out.returncode != 0:
        return {}
    return {p["name"]: p["version"] for p in json.loads(out.stdout) if p["name"].lower() in _KEY_PACKAGES}


def _libpython_dir(python: Path) -> str:
    out = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
                         check=True, capture_output=True, text=True)
    return out.stdout.strip()


def json_request(chw: tuple[int, ...], seed: int = 0) -> RequestSpec:
    """The JSON peers' request: one base64 float32 CHW tensor (the same values as the v2 request)."""
    x = np.random.default_rng(seed).standard_normal((1, *chw), dtype=np.float32)
    body = json.dumps({"items": [base64.b64encode(x[0].astype("<f4").tobytes()).decode()]}).encode()
    return RequestSpec(path="/predict", body=body, headers={"Content-Type": "application/json"},
                       description=f"JSON base64 FP32 {list(chw)}")


def warm_up(url: str, spec: RequestSpec, timeout_s: float = 180.0) -> None:
    """Send the benchmark request until it succeeds (a server may report healthy before its model is)."""
    def request() -> urllib.request.Request:
        return urllib.request.Request(url + spec.path, data=spec.body, headers=spec.headers, method="POST")

    failure = poll_ok(request(), timeout_s, interval_s=0.5, attempt_timeout_s=30)
    if failure is not None:
        raise RuntimeError(f"{url}{spec.path} never answered 200 ({failure})")
    for _ in range(3):
        with urllib.request.urlopen(request(), timeout=30):
            pass


def peer_server(peer: Peer, python: Path, onnx_file: Path, max_batch: int, log: Path) -> ServerProcess:
    port = free_port()
    argv = [str(python), str(PEERS_DIR / peer.name / peer.script), "--model", str(onnx_file), "--port", str(port),
            "--max-batch-size", str(max_batch), "--max-delay-ms", str(MAX_DELAY_MS), "--threads", str(usable_cores())]
    env: dict[str, str] = {}
    if peer.name == "pytriton":
        argv += ["--grpc-port", str(free_port()), "--metrics-port", str(free_port())]
        env["LD_LIBRARY_PATH"] = _libpython_dir(python)
    if peer.name == "rayserve":
        env["RAY_USAGE_STATS_ENABLED"] = "0"
    return ServerProcess(argv, peer.ready_path, port, env=env, log_path=log, ready_timeout_s=300)


def _measure_server(
    label: str, server: ServerProcess, spec: RequestSpec, *, concurrencies: list[int] | None, rate: float | None,
    cfg: MeasureConfig,
) -> list[LoadPoint]:
    # v2 servers (vitserve, Triton) report queue/compute through Triton's statistics endpoint
    stats = spec.path.removesuffix("/infer") + "/stats" if spec.path.startswith("/v2/") else None
    with server as srv:
        print(f"[peers] {label}: pid {srv.pid} at {srv.url}", file=sys.stderr, flush=True)
        warm_up(srv.url, spec)
        return sweep(srv.url, spec, concurrencies=concurrencies or [], rates=[rate] if rate else [], cfg=cfg,
                     protocol=label, stats_path=stats, server_pgid=srv.pid)


def run(presets: list[str], peers: list[str], *, quick: bool, cache: Path, out_dir: Path | None = None) -> Path:
    for p in peers:
        if p not in PEERS:
            raise ValueError(f"unknown peer {p!r}; choose from {', '.join(PEERS)}")
    machine = machine_info()
    pythons = {p: ensure_venv(p, cache) for p in peers}
    repository = cache / "repository"
    logs = cache / "logs"
    cfg = (MeasureConfig(window_s=1.5, warmup_s=1.0, max_windows=4) if quick
           else MeasureConfig(window_s=3.0, warmup_s=2.0, max_windows=10))
    results: dict[str, Any] = {}
    targets: list[dict[str, Any]] = []
    for preset in presets:
        model = BenchModel(preset)
        manifest = ensure_models([model], repository)[model.model_name]
        name = model.model_name
        from service.manifest import CONFIG_FILENAME
        from service.model_config import ModelConfig

        max_batch = ModelConfig.load(repository / name / CONFIG_FILENAME).max_batch_size
        chw = tuple(manifest.preprocess.input_size)
        onnx_file = model_file(repository, name)
        v2 = infer_request(name, (1, *chw), input_name=manifest.input_name, output_name=manifest.output_name)
        v2_triton = infer_request("model", (1, *chw), input_name=manifest.input_name, output_name=manifest.output_name)
        js = json_request(chw)
        concurrencies = [16, max_batch] if quick else [4, 16, max_batch, 2 * max_batch]

        def server_for(label: str) -> tuple[ServerProcess, RequestSpec]:
            if label == "vitserve":
                return vitserve_server(repository, [name], log_path=logs / f"vitserve-{name}.log"), v2  # noqa: B023  (only called in this iteration)
            peer = PEERS[label]
            srv = peer_server(peer, pythons[label], onnx_file, max_batch, logs / f"{label}-{name}.log")  # noqa: B023  (only called in this iteration)
            return srv, (v2_triton if peer.protocol == "v2" else js)  # noqa: B023  (only called in this iteration)

        labels = ["vitserve", *peers]
        saturation: dict[str, list[LoadPoint]] = {}
        failures: dict[str, str] = {}
        for label in labels:
            print(f"[peers] {name}: saturation sweep of {label} at concurrency {concurrencies}", file=sys.stderr)
            try:
                srv, spec = server_for(label)
                saturation[label] = _measure_server(label, srv, spec, concurrencies=concurrencies, rate=None, cfg=cfg)
            except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
                failures[label] = str(e)[-2000:]
                print(f"[peers] {label} failed: {e}", file=sys.stderr)
        sat_rate = {k: max(p.inferences_per_second for p in v) for k, v in saturation.items()}
        moderate = 0.5 * min(sat_rate.values())
        at_load: dict[str, LoadPoint] = {}
        for label in saturation:
            print(f"[peers] {name}: {label} at the common load {moderate:.1f} req/s", file=sys.stderr)
            try:
                srv, spec = server_for(label)
                at_load[label] = _measure_server(label, srv, spec, concurrencies=None, rate=moderate, cfg=cfg)[0]
            except (RuntimeError, OSError) as e:
                failures[f"{label} (common load)"] = str(e)[-2000:]
        results[name] = {
            "max_batch_size": max_batch, "max_delay_ms": MAX_DELAY_MS, "saturation": saturation,
            "vitserve_env": dict(vitserve_server(repository, [name]).env or {}),
            "saturation_rate": sat_rate, "common_rate": moderate, "at_common_load": at_load, "failures": failures,
        }
        goal = TARGET_THROUGHPUT.get(preset, 1.0)
        for label in peers:
            if label not in sat_rate or "vitserve" not in sat_rate:
                targets.append({"target": f"{name}: vitserve ÷ {label} throughput", "goal": f">= {goal}",
                                "measured": float("nan"), "met": False})
                continue
            ratio = sat_rate["vitserve"] / sat_rate[label]
            targets.append({"target": f"{name}: vitserve ÷ {label} throughput at saturation", "goal": f">= {goal}",
                            "measured": ratio, "met": ratio >= goal})
            if label in at_load and "vitserve" in at_load:
                ours, theirs = at_load["vitserve"].latency_us["p99"], at_load[label].latency_us["p99"]
                targets.append({"target": f"{name}: p99 at {moderate:.0f} req/s, vitserve ÷ {label}", "goal": "< 1",
                                "measured": ours / theirs, "met": ours < theirs})
    machine = machine.finish()

    md = ["# Comparison 3 — peers: vitserve vs LitServe, BentoML, Ray Serve, Triton (PyTriton)", "",
          f"Command: `{command_line()}`  ", f"Machine: {machine.summary()}", "",
          "Same ONNX file, same ORT session settings, max batch = the model's config, max delay 2 ms where the peer "
          "has the knob (BentoML batches adaptively). vitserve and Triton receive v2 binary tensors; LitServe, "
          "BentoML and Ray Serve receive the same tensor base64-encoded in JSON and answer top-5 JSON. "
          "Setups: bench/peers/.", "",
          "## Targets", "",
          md_table(["target", "goal", "measured", "met"],
                   [[t["target"], t["goal"], t["measured"], "met" if t["met"] else "MISSED"] for t in targets])]
    summary_rows = []
    for name, r in results.items():
        for label, rate in r["saturation_rate"].items():
            p = r["at_common_load"].get(label)
            best_pt = max(r["saturation"][label], key=lambda q: q.inferences_per_second)
            summary_rows.append([name, label, rate, r["saturation_rate"].get("vitserve", float("nan")) / rate,
                                 best_pt.server_cpu_us_per_inference,
                                 p.latency_us["p50"] / 1e3 if p else None, p.latency_us["p99"] / 1e3 if p else None,
                                 ", ".join(f"{k}: {v}" for k, v in (p.errors_by_status if p else {}).items()) or "0"])
    summary_table = md_table(["model", "server", "saturation infer/s (this machine)", "vitserve ÷ server",
                              "server CPU us/inference at saturation",
                              "p50 ms at common load", "p99 ms at common load", "errors at common load"], summary_rows)
    md += ["", "## Summary", "", summary_table]
    for name, r in results.items():
        md += ["", f"## {name} (common load {r['common_rate']:.1f} req/s)"]
        for label, pts in r["saturation"].items():
            md += ["", f"### {label}", "", perf_analyzer_table(pts)]
            if label in r["at_common_load"]:
                md += ["", perf_analyzer_table([r["at_common_load"][label]])]
        for label, err in r["failures"].items():
            md += ["", f"**{label} failed:** `{err.splitlines()[-1] if err else ''}`"]
    versions = {p: installed_versions(pythons[p]) for p in peers}
    version_line = "Versions: " + "; ".join(
        f"{p}: " + ", ".join(f"{k} {v}" for k, v in sorted(vs.items())) for p, vs in versions.items())
    md += ["", version_line]
    data = {"comparison": "peers", "quick": quick, "command": command_line(), "machine": machine, "peers": peers,
            "versions": versions,
            "results": results, "targets": targets,
            "summary_markdown": "\n".join(["Targets:", "", md_table(
                ["target", "goal", "measured", "met"],
                [[t["target"], t["goal"], t["measured"], "met" if t["met"] else "MISSED"] for t in targets]), "",
                summary_table, "", version_line,
                "", "Plots: latency vs throughput per server in bench/results/peers/; "
                "details in bench/results/peers/peers.md."])}
    directory = write_result("peers", data, "\n".join(md), out_dir)
    for name, r in results.items():
        plot_latency_throughput(r["saturation"], directory / f"latency_throughput_{name}.png",
                                f"{name}: p99 latency vs throughput per server (this machine)")
    return directory

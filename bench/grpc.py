"""Comparison — the Open Inference Protocol over gRPC beside REST binary, and beside Triton's own gRPC front end.

One vitserve server answers both protocols (REST on its HTTP port, gRPC on its gRPC port); the same closed-loop
generator drives each with the same tensor (v2 binary body over HTTP, `raw_input_contents` over gRPC: unary
`ModelInfer` calls, and the same messages on one `ModelStreamInfer` stream, on one grpc.aio channel:
bench/grpc_client.py) at c=1 and c=16. PyTriton serves the same ONNX file through Triton's
server, whose gRPC and HTTP front ends are Triton's own C++ (bench/peers/pytriton/), measured the same way in the
same run. Reported per point: throughput, p50/p99 and the server's CPU per inference (its process group, so
PyTriton's tritonserver and Python model process count too). The targets (issue 29, on demo): vitserve gRPC
>= vitserve REST binary and >= PyTriton gRPC throughput at c=16, for unary calls and for the stream.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from bench.grpc_client import infer_message
from bench.loadgen import sweep
from bench.machine import machine_info
from bench.measure import MeasureConfig
from bench.models import BenchModel, ensure_models, model_file
from bench.payloads import infer_request
from bench.peers import PEERS, ensure_venv, installed_versions, peer_server
from bench.procs import ServerProcess, free_port, vitserve_server
from bench.report import command_line, md_table, plot_bars, write_result
from bench.results import LoadPoint

CONCURRENCIES = (1, 16)
TARGET_PRESET = "demo"


def wait_grpc_ready(target: str, model: str, timeout_s: float = 180.0) -> None:
    """Block until `target` answers ModelReady for `model` over gRPC with ready=true (a server may say it is
    ready before its model is; RuntimeError after `timeout_s`)."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    with grpc.insecure_channel(target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        while time.monotonic() < deadline:
            try:
                if stub.ModelReady(service_pb2.ModelReadyRequest(name=model), timeout=5).ready:
                    return
            except grpc.RpcError as e:
                last = e
            time.sleep(0.2)
    raise RuntimeError(f"gRPC at {target} never became ready ({last})")


def _points(server: ServerProcess, protocol: str, model: str, shape: tuple[int, ...], io: tuple[str, str],
            grpc_target: str, cfg: MeasureConfig) -> dict[str, dict[int, LoadPoint]]:
    """REST binary and gRPC points of one running server (each at every concurrency) for `model`; `io`: the
    input and output names."""
    wait_grpc_ready(grpc_target, model)
    rest, grpc_spec = infer_request(model, shape, *io), infer_message(model, shape, *io)
    stats = f"/v2/models/{model}/stats"
    out: dict[str, dict[int, LoadPoint]] = {}
    for label, spec, client in (("REST binary", rest, "python"), ("gRPC", grpc_spec, "grpc"),
                                ("gRPC stream", grpc_spec, "grpc-stream")):
        points = sweep(server.url, spec, concurrencies=list(CONCURRENCIES), cfg=cfg, protocol=f"{protocol} {label}",
                       stats_path=stats, server_pgid=server.pid, client=client,  # type: ignore[arg-type]
                       grpc_target=None if client == "python" else grpc_target)
        out[label] = {p.concurrency or 0: p for p in points}
    return out


def run(presets: list[str], *, quick: bool, cache: Path, out_dir: Path | None = None) -> Path:
    machine = machine_info()
    repository = cache / "repository"
    logs = cache / "logs"
    python = ensure_venv("pytriton", cache)
    cfg = (MeasureConfig(window_s=1.5, warmup_s=1.0, max_windows=4) if quick
           else MeasureConfig(window_s=3.0, warmup_s=2.0, max_windows=10))
    results: dict[str, dict[str, dict[str, dict[int, LoadPoint]]]] = {}
    for preset in presets:
        model = BenchModel(preset)
        manifest = ensure_models([model], repository)[model.model_name]
        name = model.model_name
        from service.model_config import ModelConfig

        max_batch = ModelConfig.load(repository / name / "config.pbtxt").max_batch_size
        shape = (1, *manifest.preprocess.input_size)
        io = (manifest.input_name, manifest.output_name)
        results[name] = {}

        grpc_port = free_port()
        print(f"[grpc] {name}: vitserve, REST and gRPC (port {grpc_port})", file=sys.stderr, flush=True)
        with vitserve_server(repository, [name], env={"VITSERVE_GRPC_PORT": str(grpc_port)},
                             log_path=logs / f"grpc-vitserve-{name}.log") as srv:
            results[name]["vitserve"] = _points(srv, "vitserve", name, shape, io, f"127.0.0.1:{grpc_port}", cfg)

        print(f"[grpc] {name}: PyTriton (Triton's HTTP and gRPC front ends)", file=sys.stderr, flush=True)
        with peer_server(PEERS["pytriton"], python, model_file(repository, name), max_batch,
                         logs / f"grpc-pytriton-{name}.log") as srv:
            target = f"127.0.0.1:{srv.argv[srv.argv.index('--grpc-port') + 1]}"
            results[name]["pytriton"] = _points(srv, "pytriton", "model", shape, io, target, cfg)
    machine = machine.finish()

    rows, bars = [], {}
    for name, servers in results.items():
        for server, protocols in servers.items():
            for label, pts in protocols.items():
                c1, c16 = pts[1], pts[16]
                rows.append([name, server, label, c1.inferences_per_second, c1.latency_us["p50"] / 1000,
                             c1.latency_us["p99"] / 1000, c16.inferences_per_second, c16.latency_us["p50"] / 1000,
                             c16.latency_us["p99"] / 1000, c16.server_cpu_us_per_inference,
                             sum((c1.errors_by_status or {}).values()) + sum((c16.errors_by_status or {}).values())])
                bars[f"{name}\n{server} {label}"] = c16.inferences_per_second
    targets = []
    demo = next((n for n in results if n == TARGET_PRESET), None)
    if demo:
        for mode in ("gRPC", "gRPC stream"):
            ours = results[demo]["vitserve"][mode][16].inferences_per_second
            for other, label in (("vitserve", "REST binary"), ("pytriton", mode)):
                ratio = ours / results[demo][other][label][16].inferences_per_second
                targets.append({"target": f"{demo}: vitserve {mode} ÷ {other} {label} throughput (c=16)",
                                "goal": ">= 1.0", "measured": ratio, "met": ratio >= 1.0})
    table = md_table(["model", "server", "protocol", "infer/s c=1", "p50 ms c=1", "p99 ms c=1", "infer/s c=16",
                      "p50 ms c=16", "p99 ms c=16", "server CPU us/inference c=16", "errors"], rows)
    target_table = md_table(["target", "goal", "measured", "met"],
                            [[t["target"], t["goal"], t["measured"], t["met"]] for t in targets])
    version_line = "PyTriton: " + ", ".join(f"{k} {v}" for k, v in sorted(installed_versions(python).items()))
    md = ["# gRPC vs REST binary, vitserve vs Triton (PyTriton)", "", f"Command: `{command_line()}`  ",
          f"Machine: {machine.summary()}", "",
          "Closed loop, one request = one image (FP32, batch 1), the same tensor over both protocols; the load "
          "generator runs on the same cores (its CPU is in the JSON). Server CPU counts the whole process group.", "",
          table, "", target_table, "", version_line]
    data = {"comparison": "grpc", "quick": quick, "command": command_line(), "machine": machine,
            "results": results, "targets": targets, "versions": installed_versions(python),
            "summary_markdown": "\n".join([table, "", target_table, "", version_line])}
    directory = write_result("grpc", data, "\n".join(md), out_dir)
    plot_bars(bars, directory / "grpc_throughput.png", "throughput at c=16 (one image per request)", "infer/s")
    print(f"[grpc] wrote {directory}", file=sys.stderr)
    return directory

"""What ONNX Runtime's spinning threads cost at low load and buy under load (single-model server).

Spinning pool threads busy-wait between operators (and for a while after a run) instead of
sleeping: less wake-up latency, more CPU burnt. For each preset and each setting
(`VITSERVE_ALLOW_SPINNING` true / false, one fresh server each): server CPU per request at one
client and at a fixed low Poisson rate, the lone-request p50, and throughput at concurrency 16.
CPU is the server's process group's (spinning threads' CPU is real CPU: under a container limit it
is what gets throttled).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from bench.ceiling import measure_config
from bench.loadgen import MeasureConfig, sweep
from bench.machine import machine_info
from bench.models import BenchModel, ensure_models
from bench.payloads import infer_request
from bench.procs import vitserve_server
from bench.report import RESULTS_DIR, command_line, md_table, write_result

SETTINGS = {"spinning on": "true", "spinning off": "false"}


def run(presets: list[str], *, quick: bool, cache: Path, out_dir: Path | None = None, rate: float = 20.0,
        cfg: MeasureConfig | None = None) -> Path:
    """One fresh single-model server per preset and setting; `cfg` replaces the windows --quick chooses (tests)."""
    machine = machine_info()
    cfg = cfg or measure_config(quick)
    rows: list[dict[str, Any]] = []
    for preset in presets:
        model = BenchModel(preset)
        manifest = ensure_models([model], cache / "repository")[model.model_name]
        name = model.model_name
        spec = infer_request(name, (1, *manifest.preprocess.input_size), input_name=manifest.input_name,
                             output_name=manifest.output_name)
        for label, value in SETTINGS.items():
            print(f"[spinning] {name}: {label}", file=sys.stderr, flush=True)
            log = (out_dir or RESULTS_DIR) / "tmp" / f"spinning-{name}.log"
            with vitserve_server(cache / "repository", [name], env={"VITSERVE_ALLOW_SPINNING": value},
                                 log_path=log) as srv:
                points = sweep(srv.url, spec, concurrencies=[1, 16], rates=[rate], cfg=cfg, protocol="v2-binary",
                               stats_path=f"/v2/models/{name}/stats", server_pgid=srv.pid)
            rows.append({"model": name, "setting": label, "c1": points[0], "c16": points[1], "rate": points[2]})
    machine = machine.finish()
    table = md_table(
        ["model", "setting", "server CPU ms/request, 1 client", f"server CPU ms/request, {rate:g} req/s",
         f"server cores at {rate:g} req/s", "p50 ms, 1 client", "infer/s c=16", "server CPU ms/inference c=16"],
        [[r["model"], r["setting"], (r["c1"].server_cpu_us_per_inference or float("nan")) / 1e3,
          (r["rate"].server_cpu_us_per_inference or float("nan")) / 1e3, r["rate"].server_cpu_cores,
          r["c1"].latency_us["p50"] / 1e3, r["c16"].inferences_per_second,
          (r["c16"].server_cpu_us_per_inference or float("nan")) / 1e3] for r in rows])
    md = ["# ONNX Runtime spinning: CPU at low load vs throughput under load (single-model server)", "",
          f"Command: `{command_line()}`  ", f"Machine: {machine.summary()}", "", table]
    data = {"comparison": "spinning", "quick": quick, "command": command_line(), "machine": machine, "rate": rate,
            "rows": rows}
    return write_result("spinning", data, "\n".join(md), out_dir)

"""Every variant served side by side: one repository of the preset's variants against a single-model server.

The product's main use is serving a preset's variants together (to compare them); this measures
what that costs each model. The models are vanilla and each variant of the table that is served side
by side (`VariantDef.side_by_side`; six with the built-in table). For each measured model: a server that
serves only it (time to ready, lone-request p50 at concurrency 1, throughput at concurrency 16), then one
server that serves them all (time to ready for the whole repository; the same two points per model while
the others are loaded and idle; optionally all under load at once). Requests are batch-1 binary v2
tensors, as in the ceiling comparison. Servers run with their own defaults (no warm-up override),
so time to ready is what a user gets.

`server_root` runs the service of another checkout, and `baseline_root` measures a second checkout
in the same run (before → after), so both are timed under the same conditions.

Goals (issue 13): lone-request p50 within 10 % of the single-model server's, concurrency-16
throughput per model within 10 %, the whole repository ready in under twice one model's time.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.ceiling import measure_config
from bench.loadgen import LoadPoint, MeasureConfig, ServerReading, closed_loop, sweep
from bench.loadgen import run as run_loop
from bench.machine import machine_info
from bench.models import BenchModel, ensure_models
from bench.payloads import RequestSpec, infer_request
from bench.procs import ServerProcess, vitserve_server
from bench.report import RESULTS_DIR, command_line, jsonable, md_table, plot_bars, write_result
from service.manifest import MANIFEST_FILENAME

TARGET_P50_RATIO = 1.10
TARGET_THROUGHPUT_RATIO = 0.90
TARGET_READY_RATIO = 2.0
CONCURRENCY = 16


def side_by_side_models(preset: str) -> list[BenchModel]:
    """Vanilla and each variant of the table served side by side, in table order."""
    from export import variants as registry  # the table alone: no torch

    return [BenchModel(preset, label="vanilla")] + [
        BenchModel(f"{preset}+{v.name}", label=v.name) for v in registry.variants() if v.side_by_side
    ]


def side_by_side_repository(cache: Path, preset: str, names: list[str]) -> Path:
    """A repository holding only `names` (hard links into the cache repository: no copies of the weights)."""
    source = cache / "repository"
    target = cache / f"multi-{preset}"
    for name in names:
        manifest = Path(name) / MANIFEST_FILENAME
        if (target / manifest).is_file() and (target / manifest).read_bytes() == (source / manifest).read_bytes():
            continue  # still the cache's build
        shutil.rmtree(target / name, ignore_errors=True)
        tmp = target / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(source / name, tmp, copy_function=_link_or_copy)
        tmp.rename(target / name)
    return target


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _models_report(url: str) -> dict[str, dict[str, Any]]:
    with urllib.request.urlopen(f"{url}/v1/models", timeout=10) as resp:
        doc = json.load(resp)
    return {m["name"]: m for m in doc["models"]}


def _start(server: ServerProcess) -> float:
    """Start a server; seconds from launch until /v2/health/ready answers 200."""
    started = time.perf_counter()
    server.start()
    return time.perf_counter() - started


def _points(url: str, spec: RequestSpec, name: str, cfg: MeasureConfig, pgid: int | None) -> dict[str, LoadPoint]:
    points = sweep(url, spec, concurrencies=[1, CONCURRENCY], cfg=cfg, protocol="v2-binary",
                   stats_path=f"/v2/models/{name}/stats", server_pgid=pgid)
    return {"c1": points[0], f"c{CONCURRENCY}": points[1]}


def _all_at_once(url: str, specs: dict[str, RequestSpec], cfg: MeasureConfig) -> dict[str, LoadPoint]:
    """Every model under closed-loop load at the same time (16 requests outstanding in all)."""
    per_model = max(1, math.ceil(CONCURRENCY / len(specs)))

    async def both() -> list[LoadPoint]:
        return await asyncio.gather(*(closed_loop(url, spec, per_model, cfg, reading=ServerReading(
            protocol="v2-binary", stats_path=f"/v2/models/{name}/stats")) for name, spec in specs.items()))

    return dict(zip(specs, run_loop(both()), strict=True))  # type: ignore[arg-type]


def measure_server(label: str, repository: Path, names: list[str], measured: list[str], specs: dict[str, RequestSpec],
                   cfg: MeasureConfig, *, root: Path | None, env: dict[str, str], log_dir: Path,
                   all_at_once: bool) -> dict[str, Any]:
    """One checkout: a single-model server per measured model, then one server for the whole repository."""
    single: dict[str, Any] = {}
    for name in measured:
        print(f"[multi] {label}: {name} alone", file=sys.stderr, flush=True)
        srv = vitserve_server(repository, [name], env=env, warmup=None, server_root=root,
                              log_path=log_dir / f"multi-{label}-{name}.log", ready_timeout_s=1800)
        ready_s = _start(srv)
        try:
            single[name] = {"ready_s": ready_s, **_points(srv.url, specs[name], name, cfg, srv.pid)}
        finally:
            srv.stop()
    print(f"[multi] {label}: all {len(names)} models", file=sys.stderr, flush=True)
    srv = vitserve_server(repository, names, env=env, warmup=None, server_root=root,
                          log_path=log_dir / f"multi-{label}-all.log", ready_timeout_s=3600)
    ready_s = _start(srv)
    try:
        report = _models_report(srv.url)
        together = {name: _points(srv.url, specs[name], name, cfg, srv.pid) for name in measured}
        at_once = _all_at_once(srv.url, specs, cfg) if all_at_once else {}
    finally:
        srv.stop()
    return {
        "label": label,
        "server_root": str(root) if root else None,
        "single": single,
        "multi": {"ready_s": ready_s, "load_seconds": {n: report.get(n, {}).get("load_seconds") for n in names},
                  "loaded_idle": together, "all_at_once": at_once},
    }


def ratios(run: dict[str, Any]) -> dict[str, Any]:
    """Multi ÷ single per model (p50 at c=1, throughput at c=16) and the time-to-ready ratio."""
    c = f"c{CONCURRENCY}"
    per_model = {}
    for name, alone in run["single"].items():
        shared = run["multi"]["loaded_idle"][name]
        per_model[name] = {
            "p50_ratio": shared["c1"].latency_us["p50"] / alone["c1"].latency_us["p50"],
            "throughput_ratio": shared[c].inferences_per_second / alone[c].inferences_per_second,
        }
    one_model = max(s["ready_s"] for s in run["single"].values())
    return {"per_model": per_model, "ready_ratio": run["multi"]["ready_s"] / one_model, "one_model_ready_s": one_model}


def targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    worst_p50 = max(v["p50_ratio"] for v in r["per_model"].values())
    worst_tp = min(v["throughput_ratio"] for v in r["per_model"].values())
    return [
        {"target": "lone-request p50, all loaded ÷ alone (worst model)", "goal": f"<= {TARGET_P50_RATIO}",
         "measured": worst_p50, "met": worst_p50 <= TARGET_P50_RATIO},
        {"target": f"throughput at c={CONCURRENCY}, all loaded ÷ alone (worst model)",
         "goal": f">= {TARGET_THROUGHPUT_RATIO}", "measured": worst_tp, "met": worst_tp >= TARGET_THROUGHPUT_RATIO},
        {"target": "time to ready, whole repository ÷ one model (slowest alone)", "goal": f"< {TARGET_READY_RATIO}",
         "measured": r["ready_ratio"], "met": r["ready_ratio"] < TARGET_READY_RATIO},
    ]


def markdown(data: dict[str, Any]) -> str:
    c = f"c{CONCURRENCY}"
    md = [f"# Every variant side by side: {len(data['models'])} {data['preset']} models in one repository "
          "vs a single-model server", "", f"Command: `{data['command']}`  ", f"Machine: {data['machine_summary']}", ""]
    for run in data["runs"]:
        r = run["ratios"]
        md += [f"## {run['label']}" + (f" (server from {run['server_root']})" if run["server_root"] else ""), "",
               md_table(["target", "goal", "measured", "met"],
                        [[t["target"], t["goal"], t["measured"], "met" if t["met"] else "MISSED"]
                         for t in run["targets"]]), "",
               md_table(["model", "p50 ms alone", "p50 ms all loaded", "ratio", f"infer/s {c} alone",
                         f"infer/s {c} all loaded", "ratio"],
                        [[name, alone["c1"]["latency_us"]["p50"] / 1e3,
                          run["multi"]["loaded_idle"][name]["c1"]["latency_us"]["p50"] / 1e3,
                          r["per_model"][name]["p50_ratio"], alone[c]["inferences_per_second"],
                          run["multi"]["loaded_idle"][name][c]["inferences_per_second"],
                          r["per_model"][name]["throughput_ratio"]] for name, alone in run["single"].items()]), "",
               f"Time to ready: whole repository {run['multi']['ready_s']:.1f} s, one model (slowest alone) "
               f"{r['one_model_ready_s']:.1f} s (ratio {r['ready_ratio']:.2f}); per model alone: "
               + ", ".join(f"{n} {s['ready_s']:.1f} s" for n, s in run["single"].items()) + "."]
        at_once = run["multi"]["all_at_once"]
        if at_once:
            total = sum(p["inferences_per_second"] for p in at_once.values())
            md += ["", f"All {len(at_once)} models under load at once ({at_once[next(iter(at_once))]['concurrency']} "
                   f"requests outstanding each): {total:.1f} infer/s in all ("
                   + ", ".join(f"{n} {p['inferences_per_second']:.1f}" for n, p in at_once.items()) + ")."]
        md.append("")
    return "\n".join(md)


def run(preset: str, *, quick: bool, cache: Path, out_dir: Path | None = None, server_root: Path | None = None,
        baseline_root: Path | None = None, env: dict[str, str] | None = None, all_at_once: bool = False,
        measured: int | None = None, cfg: MeasureConfig | None = None) -> Path:
    """Measure the checkout at `server_root` (this one by default) and, when given, `baseline_root` first.

    `measured`: how many of the models are measured one by one (all are always loaded); `cfg` replaces
    the measurement windows --quick chooses (tests)."""
    machine = machine_info()
    models = side_by_side_models(preset)
    manifests = ensure_models(models, cache / "repository")
    names = [m.model_name for m in models]
    repository = side_by_side_repository(cache, preset, names)
    chosen = names[: measured or (2 if quick else len(names))]
    specs = {n: infer_request(n, (1, *manifests[n].preprocess.input_size), input_name=manifests[n].input_name,
                              output_name=manifests[n].output_name) for n in names}
    cfg = cfg or measure_config(quick)
    log_dir = (out_dir or RESULTS_DIR) / "tmp"
    checkouts = ([("before", baseline_root)] if baseline_root else []) + [
        ("after" if baseline_root else "this checkout", server_root)]
    runs = []
    for label, root in checkouts:
        result = measure_server(label, repository, names, chosen, specs, cfg, root=root, env=env or {},
                                log_dir=log_dir, all_at_once=all_at_once)
        result["ratios"] = ratios(result)
        result["targets"] = targets(result["ratios"])
        runs.append(result)
    machine = machine.finish()
    data: dict[str, Any] = {
        "comparison": "multi", "quick": quick, "command": command_line(), "machine": machine,
        "machine_summary": machine.summary(), "preset": preset, "models": names, "measured": chosen,
        "concurrency": CONCURRENCY, "server_env": env or {}, "runs": runs,
    }
    data = jsonable(data)
    directory = write_result("multi", data, markdown(data), out_dir)
    (directory / f"multi_{preset}.json").write_text((directory / "multi.json").read_text())
    (directory / f"multi_{preset}.md").write_text((directory / "multi.md").read_text())
    for key, title, target in (("p50_ratio", "lone-request p50, all loaded ÷ alone", TARGET_P50_RATIO),
                               ("throughput_ratio", f"throughput at c={CONCURRENCY}, all loaded ÷ alone",
                                TARGET_THROUGHPUT_RATIO)):
        values = {f"{n} ({r['label']})": v[key] for r in data["runs"] for n, v in r["ratios"]["per_model"].items()}
        plot_bars(values, directory / f"{key}_{preset}.png", f"{preset}: {title}", "ratio", target=target)
    return directory

"""BENCHMARKS.md from the latest results: `vitserve-bench summary`.

The summary is generated, never typed: it reads the JSON each comparison wrote under
bench/results/, and lists the machine, the exact command lines, every issue-5 target as met or
missed with its measured figure, ratios first and absolute times labelled as this machine's.
A comparison that has not been run is listed as not run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.frontend import summary_lines as frontend_summary
from bench.report import RESULTS_DIR, fmt, frontend_table, md_table

REPO_ROOT = Path(__file__).resolve().parent.parent


def _load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _rel(path: Path, start: Path) -> str:
    try:
        return str(path.resolve().relative_to(start.resolve()))
    except ValueError:
        return str(path)


def _machine_line(m: dict[str, Any]) -> str:
    la = m.get("load_average_start") or [float("nan")] * 3
    end = m.get("load_average_end")
    end_s = f", at end {end[0]:.2f}" if end else ""
    return (f"{m['cpu_model']}, {m['cores']} cores; load average at start {la[0]:.2f}/{la[1]:.2f}/{la[2]:.2f}{end_s} "
            f"({m['started_at'][:19]}Z)")


def _targets(rows: list[dict[str, Any]], source: str) -> list[list[Any]]:
    def status(met: bool | None) -> str:
        return "**inconclusive** (negative difference: timed under different load)" if met is None else (
            "**met**" if met else "**missed**")

    return [[t["target"], t["goal"], fmt(t["measured"]), status(t["met"]), source] for t in rows]


def _tuning_lines(c: dict[str, Any]) -> list[str]:
    tuned = c.get("tuning") or {}
    if not tuned:
        return []
    rows = [[label, " ".join(f"{k}={v}" for k, v in t["env"].items()) or "—", t["ratio_to_raw"],
             t["point"]["inferences_per_second"], t["point"]["latency_us"]["p50"] / 1e3,
             t["point"]["latency_us"]["p99"] / 1e3] for label, t in tuned.items()]
    return ["ORT thread settings, v2 binary at concurrency 16 (each on a fresh server):", "",
            md_table(["setting", "env", "ratio to raw best", "infer/s (this machine)", "p50 ms", "p99 ms"], rows), ""]


GPU_PRESETS = ("vit_small", "vit_base")
GPU_CONFIGS = ("fp32 CUDA", "fp16 CUDA", "TensorRT FP16")
GPU_CONCURRENCIES = (1, 16, 64)
UNMEASURED = "unmeasured on GPU"


def _gpu_section(gpu: dict[str, Any] | None) -> list[str]:
    """Comparison 6; every figure not measured on a GPU says so (a --cpu-check run is not a GPU figure)."""
    md = ["## 6. GPU: fp32 vs fp16 vs TensorRT (through the service)", ""]
    measured: dict[tuple[str, str, int], dict[str, Any]] = {}
    builds: dict[str, dict[str, Any]] = {}
    if gpu and not gpu.get("cpu_check"):
        md += [f"Machine: {gpu['machine'].get('cpu_model', '?')}; command `{gpu['command']}`.", ""]
        for r in gpu["results"]:
            if r.get("valid"):
                for p in r["points"]:
                    measured[(r["preset"], r["config"], p["concurrency"])] = {**p, "provider": r["provider"]}
            if "engine_build_load_seconds" in r:
                builds[r["preset"]] = r
    else:
        return [*md, f"No GPU was available to any run so far: every GPU figure is **{UNMEASURED}**. On a machine "
                f"with an NVIDIA GPU, `vitserve-bench gpu` measures {', '.join(GPU_CONFIGS)} for "
                f"{' and '.join(GPU_PRESETS)} at concurrency {', '.join(map(str, GPU_CONCURRENCIES))} (fresh server "
                "per configuration, v2 binary batch-1 requests, closed loop: infer/s, p50, front-end CPU) and "
                "TensorRT's engine build with an empty and a warm engine cache; this section then shows them.", ""]
    rows = []
    for preset in GPU_PRESETS:
        for config in GPU_CONFIGS:
            for c in GPU_CONCURRENCIES:
                p = measured.get((preset, config, c))
                rows.append([preset, config, c] + ([p["inferences_per_second"], p["latency_us"]["p50"] / 1e3,
                                                    p.get("server_cpu_cores")] if p else [UNMEASURED] * 3))
    md += [md_table(["preset", "configuration", "concurrency", "infer/s", "p50 ms", "front-end CPU cores"], rows), ""]
    build_rows = [[preset] + ([builds[preset]["engine_build_load_seconds"],
                               builds[preset]["cached_engine_load_seconds"]]
                              if preset in builds else [UNMEASURED] * 2) for preset in GPU_PRESETS]
    md += ["TensorRT engine build (load + warm-up of a model with a `tensorrt` accelerator, seconds):", "",
           md_table(["preset", "empty engine cache", "cached engines"], build_rows), ""]
    return md


def _frontend_lines(c: dict[str, Any]) -> list[str]:
    """Front-end CPU per inference (issue 13), when the run measured it."""
    fe = c.get("frontend_cpu")
    if not fe:
        return []
    rounds = c.get("frontend_cpu_rounds")
    how = (f" — the median of {rounds} paired round(s), each server point with the raw session timed right before "
           "and after it" if rounds else "")
    return [f"Front-end CPU per inference (server CPU − raw CPU per image at the batch size the server executed{how}):",
            "", frontend_table(fe), "",
            "The event-loop column is a direct reading of the server's main thread (its event loop) per inference, "
            "with no subtraction.", ""]


def _multi_section(multi: dict[str, Any] | None, base: Path, results: Path) -> list[str]:
    """Every variant side by side (issue 13): each checkout's targets and per-model ratios, before → after."""
    md = ["## 7. Every variant side by side: one repository vs a single-model server", ""]
    if not multi:
        return md + ["Not run (`vitserve-bench multi --preset vit_small --quick`).", ""]
    md += [f"{len(multi['models'])} {multi['preset']} models loaded in one server (v2 binary batch-1 requests; each "
           f"model measured while the others are loaded and idle) against a server that serves only that model; "
           f"command `{multi['command']}`.", ""]
    rows = []
    for run in multi["runs"]:
        r = run["ratios"]
        for t in run["targets"]:
            rows.append([run["label"], t["target"], t["goal"], fmt(t["measured"]),
                         "**met**" if t["met"] else "**missed**"])
        rows.append([run["label"], "time to ready (s, this machine): whole repository / one model", "—",
                     f"{run['multi']['ready_s']:.1f} / {r['one_model_ready_s']:.1f}", "—"])
    md += [md_table(["checkout", "target", "goal", "measured", "status"], rows), ""]
    c = f"c{multi['concurrency']}"
    per_model = [[run["label"], name, alone["c1"]["latency_us"]["p50"] / 1e3, v["p50_ratio"],
                  alone[c]["inferences_per_second"], v["throughput_ratio"]]
                 for run in multi["runs"] for name, alone in run["single"].items()
                 for v in [run["ratios"]["per_model"][name]]]
    md += [md_table(["checkout", "model", "p50 ms alone (this machine)", "p50 all loaded ÷ alone",
                     f"infer/s {c} alone (this machine)", f"infer/s {c} all loaded ÷ alone"], per_model), ""]
    preset = multi["preset"]
    for key in ("p50_ratio", "throughput_ratio"):
        md.append(f"![{key}](" + _rel(results / "multi" / f"{key}_{preset}.png", base) + ")")
    details = _rel(results / "multi" / f"multi_{preset}.md", base)
    return md + ["", f"Details: [{details}]({details})", ""]


def _openvino_section(ov: dict[str, Any] | None, results: Path, base: Path) -> list[str]:
    """The runtimes compared served over HTTP (`vitserve-bench openvino`): its own tables, without its title."""
    md = ["## 5b. CPU runtimes served: ONNX Runtime fp32/int8 vs OpenVINO f32/bf16", ""]
    report = results / "openvino" / "openvino.md"
    if not ov or not report.is_file():
        return [*md, "Not run (`vitserve-bench openvino --preset vit_small --quick`).", ""]
    tables = [line for line in report.read_text().splitlines() if line.startswith("|") or not line.strip()]
    note = (f"Model {ov['model']}; in-process figures at batch {ov['batch']} and at the mean batch the server ran "
            f"at c=16 ({ov.get('served_batch', '—')}). Load generator: {ov.get('client', 'python')}.")
    return [*md, note, "",
            *[line for i, line in enumerate(tables) if line.strip() or (i and tables[i - 1].strip())], "",
            "![served throughput](" + _rel(results / "openvino" / "openvino_throughput.png", base) + ")", ""]


def _grpc_section(grpc: dict[str, Any] | None, results: Path, base: Path) -> list[str]:
    """gRPC beside REST binary and beside Triton's gRPC front end (`vitserve-bench grpc`)."""
    md = ["## 5c. gRPC vs REST binary, vitserve vs Triton's gRPC (PyTriton)", ""]
    if not grpc:
        return [*md, "Not run (`vitserve-bench grpc --quick`).", ""]
    return [*md, f"Command: `{grpc['command']}`. One image per request, the same tensor over both protocols, closed "
            "loop on one grpc.aio channel (gRPC: unary ModelInfer calls, or the same messages on one ModelStreamInfer "
            "stream) or keep-alive connections (REST); server CPU counts the server's "
            "whole process group (PyTriton: tritonserver and its Python model process).", "",
            grpc["summary_markdown"], "",
            "![gRPC throughput](" + _rel(results / "grpc" / "grpc_throughput.png", base) + ")", ""]


def build_summary(results: Path = RESULTS_DIR, out: Path | None = None) -> str:
    out = out or REPO_ROOT / "BENCHMARKS.md"
    base = out.parent
    variants = _load(results / "variants" / "variants.json")
    ceilings = {p: _load(results / "ceiling" / f"ceiling_{p}.json") for p in ("demo", "vit_small")}
    gemm = _load(results / "gemm" / "gemm.json")
    int8 = _load(results / "int8" / "int8.json")
    peers = _load(results / "peers" / "peers.json")
    multi = _load(results / "multi" / "multi_vit_small.json") or _load(results / "multi" / "multi.json")
    openvino = _load(results / "openvino" / "openvino.json")
    grpc = _load(results / "grpc" / "grpc.json")
    runs = [r for r in (variants, *ceilings.values(), gemm, int8, peers, multi, openvino, grpc) if r]

    md: list[str] = ["# vitserve benchmarks", ""]
    md += [
        "Generated by `vitserve-bench summary` from the JSON under `bench/results/`; every figure below comes from the "
        "run whose command is shown. **Ratios first; absolute times are this machine's** and move with its load.",
        "",
        "## Machine and runs",
        "",
    ]
    if runs:
        m = runs[0]["machine"]
        md.append(f"- CPU: {m['cpu_model']}, {m['cores']} usable cores; "
                  f"flags {', '.join(m.get('cpu_flags', [])) or '—'}")
        md.append("- Software: " + ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items()))
        # a benchmark started right after another inherits its 1-minute load average (up to the core count);
        # more than the core count means something else was running too
        high = [r for r in runs if (r["machine"].get("load_average_start") or [0])[0] > r["machine"]["cores"]]
        if high:
            md.append(
                "- **Other processes were running** during some runs (load average above the core count at "
                "start, listed per run below): absolute figures are pessimistic and noisy; re-run on a quiet machine."
            )
        else:
            md.append("- Load average at the start of each run is listed below; up to the core count it is the "
                      "previous benchmark of the same sequence decaying out of the 1-minute average.")
        md += ["", md_table(["comparison", "command", "quick", "machine / load"],
                            [[r["comparison"] + (f" ({r.get('model')})" if r["comparison"] == "ceiling" else ""),
                              f"`{r['command']}`", "yes" if r.get("quick") else "no", _machine_line(r["machine"])]
                             for r in runs])]
    else:
        md.append("No results yet: run the commands below.")

    md += ["", "## Method", "",
           "- Load generator (`bench/loadgen.py`): aiohttp on uvloop, request bodies prebuilt, keep-alive connections, "
           "no response compression requested. Closed loop keeps N requests outstanding; open loop starts requests at "
           "Poisson arrival times and counts latency from the *scheduled* start (no coordinated omission). Each point "
           "has a warm-up, then windows until the last 3 agree within 10 % on throughput and p95 (perf_analyzer's "
           "rule) or the window limit (then marked unstable). Columns use perf_analyzer's names, in usec.",
           "- Server-side split: per response from vitserve's `Server-Timing` header on `/v1`, from deltas of "
           "`/v2/models/{m}/stats` (Triton's statistics, as perf_analyzer reads them) on `/v2`.",
           "- The generator shares the cores with the server: every point records the client's CPU use (cores), and "
           "its own ceiling is measured against a trivial local HTTP server in the same run.",
           "- Raw ONNX Runtime: one in-process session configured as vitserve's single-model session (all cores, "
           "sequential, spinning on, full graph optimisation); medians of repeated runs.",
           ]
    md += ["", "## Targets (issue 5)", ""]
    trows: list[list[Any]] = []
    for c in ceilings.values():
        if c:
            trows += _targets(c["targets"], f"ceiling, {c['model']}")
    if gemm:
        trows += _targets(gemm["targets"], f"gemm, {gemm['model']}")
    if peers:  # listed in full in section 3: one line here
        met = [t for t in peers.get("targets", []) if t["met"]]
        missed = [t["target"] for t in peers.get("targets", []) if not t["met"]]
        trows.append(["vitserve against each peer: throughput at saturation, p99 at a common load (section 3)",
                      "—", f"{len(met)} of {len(peers.get('targets', []))} met",
                      "**missed: " + "; ".join(missed) + "**" if missed else "met", "peers"])
    else:
        trows.append(["vitserve ≥ 1.3× each peer (demo), ≥ 1.05× (vit_small), lower p99", "—", "—", "**not run**",
                      "peers"])
    for preset in ("demo", "vit_small"):
        if not ceilings[preset]:
            trows.append([f"ceiling targets on {preset}", "—", "—", "**not run**", "ceiling"])
    md.append(md_table(["target", "goal", "measured", "status", "from"], trows))

    if variants:
        md += ["", "## 1. Variants: FLOPs ratio vs latency ratio (to vanilla)", ""]
        for res in variants["presets"]:
            rows = []
            for r in res["rows"]:
                ort = {t["batch_size"]: t for t in r["ort"]}
                eager = {t["batch_size"]: t for t in r["torch_eager"]}
                rows.append([
                    r["label"], r["flops_ratio"], r["ort_latency_ratio"]["1"], r["ort_latency_ratio"]["8"],
                    r["ort_latency_ratio"]["32"],
                    r["flops"] / 1e9, r["parameters"] / 1e6, ort[1]["median_s"] * 1e3, ort[32]["median_s"] / 32 * 1e3,
                    eager[1]["median_s"] * 1e3,
                ])
            accuracy = any(r.get("top1") is not None for r in res["rows"])
            finetuned = any(r.get("finetuned_top1") is not None for r in res["rows"])
            if accuracy:  # trained models (`--models`): accuracy beside cost, and how each was obtained
                for row, r in zip(rows, res["rows"], strict=True):
                    row += [r["top1"] * 100 if r.get("top1") is not None else None, r.get("obtained"),
                            r.get("dataset")]
                    if finetuned:
                        row += [r["finetuned_top1"] * 100 if r.get("finetuned_top1") is not None else None,
                                r.get("finetuned_obtained")]
            md += [f"### {res['preset']}", "", md_table(
                ["variant", "FLOPs ÷ vanilla", "ORT latency ÷ vanilla (b1)", "ORT latency ÷ vanilla (b8)",
                 "ORT latency ÷ vanilla (b32)",
                 "GFLOPs/img", "params (M)", "ORT b1 ms (this machine)", "ORT b32 ms/img (this machine)",
                 "PyTorch eager b1 ms (this machine)",
                 *(["held-out top-1 %", "obtained", "dataset identity"] if accuracy else []),
                 *(["held-out top-1 % converted from vanilla", "obtained (converted)"] if finetuned else [])],
                rows), "",
                "![FLOPs vs latency]("
                + _rel(results / "variants" / ("flops_vs_latency_" + res["preset"] + ".png"), base) + ")",
                ""]
            if accuracy:
                md += ["Accuracies are comparable only between rows with the same dataset identity.", "",
                       "![accuracy vs latency (Pareto)](" + _rel(results / "variants" / (
                           "accuracy_vs_latency_" + res["preset"] + ".png"), base) + ")", ""]
        full = _rel(results / "variants" / "variants.md", base)
        md.append(f"Full table (batch 8, eager ratios): [{full}]({full})")

    md += ["", "## 2. Ceiling: the service vs raw ONNX Runtime in-process", ""]
    for preset, c in ceilings.items():
        if not c:
            md += [f"- {preset}: not run (`vitserve-bench ceiling --preset {preset} --quick`)"]
            continue
        v2 = {p["concurrency"]: p for p in c["service_v2"]}
        jp = {p["concurrency"]: p for p in c["service_jpeg"]}
        raw_b1 = next(t for t in c["raw_ort"] if t["batch_size"] == 1)
        best = c["raw_best"]
        gen = c["generator_overhead"]
        md += [f"### {c['model']}", "", md_table(
            ["", "ratio to raw best", "inferences/s (this machine)", "p50 ms", "p99 ms", "client CPU (cores)",
             "server CPU us/inference"],
            [["raw ORT, best batch " + str(best["batch_size"]), 1.0, best["batch_size"] / best["median_s"], "—", "—",
              "—", c.get("raw_cpu_us_per_image")],
             ["service v2 binary, c=16", v2[16]["inferences_per_second"] / (best["batch_size"] / best["median_s"]),
              v2[16]["inferences_per_second"], v2[16]["latency_us"]["p50"] / 1e3, v2[16]["latency_us"]["p99"] / 1e3,
              v2[16]["client_cpu_cores"], v2[16].get("server_cpu_us_per_inference")],
             ["service JPEG, c=16", jp[16]["inferences_per_second"] / (best["batch_size"] / best["median_s"]),
              jp[16]["inferences_per_second"], jp[16]["latency_us"]["p50"] / 1e3, jp[16]["latency_us"]["p99"] / 1e3,
              jp[16]["client_cpu_cores"], jp[16].get("server_cpu_us_per_inference")],
             ["service v2 binary, c=1", v2[1]["inferences_per_second"] / (best["batch_size"] / best["median_s"]),
              v2[1]["inferences_per_second"], v2[1]["latency_us"]["p50"] / 1e3, v2[1]["latency_us"]["p99"] / 1e3,
              v2[1]["client_cpu_cores"], v2[1].get("server_cpu_us_per_inference")]]),
            "",
            "CPU per inference, service ÷ raw in-process (insensitive to other load on the machine): "
            + ", ".join(f"{k} {v:.2f}" for k, v in (c.get("server_cpu_over_raw_cpu") or {}).items()) + ".",
            "",
            *_frontend_lines(c),
            f"Raw batch-1 latency {raw_b1['median_s'] * 1e3:.2f} ms; service p50 at c=1 "
            f"{v2[1]['latency_us']['p50'] / 1e3:.2f} ms. Server-side split at c=16 (v2, usec): "
            + ", ".join(f"{k} {v:.0f}" for k, v in v2[16]["server_us"].items())
            + (f". Load generator ceiling: {gen['max_requests_per_second']:,.0f} req/s, "
               f"{gen['client_cpu_us_per_request']:.0f} µs client CPU per request." if gen else
               f". Load generator: {c.get('client', 'python')}."),
            "",
            *_tuning_lines(c),
            "![latency vs throughput](" + _rel(results / "ceiling" / f"latency_throughput_{preset}.png", base) + ")",
            "",
            "Details: [" + _rel(results / "ceiling" / f"ceiling_{preset}.md", base) + "]("
            + _rel(results / "ceiling" / f"ceiling_{preset}.md", base) + ")", ""]

    md += ["", "## 3. Peers", ""]
    if peers:
        md += [peers.get("summary_markdown", ""), ""]
    else:
        md += ["Not run: see the status note below.", ""]

    md += ["## 4. Physical limit: achieved GFLOP/s vs this machine's fp32 GEMM rate", ""]
    if gemm:
        peak = gemm["peak_gemm"]
        md += [md_table(
            ["", "ratio to GEMM rate", "GFLOP/s (this machine)"],
            [[f"{gemm['model']} batch {gemm['batch_size']} (MatMul/Gemm/Conv FLOPs)",
              gemm["achieved_gflops_gemm_only"] / peak["gflops"], gemm["achieved_gflops_gemm_only"]],
             [f"{gemm['model']} batch {gemm['batch_size']} (all FLOPs)",
              gemm["achieved_gflops_total"] / peak["gflops"], gemm["achieved_gflops_total"]],
             [f"fastest fp32 GEMM ({peak['engine']}, {'x'.join(map(str, peak['shape']))})", 1.0, peak["gflops"]]]),
            "",
            f"ORT profile at batch {gemm['batch_size']}: MatMul/Gemm/Conv kernels take "
            f"{gemm.get('matmul_share_of_time', float('nan')):.0%} of kernel time and reach "
            f"{gemm.get('in_graph_matmul_gflops', float('nan')):.1f} GFLOP/s inside the graph (top ops: "
            + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in list((gemm.get("op_profile_s") or {}).items())[:5]) + ").",
            "", "![GFLOP/s](" + _rel(results / "gemm" / ("gflops_" + gemm["model"] + ".png"), base) + ")", ""]
    else:
        md += ["Not run.", ""]

    md += ["## 5. int8 (dynamic quantisation) vs fp32", ""]
    if int8:
        rows = []
        for r in int8["results"]:
            b = str(r["batch_sizes"][1])
            tr = {str(k): v for k, v in r["throughput_ratio"].items()}
            rows.append([r["model"], tr["1"], tr[b], b, r["top1_agreement"], r["fp32"].get("accuracy"),
                         r["int8"].get("accuracy"), r["inputs"]])
        md += [md_table(["model", "throughput int8 ÷ fp32 (b1)", "throughput int8 ÷ fp32 (max b)", "max b",
                         "top-1 agreement", "fp32 accuracy", "int8 accuracy", "inputs"], rows), "",
               "![int8](" + _rel(results / "int8" / "int8_speedup.png", base) + ")", ""]
    else:
        md += ["Not run.", ""]

    md += _openvino_section(openvino, results, base)
    md += _grpc_section(grpc, results, base)
    md += _gpu_section(_load(results / "gpu" / "gpu.json"))
    md += _multi_section(multi, base, results)
    md += frontend_summary(_load(results / "frontend" / "frontend.json"), results, lambda p: _rel(p, base))

    analysis = results / "analysis.md"
    if analysis.is_file():
        md += [analysis.read_text().rstrip(), ""]

    md += [
        "## Reproduce",
        "",
        "Each command builds the models it needs with `export/` into `bench/results/tmp/` (ignored by git; delete it "
        "to rebuild), writes `bench/results/<comparison>/` (JSON, markdown, PNG) and prints progress on stderr. "
        "Drop `--quick` for longer windows and full sweeps.",
        "",
        "```sh",
        "vitserve-bench variants --preset demo --preset vit_small --quick",
        "vitserve-export finetune SPECS --data DIGITS --checkpoint demo.pth --epochs 6 --lr 2e-3 --batch-size 32 "
        "--augment affine -r DIR",
        "vitserve-bench variants --preset demo --models models/demo --finetuned DIR --quick   # accuracy beside cost",
        "vitserve-bench ceiling --preset demo --quick --tune   # --tune: also ORT thread/spinning settings",
        "vitserve-bench ceiling --preset vit_small --quick",
        "vitserve-bench peers --preset demo --preset vit_small --quick   # venvs per peer on first use",
        "vitserve-bench gemm --preset vit_small --quick",
        "vitserve-bench int8 --preset demo --preset vit_small --quick",
        "vitserve-bench openvino --preset vit_small --quick   # ORT fp32/int8 vs OpenVINO f32/bf16, served",
        "vitserve-bench grpc --preset demo --preset vit_small --quick   # gRPC vs REST binary, vs PyTriton's gRPC",
        "vitserve-bench gpu --preset vit_small --preset vit_base   # on a machine with an NVIDIA GPU",
        "vitserve-bench multi --preset vit_small --quick   "
        "# six variants in one server vs one each; --baseline-root DIR",
        "vitserve-bench frontend --quick   # off-CPU stand-in: 1 vs 2 front-end processes",
        "vitserve-bench load --url http://127.0.0.1:8000 --model demo --protocol v2 --concurrency 1,2,4,8,16,32 "
        "--overhead",
        "vitserve-bench summary            # regenerates this file",
        "```",
    ]
    text = "\n".join(md) + "\n"
    out.write_text(text)
    return text

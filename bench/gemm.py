"""Comparison 4 — the physical limit: achieved GFLOP/s of a model vs this machine's fp32 GEMM rate.

A ViT is mostly matrix multiplication, so the fastest fp32 GEMM this machine runs (measured in the
same run with numpy's BLAS and with a one-node ONNX Runtime MatMul, large square and the model's
own MLP shapes) bounds what any serving stack can reach. The model's achieved rate is its
MatMul/Gemm/Conv FLOPs (2 x MACs from the manifest, the work a GEMM rate measures) per image times
the batch, divided by ORT's median batch latency. Target (issue 5): achieved ÷ GEMM ≥ 0.5 at
batch 32 for vit_small. The total FLOPs (with element-wise ops) are reported beside it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from bench.inproc import Timing, ort_op_profile, ort_session, time_call, time_ort
from bench.machine import machine_info
from bench.models import BenchModel, ensure_models, model_file
from bench.report import command_line, md_table, plot_bars, write_result

TARGET_RATIO = 0.5
MIN_PEAK_FLOP = 1e9


def numpy_gemm(m: int, k: int, n: int, *, min_time_s: float, seed: int = 0) -> dict[str, Any]:
    """GFLOP/s of `a @ b` in fp32 with numpy's BLAS (all cores)."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    t = time_call(lambda: a @ b, 1, min_repeats=3, min_time_s=min_time_s)
    return {"engine": "numpy", "shape": [m, k, n], "median_s": t.median_s, "gflops": 2 * m * k * n / t.median_s / 1e9}


def ort_matmul(m: int, k: int, n: int, *, min_time_s: float, seed: int = 0) -> dict[str, Any]:
    """GFLOP/s of a one-node ONNX MatMul (weights as an initializer, like a model layer) in ORT."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = rng.standard_normal((k, n), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
        initializer=[numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9  # what every ORT >= 1.16 reads; onnx's newest IR may be ahead of ORT's
    onnx.checker.check_model(model)
    sess = ort_session(model.SerializeToString())
    x = rng.standard_normal((m, k), dtype=np.float32)
    t = time_call(lambda: sess.run(None, {"x": x}), 1, min_repeats=3, min_time_s=min_time_s)
    return {"engine": "onnxruntime", "shape": [m, k, n], "median_s": t.median_s,
            "gflops": 2 * m * k * n / t.median_s / 1e9}


def gemm_shapes(preset: str, batch: int, embed_dim: int, tokens: int, mlp_ratio: float,
                quick: bool) -> list[tuple[int, int, int]]:
    """Large square GEMMs plus the model's own MLP/QKV shapes at `batch`."""
    rows = batch * tokens
    hidden = int(embed_dim * mlp_ratio)
    shapes = [(1024, 1024, 1024), (2048, 2048, 2048)]
    if not quick:
        shapes.append((4096, 4096, 4096))
    shapes += [(rows, embed_dim, hidden), (rows, hidden, embed_dim), (rows, embed_dim, 3 * embed_dim)]
    return shapes


def run(preset: str, *, quick: bool, cache: Path, batch: int = 32, out_dir: Path | None = None) -> Path:
    machine = machine_info()
    repository = cache / "repository"
    model = BenchModel(preset)
    manifest = ensure_models([model], repository)[model.model_name]
    arch = manifest.architecture
    tokens = (int(arch["img_size"]) // int(arch["patch_size"])) ** 2 + 1
    min_time = 0.5 if quick else 2.0

    gemms: list[dict[str, Any]] = []
    for m, k, n in gemm_shapes(preset, batch, int(arch["embed_dim"]), tokens, float(arch["mlp_ratio"]), quick):
        for fn in (numpy_gemm, ort_matmul):
            r = fn(m, k, n, min_time_s=min_time)
            print(f"[gemm] {r['engine']:12s} {m}x{k}x{n}: {r['gflops']:.1f} GFLOP/s", file=sys.stderr, flush=True)
            gemms.append(r)
    # the machine's rate: GEMMs big enough (>= 1 GFLOP) that timer and thread wake-up noise do not dominate
    big = [r for r in gemms if 2 * r["shape"][0] * r["shape"][1] * r["shape"][2] >= MIN_PEAK_FLOP]
    peak = max(big, key=lambda r: r["gflops"])

    print(f"[gemm] {model.model_name} at batch {batch} in ORT", file=sys.stderr, flush=True)
    sess = ort_session(model_file(repository, model.model_name))
    t: Timing = time_ort(sess, [batch], min_repeats=3 if quick else 10, min_time_s=min_time)[0]
    del sess
    print(f"[gemm] ORT profile of {model.model_name} at batch {batch}", file=sys.stderr, flush=True)
    profile = ort_op_profile(model_file(repository, model.model_name), batch, runs=3 if quick else 10)
    profiled_total = sum(profile.values())
    matmul_time = sum(v for k, v in profile.items() if k in ("MatMul", "FusedMatMul", "Gemm", "Conv"))
    by_op = manifest.costs.by_op
    matmul_flops = sum(by_op.get(k, 0) for k in ("MatMul", "Gemm", "Conv")) * batch
    in_graph_gemm_rate = matmul_flops / matmul_time / 1e9 if matmul_time > 0 else float("nan")
    gemm_flops = 2 * manifest.costs.macs
    achieved = gemm_flops * batch / t.median_s / 1e9
    achieved_total = manifest.costs.flops * batch / t.median_s / 1e9
    ratio = achieved / peak["gflops"]
    machine = machine.finish()
    target = {"target": f"achieved GFLOP/s ({preset}, batch {batch}) ÷ measured fp32 GEMM rate",
              "goal": f">= {TARGET_RATIO}", "measured": ratio, "met": ratio >= TARGET_RATIO}
    data = {
        "comparison": "gemm",
        "quick": quick,
        "command": command_line(),
        "machine": machine,
        "model": model.model_name,
        "batch_size": batch,
        "gemm_flops_per_image": gemm_flops,
        "total_flops_per_image": manifest.costs.flops,
        "model_timing": t.model_dump(),
        "achieved_gflops_gemm_only": achieved,
        "achieved_gflops_total": achieved_total,
        "gemm_rates": gemms,
        "peak_gemm": peak,
        "targets": [target],
        "op_profile_s": profile,
        "matmul_share_of_time": matmul_time / profiled_total if profiled_total else float("nan"),
        "in_graph_matmul_gflops": in_graph_gemm_rate,
    }
    md = [
        f"# Comparison 4 — physical limit: {model.model_name} vs this machine's fp32 GEMM rate",
        "",
        f"Command: `{command_line()}`  ",
        f"Machine: {machine.summary()}",
        "",
        md_table(["target", "goal", "measured", "met"],
                 [[target["target"], target["goal"], ratio, "met" if target["met"] else "MISSED"]]),
        "",
        f"{model.model_name} at batch {batch}: median {t.median_s * 1000:.1f} ms → {achieved:.1f} GFLOP/s counting "
        f"MatMul/Gemm/Conv work ({gemm_flops / 1e9:.2f} GFLOP/image), {achieved_total:.1f} GFLOP/s counting all "
        f"FLOPs ({manifest.costs.flops / 1e9:.2f} GFLOP/image). Fastest GEMM measured: {peak['gflops']:.1f} GFLOP/s "
        f"({peak['engine']}, {'x'.join(map(str, peak['shape']))}; only GEMMs of at least 1 GFLOP count "
        "towards the machine's rate, smaller ones are listed for reference).",
        "",
        "## Where the time goes (ORT profiler, one batch)",
        "",
        f"MatMul/Gemm/Conv kernels take {matmul_time / profiled_total:.0%} of the profiled kernel time and run at "
        f"{in_graph_gemm_rate:.1f} GFLOP/s inside the graph; the rest is element-wise work (Softmax, LayerNorm, "
        "Add, Split/Transpose...) that the GEMM rate does not bound.",
        "",
        md_table(["op type", "ms per batch (this machine)", "share"],
                 [[k, v * 1000, v / profiled_total] for k, v in list(profile.items())[:12]]),
        "",
        "## fp32 GEMM rates measured in this run (this machine)",
        "",
        md_table(["engine", "M x K x N", "median ms", "GFLOP/s"],
                 [[g["engine"], "x".join(map(str, g["shape"])), g["median_s"] * 1000, g["gflops"]] for g in gemms]),
    ]
    directory = write_result("gemm", data, "\n".join(md), out_dir)
    bars = {f"{g['engine'][:4]} {'x'.join(map(str, g['shape']))}": g["gflops"] for g in gemms}
    bars[f"{model.model_name} b{batch}"] = achieved
    plot_bars(bars, directory / f"gflops_{preset}.png", f"fp32 GFLOP/s on this machine: GEMMs vs {model.model_name}",
              "GFLOP/s", target=peak["gflops"] * TARGET_RATIO)
    return directory

"""`vitserve-bench`: one command per comparison, each with a --quick mode.

    vitserve-bench load --url http://127.0.0.1:8000 --model demo [--protocol v1|v2] \
[--concurrency 1,2,4 | --rate 50,100]
    vitserve-bench variants [--preset demo --preset vit_small]       # comparison 1
    vitserve-bench ceiling --preset demo|vit_small                   # comparison 2
    vitserve-bench gemm --preset vit_small (alias: roofline)         # comparison 4
    vitserve-bench int8 [--preset demo --preset vit_small]           # comparison 5
    vitserve-bench openvino [--preset vit_small]                     # ORT vs OpenVINO (f32, bf16), served
    vitserve-bench peers [--preset demo --preset vit_small] [--peer litserve ...]   # comparison 3
    vitserve-bench gpu [--preset vit_small --preset vit_base] [--cpu-check]        # comparison 6 (needs a GPU)
    vitserve-bench multi [--preset vit_small] [--baseline-root DIR] [--server-root DIR]   # six variants side by side
    vitserve-bench spinning [--preset demo --preset vit_small] [--rate 20]   # ORT spinning: CPU vs throughput
    vitserve-bench frontend [--batch-ms 2] [--rounds 3] [--client wrk|python]  # off-CPU stand-in: 1 vs 2 front ends
    vitserve-bench all [--skip-peers]                                # all of the above, then the summary
    vitserve-bench summary                                           # BENCHMARKS.md from the latest results

Results go to bench/results/<comparison>/ (JSON, markdown, PNG); models are built with export/
into a cache directory (default bench/results/tmp, ignored by git) and reused between runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from pathlib import Path

if __name__ == "__main__":  # run as a file, its folder leads sys.path and bench/grpc.py would shadow grpcio
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from bench.models import DEFAULT_CACHE


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _float_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="short measurements (the whole command in a few minutes)")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where benchmark models are built and reused")
    p.add_argument("--out", type=Path, default=None, help="results directory (default bench/results)")


def _client_options(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--client", choices=("python", "wrk"), default=None,
                   help="load generator: wrk (C, little CPU per request; closed loop only) or python (bench/client.py, "
                        f"aiohttp); default {default}")
    p.add_argument("--wrk-threads", type=int, choices=(1, 2, 4), default=1, help="wrk threads (default 1)")


def _resolve_client(args: argparse.Namespace, prefer_wrk: bool) -> str:
    """The --client choice, else wrk when preferred and installed, else python; exits when wrk is asked for and
    missing or given request rates (wrk keeps a closed loop)."""
    from bench.wrk import wrk_path

    client = args.client or ("wrk" if prefer_wrk and wrk_path() else "python")
    if client == "wrk" and wrk_path() is None:
        raise SystemExit("error: --client wrk but wrk is not installed (apt-get install wrk)")
    if client == "wrk" and getattr(args, "rate", None):
        raise SystemExit("error: --client wrk measures concurrency only (no --rate)")
    return client


def _presets(args: argparse.Namespace, default: list[str]) -> list[str]:
    presets = args.preset or default
    for p in presets:
        if p not in ("demo", "vit_tiny", "vit_small", "vit_base"):
            raise SystemExit(f"error: unknown preset {p!r}; choose demo, vit_tiny, vit_small or vit_base")
    return presets


def _model_input_shape(url: str, model: str) -> tuple[int, ...]:
    """The model's input shape without the batch dimension, from the server's v2 metadata."""
    with urllib.request.urlopen(f"{url.rstrip('/')}/v2/models/{model}", timeout=10) as resp:
        meta = json.load(resp)
    shape = [int(d) for d in meta["inputs"][0]["shape"]]
    return tuple(shape[1:])


def cmd_load(args: argparse.Namespace) -> int:
    from bench.loadgen import MeasureConfig, sweep
    from bench.machine import machine_info
    from bench.overhead import measure_overhead
    from bench.payloads import classify_request, encode_image, infer_request, synthetic_image
    from bench.report import command_line, perf_analyzer_table, plot_latency_throughput, write_result

    if args.concurrency is None and args.rate is None:
        args.concurrency = [1, 2, 4, 8, 16, 32] if not args.quick else [1, 4, 16]
    machine = machine_info()
    if args.protocol == "v2":
        shape = (args.batch, *_model_input_shape(args.url, args.model))
        spec = infer_request(args.model, shape)
    else:
        side = args.image_size
        spec = classify_request(args.model, encode_image(synthetic_image(side, side), args.image_format),
                                args.image_format)
    if args.quick:
        cfg = MeasureConfig(window_s=1.5, warmup_s=1.0, max_windows=4, fixed_duration_s=args.duration)
    else:
        cfg = MeasureConfig(window_s=args.window, warmup_s=2.0, max_windows=10, fixed_duration_s=args.duration)
    client = _resolve_client(args, prefer_wrk=False)
    print(f"[load] load generator: {client}", file=sys.stderr, flush=True)
    points = sweep(args.url, spec, concurrencies=args.concurrency or [], rates=args.rate or [], cfg=cfg,
                   protocol=args.protocol, stats_path=f"/v2/models/{args.model}/stats", client=client,  # type: ignore[arg-type]
                   wrk_threads=args.wrk_threads)
    overhead = measure_overhead(spec, max(args.concurrency or [16])) if args.overhead else None
    machine = machine.finish()
    md = [
        f"# Load: {args.model} at {args.url} ({spec.description})",
        "",
        f"Command: `{command_line()}`  ",
        f"Machine: {machine.summary()}  ",
        f"Load generator: {client}",
        "",
        perf_analyzer_table([p for p in points if p.mode == "concurrency"]) if args.concurrency else "",
        "",
        perf_analyzer_table([p for p in points if p.mode == "rate"]) if args.rate else "",
    ]
    if overhead:
        md += ["", overhead.sentence() + "."]
    directory = write_result(
        "load",
        {"comparison": "load", "command": command_line(), "machine": machine, "url": args.url, "model": args.model,
         "request": spec.description, "client": client, "points": points, "generator_overhead": overhead},
        "\n".join(md), args.out,
    )
    plot_latency_throughput({f"{args.model} {args.protocol}": points}, directory / "latency_throughput.png",
                            f"{args.model}: latency vs throughput ({spec.description})")
    print(f"results in {directory}")
    return 0 if all(p.errors == 0 for p in points) else 1


def cmd_variants(args: argparse.Namespace) -> int:
    from bench import variants

    presets = _presets(args, ["demo"] if args.models is not None else ["demo", "vit_small"])
    directory = variants.run(presets, quick=args.quick, cache=args.cache, out_dir=args.out, models=args.models,
                             finetuned=args.finetuned)
    print(f"results in {directory}")
    return 0


def cmd_ceiling(args: argparse.Namespace) -> int:
    from bench import ceiling

    env = dict(kv.split("=", 1) for kv in args.server_env)
    client = _resolve_client(args, prefer_wrk=True)
    print(f"[ceiling] load generator: {client}", file=sys.stderr, flush=True)
    for preset in _presets(args, ["demo"]):
        directory = ceiling.run(preset, quick=args.quick, cache=args.cache, out_dir=args.out, env=env, tuning=args.tune,
                                server_root=args.server_root, client=client)  # type: ignore[arg-type]
        print(f"results in {directory}")
    return 0


def cmd_gemm(args: argparse.Namespace) -> int:
    from bench import gemm

    for preset in _presets(args, ["vit_small"]):
        print(f"results in {gemm.run(preset, quick=args.quick, cache=args.cache, batch=args.batch, out_dir=args.out)}")
    return 0


def cmd_openvino(args: argparse.Namespace) -> int:
    from bench import openvino

    client = _resolve_client(args, prefer_wrk=True)
    print(f"[openvino] load generator: {client}", file=sys.stderr, flush=True)
    for preset in _presets(args, ["vit_small"]):
        directory = openvino.run(preset, quick=args.quick, cache=args.cache, out_dir=args.out,
                                 client=client)  # type: ignore[arg-type]
        print(f"results in {directory}")
    return 0


def cmd_int8(args: argparse.Namespace) -> int:
    from bench import int8

    directory = int8.run(_presets(args, ["demo", "vit_small"]), quick=args.quick, cache=args.cache, out_dir=args.out,
                         trained=args.trained_repository)
    print(f"results in {directory}")
    return 0


def cmd_gpu(args: argparse.Namespace) -> int:
    from bench import gpu

    directory = gpu.run(_presets(args, ["vit_small", "vit_base"]), quick=args.quick, cache=args.cache,
                        out_dir=args.out, cpu_check=args.cpu_check, concurrencies=tuple(args.concurrency))
    print(f"results in {directory}")
    return 0


def cmd_frontend(args: argparse.Namespace) -> int:
    from bench import frontend

    client = _resolve_client(args, prefer_wrk=True)
    directory = frontend.run(quick=args.quick, cache=args.cache, out_dir=args.out, batch_ms=args.batch_ms,
                             client=client, wrk_threads=args.wrk_threads, rounds=args.rounds)  # type: ignore[arg-type]
    print(f"results in {directory}")
    return 0


def cmd_peers(args: argparse.Namespace) -> int:
    from bench import peers

    chosen = args.peer or list(peers.ALL_PEERS)
    directory = peers.run(_presets(args, ["demo", "vit_small"]), chosen, quick=args.quick, cache=args.cache,
                          out_dir=args.out)
    print(f"results in {directory}")
    return 0


def cmd_grpc(args: argparse.Namespace) -> int:
    from bench import grpc

    directory = grpc.run(_presets(args, ["demo", "vit_small"]), quick=args.quick, cache=args.cache, out_dir=args.out)
    print(f"results in {directory}")
    return 0


def cmd_multi(args: argparse.Namespace) -> int:
    from bench import multi

    env = dict(kv.split("=", 1) for kv in args.server_env)
    for root in (args.server_root, args.baseline_root):
        if root is not None and not (root / "service" / "cli.py").is_file():
            raise SystemExit(f"error: {root} is not a vitserve checkout (no service/cli.py)")
    for preset in _presets(args, ["vit_small"]):
        directory = multi.run(preset, quick=args.quick, cache=args.cache, out_dir=args.out,
                              server_root=args.server_root, baseline_root=args.baseline_root, env=env,
                              all_at_once=args.all_at_once,
                              measured=args.measure)
        print(f"results in {directory}")
    return 0


def cmd_spinning(args: argparse.Namespace) -> int:
    from bench import spinning

    directory = spinning.run(_presets(args, ["demo", "vit_small"]), quick=args.quick, cache=args.cache,
                             out_dir=args.out, rate=args.rate)
    print(f"results in {directory}")
    return 0


def cmd_all(args: argparse.Namespace) -> int:
    """Every comparison in turn with the same --quick/--cache/--out, then BENCHMARKS.md."""
    import time

    from bench import ceiling, gemm, int8, peers, variants
    from bench.report import RESULTS_DIR
    from bench.summary import REPO_ROOT, build_summary

    steps: list[tuple[str, object]] = [
        ("variants", lambda: variants.run(["demo", "vit_small"], quick=args.quick, cache=args.cache, out_dir=args.out)),
        ("ceiling demo",
         lambda: ceiling.run("demo", quick=args.quick, cache=args.cache, out_dir=args.out, tuning=True)),
        ("ceiling vit_small", lambda: ceiling.run("vit_small", quick=args.quick, cache=args.cache, out_dir=args.out)),
        ("gemm", lambda: gemm.run("vit_small", quick=args.quick, cache=args.cache, out_dir=args.out)),
        ("int8", lambda: int8.run(["demo", "vit_small"], quick=args.quick, cache=args.cache, out_dir=args.out)),
    ]
    if not args.skip_peers:
        steps.append(("peers", lambda: peers.run(["demo", "vit_small"], list(peers.ALL_PEERS), quick=args.quick,
                                                 cache=args.cache, out_dir=args.out)))
    for label, step in steps:
        started = time.perf_counter()
        print(f"=== {label}", file=sys.stderr, flush=True)
        step()  # type: ignore[operator]
        print(f"=== {label} done in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    if args.out is None:
        build_summary(RESULTS_DIR, REPO_ROOT / "BENCHMARKS.md")
        print(f"wrote {REPO_ROOT / 'BENCHMARKS.md'}")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from bench.report import RESULTS_DIR
    from bench.summary import REPO_ROOT, build_summary

    out = args.output or REPO_ROOT / "BENCHMARKS.md"
    build_summary(args.results or RESULTS_DIR, out)
    print(f"wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vitserve-bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("load", help="closed-loop concurrency sweep and/or open-loop Poisson rates against a server")
    p.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--model", required=True)
    p.add_argument("--protocol", choices=("v1", "v2"), default="v2",
                   help="v2: binary FP32 tensors to /v2/models/M/infer; v1: image upload to /v1/models/M/classify")
    p.add_argument("--concurrency", type=_int_list, default=None, help="e.g. 1,2,4,8,16,32")
    p.add_argument("--rate", type=_float_list, default=None, help="Poisson arrival rates in requests/s, e.g. 20,50")
    p.add_argument("--duration", type=float, default=None, help="measure each point for this many seconds "
                   "(default: until the last 3 windows agree within 10%%)")
    p.add_argument("--window", type=float, default=3.0, help="measurement window in seconds")
    p.add_argument("--batch", type=int, default=1, help="images per v2 request")
    p.add_argument("--image-format", choices=("jpeg", "png"), default="jpeg")
    p.add_argument("--image-size", type=int, default=256, help="side of the square synthetic upload in pixels")
    p.add_argument("--overhead", action="store_true", help="also measure the generator against a trivial server")
    _client_options(p, "python")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path, default=None)
    p.set_defaults(func=cmd_load)

    p = sub.add_parser("variants", help="comparison 1: FLOPs, params, ORT and eager latency of every variant")
    p.add_argument("--preset", action="append", help="repeatable (default: demo and vit_small)")
    p.add_argument("--models", type=Path, metavar="DIR",
                   help="time the trained models of this repository (e.g. models/demo) and report their accuracy "
                        "and a Pareto plot, instead of building random-weight ones")
    p.add_argument("--finetuned", type=Path, metavar="DIR",
                   help="a repository of the variants converted from the vanilla checkpoint and fine-tuned "
                        "(`vitserve-export finetune --checkpoint`): each row also reports that accuracy")
    _common(p)
    p.set_defaults(func=cmd_variants)

    p = sub.add_parser("ceiling", help="comparison 2: raw ORT in-process vs the service over HTTP")
    p.add_argument("--preset", action="append", help="repeatable (default: demo)")
    p.add_argument("--server-env", action="append", default=[], metavar="VITSERVE_X=value",
                   help="extra service setting as an environment variable (repeatable)")
    p.add_argument("--tune", action="store_true",
                   help="also measure concurrency 16 with other ORT thread/spinning settings (one server each)")
    p.add_argument("--server-root", type=Path, default=None, metavar="DIR",
                   help="serve with the service of another checkout (a before/after comparison)")
    _client_options(p, "wrk when installed, else python")
    _common(p)
    p.set_defaults(func=cmd_ceiling)

    for name in ("gemm", "roofline"):
        p = sub.add_parser(name, help="comparison 4: achieved GFLOP/s vs this machine's fp32 GEMM rate")
        p.add_argument("--preset", action="append", help="repeatable (default: vit_small)")
        p.add_argument("--batch", type=int, default=32)
        _common(p)
        p.set_defaults(func=cmd_gemm)

    p = sub.add_parser("int8", help="comparison 5: dynamic int8 vs fp32 throughput, agreement, digits accuracy")
    p.add_argument("--preset", action="append", help="repeatable (default: demo and vit_small)")
    p.add_argument("--trained-repository", type=Path, default=None,
                   help="reuse a repository holding the trained demo and demo-int8 instead of training them")
    _common(p)
    p.set_defaults(func=cmd_int8)

    p = sub.add_parser("openvino", help="ORT fp32/int8 vs OpenVINO f32/bf16 served over HTTP, with in-process "
                       "OpenVINO at the same batch size")
    p.add_argument("--preset", action="append", help="repeatable (default: vit_small)")
    _client_options(p, "wrk when installed, else python")
    _common(p)
    p.set_defaults(func=cmd_openvino)

    p = sub.add_parser("gpu", help="comparison 6: fp32 vs fp16 vs TensorRT through the service on a GPU")
    p.add_argument("--preset", action="append", help="repeatable (default: vit_small and vit_base)")
    p.add_argument("--concurrency", type=_int_list, default=[1, 16, 64], help="default 1,16,64")
    p.add_argument("--cpu-check", action="store_true",
                   help="run the harness on the CPU provider (checks the script; not GPU figures)")
    _common(p)
    p.set_defaults(func=cmd_gpu)

    p = sub.add_parser("frontend", help="the off-CPU stand-in runtime with 1 and 2 front-end processes (issue 13)")
    p.add_argument("--batch-ms", type=float, default=2.0, help="the stand-in's wait per batch (default 2 ms)")
    p.add_argument("--rounds", type=int, default=None,
                   help="rounds of alternating 1 / 2 front-end measurements (default 3; 1 with --quick)")
    _client_options(p, "wrk where installed, else python")
    _common(p)
    p.set_defaults(func=cmd_frontend)

    p = sub.add_parser("peers", help="comparison 3: vitserve vs LitServe, BentoML, Ray Serve, Triton (PyTriton)")
    p.add_argument("--preset", action="append", help="repeatable (default: demo and vit_small)")
    p.add_argument("--peer", action="append", choices=("litserve", "bentoml", "rayserve", "pytriton"),
                   help="repeatable (default: all four)")
    _common(p)
    p.set_defaults(func=cmd_peers)

    p = sub.add_parser("grpc", help="gRPC beside REST binary, vitserve beside Triton's gRPC (PyTriton), c=1 and c=16")
    p.add_argument("--preset", action="append", help="repeatable (default: demo and vit_small)")
    _common(p)
    p.set_defaults(func=cmd_grpc)

    p = sub.add_parser("multi", help="the six variants of a preset served together vs a single-model server")
    p.add_argument("--preset", action="append", help="repeatable (default: vit_small; demo or vit_tiny for a check)")
    p.add_argument("--server-root", type=Path, default=None, metavar="DIR",
                   help="run the server from this checkout (default: this one)")
    p.add_argument("--baseline-root", type=Path, default=None, metavar="DIR",
                   help="also measure this checkout first, in the same run (before -> after)")
    p.add_argument("--server-env", action="append", default=[], metavar="VITSERVE_X=value",
                   help="extra service setting as an environment variable, for every server (repeatable)")
    p.add_argument("--all-at-once", action="store_true", help="also load every model at the same time")
    p.add_argument("--measure", type=int, default=None, metavar="N",
                   help="measure the first N models one by one (default: all six; 2 with --quick)")
    _common(p)
    p.set_defaults(func=cmd_multi)

    p = sub.add_parser("spinning", help="ORT spinning on vs off: server CPU per request at low load, c=16 throughput")
    p.add_argument("--preset", action="append", help="repeatable (default: demo and vit_small)")
    p.add_argument("--rate", type=float, default=20.0, help="the low Poisson request rate (req/s), default 20")
    _common(p)
    p.set_defaults(func=cmd_spinning)

    p = sub.add_parser("all", help="every comparison in turn (peers last), then BENCHMARKS.md")
    p.add_argument("--skip-peers", action="store_true", help="leave out comparison 3 (the most expensive)")
    _common(p)
    p.set_defaults(func=cmd_all)

    p = sub.add_parser("summary", help="write BENCHMARKS.md from the latest results")
    p.add_argument("--results", type=Path, default=None, help="results directory (default bench/results)")
    p.add_argument("--output", type=Path, default=None, help="default BENCHMARKS.md at the repository root")
    p.set_defaults(func=cmd_summary)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

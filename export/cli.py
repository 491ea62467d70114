"""`vitserve-export`: build a model repository from specs, or train the demo models into one.

    vitserve-export build --repository DIR SPEC [SPEC ...] [--checkpoint F] [--num-classes N]
                          [--opset 18] [--seed 0] [--name NAME] [--int8] [--fp16] [--opt key=value ...]
                          [--openvino] [--openvino-bf16]
                          [--max-batch-size N] [--max-queue-delay-us N] [--version N]
                          [--tensorrt [FP16|FP32|INT8]] [--trt-workspace-bytes N] [--trt-engine-cache PATH]
    vitserve-export train --repository DIR [--spec SPEC ...] [--epochs N] [--int8] [--no-fp16]
    vitserve-export finetune --data DIR --repository DIR [--checkpoint F] SPEC [SPEC ...]
                          [--epochs N] [--lr X] [--batch-size N] [--augment timm|affine|none]
                          [--val-fraction 0.2] [--device cuda] [--state-dir DIR] [--max-steps N]
    vitserve-export list   (presets, variants and options)

Bad user input (unknown preset/variant/option, a refused combination, a missing checkpoint)
exits with status 2 and one clear line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from export.data import AUGMENTATIONS
from export.finetune import NORM_STATISTICS, FitConfig


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vitserve-export", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    build = sub.add_parser("build", help="export specs into a Triton-compatible model repository",
                           epilog=_variants_text(), formatter_class=argparse.RawDescriptionHelpFormatter)
    build.add_argument("specs", nargs="+", metavar="SPEC", help="PRESET[+VARIANT...], e.g. vit_small+cb+gab")
    build.add_argument("--repository", "-r", type=Path, required=True, help="model repository directory")
    build.add_argument("--checkpoint", type=Path, help="timm-format weights (.pth/.bin/.safetensors)")
    build.add_argument("--num-classes", type=int, help="classifier size (default: the preset's)")
    build.add_argument("--opset", type=int, default=18)
    build.add_argument("--seed", type=int, default=0, help="random init seed (and parity inputs)")
    build.add_argument("--name", help="model name (single spec only; default PRESET-VARIANT-...)")
    build.add_argument("--int8", action="store_true", help="also write a dynamic int8 copy <name>-int8")
    build.add_argument("--fp16", action="store_true",
                       help="also write an fp16 copy <name>-fp16 (fp32 inputs/outputs kept)")
    build.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                       help="variant option, e.g. --opt reattn_layers=8,9,10,11 (repeatable)")
    build.add_argument("--labels", type=Path, help="text file with one label per line")
    _batching_args(build)
    _accelerator_args(build)
    build.add_argument("--quiet", "-q", action="store_true", help="no progress output")

    train = sub.add_parser("train", help="train the demo models on sklearn digits and export them")
    train.add_argument("--repository", "-r", type=Path, required=True)
    train.add_argument("--spec", action="append", dest="specs", metavar="SPEC",
                       help="train only these specs (repeatable; default: demo and each single variant)")
    train.add_argument("--epochs", type=int,
                       help="training epochs for every spec "
                            "(default: DEMO_CONFIG.epochs, longer for specs in SPEC_EPOCHS)")
    train.add_argument("--checkpoint", type=Path, help="start every spec from these weights instead of random")
    train.add_argument("--save-weights", type=Path, metavar="DIR", help="also keep DIR/<model>.pth (trained weights)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--int8", action="store_true", help="also write dynamic int8 copies")
    train.add_argument("--fp16", action=argparse.BooleanOptionalAction, default=True,
                       help="also write fp16 copies <name>-fp16 with their agreement on the held-out digits "
                       "(default on)")
    train.add_argument("--jobs", "-j", type=int, default=2, help="models trained at once (default 2)")
    train.add_argument("--threads", type=int, default=1, help="torch threads per training job (default 1)")
    train.add_argument("--min-accuracy", type=float, help="fail if a model's held-out accuracy is below this")
    _norm_statistics_arg(train)
    _batching_args(train)
    _accelerator_args(train)
    train.add_argument("--quiet", "-q", action="store_true")

    ft = sub.add_parser("finetune", help="fine-tune a checkpoint into each spec on an image folder, export, evaluate")
    ft.add_argument("specs", nargs="+", metavar="SPEC",
                    help="PRESET[+VARIANT...]; include the vanilla preset as the baseline")
    ft.add_argument("--data", type=Path, required=True,
                    help="image folder: DIR/<class>/* (a fraction held out) "
                         "or DIR/train/<class>/* and DIR/val/<class>/*")
    ft.add_argument("--repository", "-r", type=Path, required=True, help="model repository directory")
    ft.add_argument("--checkpoint", type=Path, help="timm-format weights to start from (default: random init)")
    ft.add_argument("--epochs", type=int, default=FitConfig.epochs)
    ft.add_argument("--batch-size", type=int, default=FitConfig.batch_size)
    ft.add_argument("--lr", type=float, default=FitConfig.lr, help="peak learning rate (AdamW)")
    ft.add_argument("--weight-decay", type=float, default=FitConfig.weight_decay)
    ft.add_argument("--warmup-epochs", type=float, default=FitConfig.warmup_epochs)
    ft.add_argument("--label-smoothing", type=float, default=FitConfig.label_smoothing)
    ft.add_argument("--augment", choices=AUGMENTATIONS, default=FitConfig.augmentation,
                    help="timm: timm's training transform; affine: small rotations/shifts (digits); none")
    ft.add_argument("--val-fraction", type=float, default=0.2, help="held-out fraction without a val/ folder")
    ft.add_argument("--seed", type=int, default=0)
    ft.add_argument("--device", help="cpu or cuda[:N] (default: cuda when available)")
    ft.add_argument("--no-amp", action="store_true", help="train in fp32 on the GPU too")
    ft.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    ft.add_argument("--max-steps", type=int, help="stop each spec after this many steps (smoke tests)")
    _norm_statistics_arg(ft)
    ft.add_argument("--state-dir", type=Path, help="resumable training state (default REPOSITORY/.finetune)")
    ft.add_argument("--jobs", "-j", type=int, default=1, help="specs trained at once (CPU; default 1)")
    ft.add_argument("--threads", type=int, help="torch threads per job (default: torch's)")
    ft.add_argument("--int8", action="store_true", help="also write dynamic int8 copies")
    ft.add_argument("--fp16", action="store_true",
                    help="also write fp16 copies <name>-fp16 (agreement measured on the held-out images)")
    ft.add_argument("--save-weights", type=Path, metavar="DIR", help="also keep DIR/<model>.pth (trained weights)")
    _batching_args(ft)
    _accelerator_args(ft)
    ft.add_argument("--quiet", "-q", action="store_true")

    sub.add_parser("list", help="show presets, variants and variant options")
    return parser


def _norm_statistics_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--norm-statistics", choices=NORM_STATISTICS, default=FitConfig.norm_statistics,
                        help="with --checkpoint, the converted BatchNorms (reattn, refiner): frozen keeps their "
                             "converted statistics (a learnt affine map); update re-calibrates them at the end of "
                             "the warm-up (same eval-mode function) and then trains with batch statistics; auto "
                             "(default): what the spec's variants ask for (refiner: update, reattn: frozen; "
                             "export/README.md has the measurement)")


def _batching_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-batch-size", type=int, help="Triton max_batch_size (default 64 small / 32 at 224 px)")
    parser.add_argument("--max-queue-delay-us", type=int, default=None, help="dynamic batching delay (us)")
    parser.add_argument("--max-queue-size", type=int, help="bounded queue size (default 8 x max batch)")
    parser.add_argument("--version", type=int, default=1, help="version directory to write (default 1)")


def _accelerator_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tensorrt", nargs="?", const="FP16", choices=["FP32", "FP16", "INT8"], type=str.upper,
                        metavar="PRECISION", help="write a Triton `tensorrt` GPU execution accelerator into "
                        "config.pbtxt with this precision_mode (default FP16) and a batch 1..max profile")
    parser.add_argument("--trt-workspace-bytes", type=int, metavar="N",
                        help="TensorRT max_workspace_size_bytes (with --tensorrt)")
    parser.add_argument("--trt-engine-cache", metavar="PATH",
                        help="enable TensorRT's engine cache at PATH (trt_engine_cache_path; with --tensorrt); "
                        "the service's VITSERVE_TRT_ENGINE_CACHE_DIR overrides it")
    parser.add_argument("--openvino", action="store_true",
                        help="also write an OpenVINO IR copy <name>-openvino served at f32 (Triton's openvino "
                        "backend; needs the openvino extra), its agreement with fp32 measured through OpenVINO")
    parser.add_argument("--openvino-bf16", action="store_true",
                        help="also write <name>-openvino-bf16: the same IR served at bf16 inference precision "
                        "(f32 where the serving CPU has no bf16)")


def _tensorrt(args: argparse.Namespace) -> dict[str, str] | None:
    if args.tensorrt is None:
        if args.trt_workspace_bytes is not None or args.trt_engine_cache is not None:
            raise ValueError("--trt-workspace-bytes and --trt-engine-cache need --tensorrt")
        return None
    params = {"precision_mode": args.tensorrt}
    if args.trt_workspace_bytes is not None:
        if args.trt_workspace_bytes < 1:
            raise ValueError(f"--trt-workspace-bytes must be >= 1, got {args.trt_workspace_bytes}")
        params["max_workspace_size_bytes"] = str(args.trt_workspace_bytes)
    if args.trt_engine_cache is not None:
        params["trt_engine_cache_enable"] = "1"
        params["trt_engine_cache_path"] = args.trt_engine_cache
    return params


def _batching(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"max_batch_size": args.max_batch_size, "max_queue_size": args.max_queue_size,
                           "version": args.version, "tensorrt": _tensorrt(args),
                           "openvino": args.openvino, "openvino_bf16": args.openvino_bf16}
    if args.max_queue_delay_us is not None:
        out["max_queue_delay_us"] = args.max_queue_delay_us
    return out


def _build(args: argparse.Namespace) -> int:
    from export import variants as registry
    from export.build import build_repository
    from export.spec import parse_option, parse_spec, split_spec

    options = dict(parse_option(text) for text in args.opt)
    owner = {key: registry.option_owner(key) for key in options}
    named = [set(split_spec(text)[1]) for text in args.specs]
    # each spec is parsed once, with the options of its variants (an option applies to every spec holding it)
    specs = [parse_spec(text, **{k: v for k, v in options.items() if owner[k] in names})
             for text, names in zip(args.specs, named, strict=True)]
    unused = sorted(k for k in options if not any(owner[k] in s.variants for s in specs))
    if unused:
        raise ValueError(f"option(s) {', '.join(unused)} belong to no variant in the given specs")
    if args.name and len(specs) > 1:
        raise ValueError("--name applies to a single spec; got several specs")
    if args.checkpoint is not None and not args.checkpoint.is_file():
        raise ValueError(f"checkpoint file not found: {args.checkpoint}")
    labels = None
    if args.labels is not None:
        if not args.labels.is_file():
            raise ValueError(f"labels file not found: {args.labels}")
        labels = [line.strip() for line in args.labels.read_text().splitlines() if line.strip()]
    dirs = build_repository(
        specs, args.repository, checkpoint=args.checkpoint, num_classes=args.num_classes, opset=args.opset,
        seed=args.seed, name=args.name, int8=args.int8, fp16=args.fp16, labels=labels, progress=not args.quiet,
        **_batching(args),
    )
    _summary(dirs, int8=args.int8, fp16=args.fp16,
             openvino=args.openvino, openvino_bf16=args.openvino_bf16)
    return 0


def _summary(dirs: Sequence[Path], *, int8: bool, fp16: bool = False, openvino: bool = False,
             openvino_bf16: bool = False) -> None:
    from service.manifest import Manifest

    suffixes = [s for s, wanted in (("-int8", int8), ("-fp16", fp16), ("-openvino", openvino),
                                    ("-openvino-bf16", openvino_bf16)) if wanted]
    for model_dir in dirs:
        names = [model_dir] + [model_dir.with_name(model_dir.name + suffix) for suffix in suffixes]
        for d in names:
            m = Manifest.load(d)
            q = m.quantization
            extra = f"parity {m.parity.max_abs_diff:.1e}" if m.parity else (
                f"{q.method} top-1 agreement {q.top1_agreement:.1%}"
                + (f", max |dlogit| {q.max_abs_logit_diff:.2g}" if q.max_abs_logit_diff is not None else "")
                if q else "")
            ev = m.evaluation
            acc_text = f"  held-out top-1 {ev.top1:.2%}" if ev is not None else ""
            print(f"{m.name:<28} {m.costs.flops / 1e9:8.3f} GFLOPs  {m.costs.parameters / 1e6:7.3f} M params  "
                  f"{extra}{acc_text}  -> {d}")


def _train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from export.spec import parse_spec
    from export.train import DEMO_CONFIG, DEMO_SPECS, train_demo_repository

    specs = [parse_spec(text) for text in args.specs or DEMO_SPECS]  # fail fast, and only once
    for spec in specs:
        if spec.preset not in ("demo", "test"):
            raise ValueError(f"train fits 32x32 digits presets ('demo', 'test'), not {spec.preset!r}")
    if args.checkpoint is not None and not args.checkpoint.is_file():
        raise ValueError(f"checkpoint file not found: {args.checkpoint}")
    config = replace(DEMO_CONFIG, seed=args.seed, norm_statistics=args.norm_statistics)
    spec_epochs: dict[str, int] | None = None  # the per-spec defaults (export.train.SPEC_EPOCHS)
    if args.epochs is not None:
        if args.epochs < 1:
            raise ValueError(f"--epochs must be >= 1, got {args.epochs}")
        config = replace(config, epochs=args.epochs)
        spec_epochs = {}  # --epochs applies to every spec
    args.repository.mkdir(parents=True, exist_ok=True)
    results = train_demo_repository(args.repository, specs, config=config, checkpoint=args.checkpoint,
                                    int8=args.int8, fp16=args.fp16, progress=not args.quiet,
                                    min_accuracy=args.min_accuracy, jobs=args.jobs, threads=args.threads,
                                    spec_epochs=spec_epochs, weights_dir=args.save_weights, **_batching(args))
    _summary([args.repository / name for name in results], int8=args.int8, fp16=args.fp16,
             openvino=args.openvino, openvino_bf16=args.openvino_bf16)
    return 0


def _finetune(args: argparse.Namespace) -> int:
    from export.finetune import finetune_repository

    config = FitConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing, augmentation=args.augment,
        seed=args.seed, device=args.device, amp=not args.no_amp, workers=args.workers, max_steps=args.max_steps,
        norm_statistics=args.norm_statistics,
    )
    if args.max_steps is not None and args.max_steps < 1:
        raise ValueError(f"--max-steps must be >= 1, got {args.max_steps}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    import torch

    results = finetune_repository(
        args.data, args.specs, args.repository, config, checkpoint=args.checkpoint, state_dir=args.state_dir,
        val_fraction=args.val_fraction, jobs=args.jobs, threads=args.threads or torch.get_num_threads(),
        progress=not args.quiet, int8=args.int8, fp16=args.fp16, weights_dir=args.save_weights, **_batching(args),
    )
    _summary([args.repository / name for name in results], int8=args.int8, fp16=args.fp16,
             openvino=args.openvino, openvino_bf16=args.openvino_bf16)
    print("accuracies are comparable only between models evaluated on the same dataset identity", file=sys.stderr)
    return 0


def _list() -> int:
    from export.presets import PRESETS

    print("presets:")
    for p in PRESETS.values():
        print(f"  {p.name:<10} {p.description}")
    print(_variants_text())
    return 0


def _variants_text() -> str:
    """Every variant of the table and its options (the `list` output and the `build --help` epilog)."""
    from export import variants as registry

    lines = ["variants and options (--opt key=value):"]
    for variant in registry.variants():
        lines.append(f"  {variant.name:<22} {variant.summary}")
        for opt in variant.options:
            allowed = f" (one of {', '.join(map(str, opt.choices))})" if opt.choices else ""
            lines.append(f"    {opt.key:<20} {opt.help}{allowed} [default {opt.default!r}]")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger().setLevel(logging.ERROR)  # onnxruntime.quantization warns through the root logger
    try:
        if args.command == "build":
            return _build(args)
        if args.command == "train":
            return _train(args)
        if args.command == "finetune":
            return _finetune(args)
        return _list()
    except ValueError as exc:  # bad user input: clear message, exit 2
        print(f"vitserve-export: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

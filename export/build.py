"""Build orchestration: spec -> model -> folded ONNX -> checks -> repository entry.

Why one place: every model in a repository goes through the same gate, in this order —
create (seeded init, a timm checkpoint, or a trained model), fold for inference, export, verify
folding on the graph, ONNX Runtime parity against the eval-mode PyTorch model (the build fails
above 1e-4), count FLOPs on the graph, write config/manifest/model — so nothing reaches the
service that was not checked. `build_repository` runs it for many specs with a progress bar.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from export.repository import DEFAULT_MAX_QUEUE_DELAY_US, default_labels, make_config, tool_versions, write_model
from service.manifest import Evaluation, ParityReport, Provenance, default_input_range

if TYPE_CHECKING:
    import numpy as np
    import torch
    from timm.models.vision_transformer import VisionTransformer

    from export.spec import ModelSpec

#: random inputs for a reduced-precision copy's agreement report when no real images are given
COPY_SAMPLES = 64
#: model-name suffix of each copy (reduced precision, or another runtime: OpenVINO at f32 / bf16 precision)
COPY_SUFFIX = {"dynamic-int8": "int8", "fp16": "fp16", "openvino-f32": "openvino", "openvino-bf16": "openvino-bf16"}
CopyMethod = Literal["dynamic-int8", "fp16", "openvino-f32", "openvino-bf16"]

#: called with a written model file (and `openvino_precision=` for an OpenVINO IR); returns its held-out
#: evaluation (export/evaluate.py)
Evaluator = Callable[..., Evaluation]


def _progress(total: int, desc: str, enabled: bool):  # -> tqdm
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, file=sys.stderr, leave=False,
                bar_format="{desc} [{n}/{total}]")


def _resolve_spec(spec: str | ModelSpec, options: Mapping[str, Any] | None) -> ModelSpec:
    from export.spec import parse_spec

    if isinstance(spec, str):
        return parse_spec(spec, **dict(options or {}))
    if options:
        return parse_spec(str(spec), **{**spec.options, **dict(options)})
    return spec


def build_model(
    spec: str | ModelSpec,
    repository: Path,
    *,
    checkpoint: Path | None = None,
    num_classes: int | None = None,
    opset: int = 18,
    seed: int = 0,
    name: str | None = None,
    int8: bool = False,
    fp16: bool = False,
    openvino: bool = False,
    openvino_bf16: bool = False,
    labels: Sequence[str] | None = None,
    max_batch_size: int | None = None,
    max_queue_delay_us: int = DEFAULT_MAX_QUEUE_DELAY_US,
    max_queue_size: int | None = None,
    version: int = 1,
    options: Mapping[str, Any] | None = None,
    model: torch.nn.Module | None = None,
    weights: str | None = None,
    evaluate: Evaluator | None = None,
    agreement_inputs: np.ndarray | None = None,
    agreement_inputs_description: str | None = None,
    int8_inputs: np.ndarray | None = None,
    tensorrt: Mapping[str, str] | None = None,
    parity_tolerance: float = 1e-4,
    progress: bool = True,
) -> Path:
    """Build one model into `repository`; return its directory `<repository>/<name>`.

    Args:
        spec: `PRESET[+VARIANT...]` text or a parsed ModelSpec; `options` adds variant options.
        checkpoint: timm-format weights loaded by parameter name; keys it lacks (the variant's own
            parameters) keep their function-preserving init and are listed in the manifest.
        num_classes: head size (default: the preset's).
        model: an already trained model for `spec` (export/train.py); `weights` then names its source.
        evaluate: called with the written ONNX file, returns the manifest's `evaluation` (fine-tuning
            passes held-out accuracy measured through ONNX Runtime and the service's preprocessing).
        int8: also write a dynamically quantised copy as its own model `<name>-int8`.
        fp16: also write an fp16 copy (fp32 inputs/outputs kept) as its own model `<name>-fp16`.
            Each copy's manifest holds its top-1 agreement and max |logit difference| to fp32 on
            `agreement_inputs` (described by `agreement_inputs_description`; default: 64 seeded
            random inputs, so described). `int8_inputs` is the older name of `agreement_inputs`.
        openvino: also write an OpenVINO IR copy `<name>-openvino` served at f32 inference precision, and
            openvino_bf16 one `<name>-openvino-bf16` served at bf16 (export/openvino.py), each with its agreement
            measured through OpenVINO at that precision.
        tensorrt: Triton onnxruntime-backend TensorRT parameters (e.g. {"precision_mode": "FP16"}) written
            into every config.pbtxt as a `tensorrt` GPU execution accelerator (export.repository.make_config).
        version: version directory to write; other versions already present stay listed.
    """
    from export.costs import count_parameters
    from export.flops import count_costs
    from export.fold import fold_for_inference
    from export.onnx_export import export_onnx, verify_folding
    from export.parity import check_parity, random_inputs
    from export.presets import get_preset
    from export.spec import resolved_options

    spec = _resolve_spec(spec, options)
    preset = get_preset(spec.preset)
    name = name or spec.name
    input_size = preset.data.input_size
    methods: tuple[tuple[CopyMethod, bool], ...] = (
        ("dynamic-int8", int8), ("fp16", fp16), ("openvino-f32", openvino), ("openvino-bf16", openvino_bf16))
    copies = [method for method, wanted in methods if wanted]
    steps = 6 + (1 if checkpoint else 0) + 2 * len(copies) + (1 if evaluate else 0)
    bar = _progress(steps, name, progress)

    def step(what: str) -> None:
        bar.set_description_str(f"{name}: {what}")

    try:
        new_parameters: list[str] = []
        if model is None:
            from export.models import create_model

            step("create")
            model = create_model(spec, num_classes=num_classes, seed=seed)
            weights = f"random(seed={seed})"
            bar.update()
            if checkpoint is not None:
                from export.checkpoint import load_checkpoint

                step("load checkpoint")
                new_parameters = list(load_checkpoint(model, Path(checkpoint)))
                weights = f"checkpoint:{Path(checkpoint).name}"
                bar.update()
        else:
            if checkpoint is not None:
                raise ValueError("pass either a trained model or a checkpoint, not both")
            weights = weights or "trained"
            bar.update()
        model.eval()
        classes = int(cast("VisionTransformer", model).num_classes)  # a timm ViT (VariantViT, or trained)
        if num_classes is not None and num_classes != classes:
            raise ValueError(f"num_classes={num_classes} but the model has {classes} classes")
        labels = list(labels) if labels is not None else default_labels(
            classes, digits=spec.preset == "demo" and classes == 10
        )
        if len(labels) != classes:
            raise ValueError(f"{len(labels)} labels given for {classes} classes")

        with tempfile.TemporaryDirectory() as tmp:
            onnx_file = Path(tmp) / "model.onnx"
            step("fold + export")
            folded = fold_for_inference(model)
            proto = export_onnx(folded, onnx_file, input_size=input_size, opset=opset)
            bar.update()

            step("verify folding")
            layout = getattr(model, "layout", None) or spec.layout  # the model's, computed when it was built
            verify_folding(proto, spec.variants, num_tokens=preset.num_tokens if input_size == tuple(
                preset.data.input_size) else None, layout=layout)
            bar.update()

            step("parity")
            parity: ParityReport = check_parity(model, proto, input_size=input_size, tolerance=parity_tolerance,
                                                seed=seed)
            bar.update()

            step("flops")
            parameters = count_parameters(model)  # trainable parameters before folding (PARAMETER_CONVENTION)
            costs = count_costs(proto, parameters=parameters)
            bar.update()

            evaluation: Evaluation | None = None
            if evaluate is not None:
                step("evaluate")
                evaluation = evaluate(onnx_file)
                bar.update()

            manifest = dict(
                name=name,
                spec=str(spec),
                preset=spec.preset,
                variants=list(spec.variants),
                variant_options=resolved_options(spec),
                architecture=preset.arch_kwargs(num_classes=classes),
                num_classes=classes,
                labels=labels,
                preprocess=preset.data.model_copy(
                    update={"input_range": default_input_range(preset.data.mean, preset.data.std)}
                ),
                opset=opset,
                costs=costs,
                parity=parity,
                evaluation=evaluation,
                provenance=Provenance(weights=weights, new_parameters=new_parameters, tool_versions=tool_versions()),
            )
            config_for = partial(make_config, input_size=input_size, num_classes=classes,
                                 max_batch_size=max_batch_size, max_queue_delay_us=max_queue_delay_us,
                                 max_queue_size=max_queue_size, tensorrt=tensorrt)
            step("write")
            model_dir = write_model(repository, onnx_file=onnx_file, manifest=manifest,
                                    config=config_for(name), version=version)
            bar.update()

            if copies:
                import onnx

                from export.quantize import agreement_report

                samples = agreement_inputs if agreement_inputs is not None else int8_inputs
                described = agreement_inputs_description
                if samples is None:
                    samples = random_inputs(input_size, COPY_SAMPLES, seed)
                    described = f"{COPY_SAMPLES} seeded random normal pixel_values (seed={seed}), not images"
                for method in copies:
                    suffix = COPY_SUFFIX[method]
                    step(suffix)
                    if method.startswith("openvino"):
                        _write_openvino_copy(method, onnx_file, Path(tmp) / suffix, repository, name=name,
                                             manifest=manifest, config_for=config_for, samples=samples,
                                             described=described, evaluate=evaluate, version=version)
                        bar.update(2)
                        continue
                    copy_name, copy_file = f"{name}-{suffix}", Path(tmp) / f"model-{suffix}.onnx"
                    _make_copy(method, onnx_file, copy_file)
                    bar.update()
                    report = agreement_report(onnx_file, copy_file, samples, source_model=name, method=method,
                                              inputs_description=described)
                    copy_costs = count_costs(onnx.load_model(str(copy_file)), parameters=parameters)
                    copy_eval = evaluate(copy_file) if evaluate is not None else None
                    write_model(
                        repository,
                        onnx_file=copy_file,
                        manifest={**manifest, "name": copy_name, "costs": copy_costs, "parity": None,
                                  "quantization": report, "evaluation": copy_eval},
                        config=config_for(copy_name),
                        version=version,
                    )
                    bar.update()
        return model_dir
    finally:
        bar.close()


def _write_openvino_copy(method: CopyMethod, onnx_file: Path, work: Path, repository: Path, *, name: str,
                         manifest: dict[str, Any], config_for: Callable[..., Any], samples: np.ndarray,
                         described: str | None, evaluate: Evaluator | None, version: int) -> None:
    """`<name>-openvino[-bf16]`: the IR of the checked fp32 graph, its config naming Triton's OpenVINO backend with
    the copy's precision, its agreement (and held-out evaluation) measured through OpenVINO at that precision."""
    from export.openvino import BACKEND, PARAMETERS, OpenVinoSession, convert_openvino, measured_precision
    from export.quantize import agreement_report

    copy_name = f"{name}-{COPY_SUFFIX[method]}"
    files = convert_openvino(onnx_file, work)
    precision, note = measured_precision(method)
    report = agreement_report(onnx_file, files["model.xml"], samples, source_model=name, method=method,
                              inputs_description="; ".join(filter(None, [described, note])) or None,
                              copy_session=OpenVinoSession(files["model.xml"], precision))
    copy_eval = evaluate(files["model.xml"], openvino_precision=precision) if evaluate is not None else None
    # the IR computes the fp32 graph's operations: its costs are the fp32 model's
    write_model(repository, model_files=files, version=version,
                manifest={**manifest, "name": copy_name, "parity": None, "quantization": report,
                          "evaluation": copy_eval},
                config=config_for(copy_name, backend=BACKEND, parameters=PARAMETERS[method]))


def _make_copy(method: str, fp32_file: Path, out: Path) -> None:
    if method == "fp16":
        from export.fp16 import convert_fp16

        convert_fp16(fp32_file, out)
    else:
        from export.quantize import quantize_int8

        quantize_int8(fp32_file, out)


def build_repository(
    specs: Iterable[str | ModelSpec],
    repository: Path,
    *,
    progress: bool = True,
    **kwargs: Any,
) -> list[Path]:
    """`build_model` for each spec (same keyword arguments, except `name`), with an overall progress bar."""
    from tqdm.auto import tqdm

    specs = list(specs)
    if "name" in kwargs and kwargs["name"] is not None and len(specs) > 1:
        raise ValueError("--name applies to a single spec; got several specs")
    repository.mkdir(parents=True, exist_ok=True)
    out = []
    for spec in tqdm(specs, desc="models", unit="model", disable=not progress, file=sys.stderr):
        out.append(build_model(spec, repository, progress=progress, **kwargs))
    return out


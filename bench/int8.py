"""Comparison 5 — the dynamically quantised int8 copy against its fp32 model.

Dynamic int8 (weights quantised offline, activations per batch at run time, MatMul/Gemm only)
trades accuracy for speed; whether it *is* faster depends on the CPU's integer dot-product
support. Measured side by side in one run: in-process ORT throughput of both copies (batch 1 and
the model's largest batch) → ratio; top-1 agreement with fp32; and, on the trained `demo` model,
accuracy on the held-out sklearn digits for both (the split export/train.py trained with).
`vit_small` uses seeded random weights (speed does not depend on them), so its agreement is
measured on random inputs and it has no accuracy.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from bench.inproc import ort_session, time_ort
from bench.machine import machine_info
from bench.models import BenchModel, ensure_models, model_file
from bench.report import command_line, md_table, plot_bars, write_result


def _trained_demo(cache: Path, trained: Path | None) -> Path:
    """A repository with the demo model trained on the digits and its int8 copy (trained once, cached).

    `trained` names an existing repository holding `demo` and `demo-int8` (e.g. the one the Docker
    image builds) to reuse instead of training; by default the committed built-in demo repository
    (models/demo), so the figures describe the models `make run` serves.
    """
    from bench.models import is_built

    committed = Path(__file__).resolve().parents[1] / "models" / "demo"
    if trained is None and is_built(committed, "demo") and is_built(committed, "demo-int8"):
        trained = committed
    if trained is not None:
        if not (is_built(trained, "demo") and is_built(trained, "demo-int8")):
            raise ValueError(f"{trained} does not hold both demo and demo-int8 (build it with int8 copies)")
        return trained
    repository = cache / "trained"

    if not (is_built(repository, "demo") and is_built(repository, "demo-int8")):
        from export.train import train_demo_repository

        print(f"[int8] training the demo model on the digits into {repository} ...", file=sys.stderr, flush=True)
        train_demo_repository(repository, ("demo",), int8=True, progress=True)
    return repository


def _predict(sess: Any, x: np.ndarray) -> np.ndarray:
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i : i + 64]})[0].argmax(axis=1) for i in range(0, len(x), 64)])


def _compare(repository: Path, name: str, x: np.ndarray, y: np.ndarray | None, batch: int,
             quick: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"model": name, "batch_sizes": [1, batch]}
    preds = {}
    for kind, model in (("fp32", name), ("int8", f"{name}-int8")):
        print(f"[int8] {model}: ORT at batch 1 and {batch}", file=sys.stderr, flush=True)
        sess = ort_session(model_file(repository, model))
        timings = time_ort(sess, [1, batch], min_repeats=3 if quick else 10, min_time_s=0.5 if quick else 2.0)
        preds[kind] = _predict(sess, x)
        out[kind] = {
            "timings": [t.model_dump() for t in timings],
            "images_per_s": {t.batch_size: t.images_per_s for t in timings},
            "model_bytes": model_file(repository, model).stat().st_size,
        }
        if y is not None:
            out[kind]["accuracy"] = float((preds[kind] == y).mean())
        del sess
    out["top1_agreement"] = float((preds["fp32"] == preds["int8"]).mean())
    out["agreement_samples"] = len(x)
    out["throughput_ratio"] = {b: out["int8"]["images_per_s"][b] / out["fp32"]["images_per_s"][b] for b in (1, batch)}
    return out


def run(presets: list[str], *, quick: bool, cache: Path, out_dir: Path | None = None,
        trained: Path | None = None) -> Path:
    machine = machine_info()
    results = []
    for preset in presets:
        if preset == "demo":
            from export.presets import get_preset
            from export.train import digits_split, pixel_values

            repository = _trained_demo(cache, trained)
            split = digits_split()
            x = pixel_values(split.test_images, get_preset("demo").data)
            res = _compare(repository, "demo", np.ascontiguousarray(x, dtype=np.float32), split.test_labels, 64, quick)
            from service.manifest import Manifest

            weights = Manifest.load(repository / "demo").provenance.weights
            res["inputs"] = f"held-out sklearn digits ({len(x)} images), weights {weights}"
        else:
            repository = cache / "repository"
            ensure_models([BenchModel(preset)], repository, int8=True)
            n = 32 if quick else 128
            x = np.random.default_rng(0).standard_normal((n, 3, 224, 224), dtype=np.float32)
            res = _compare(repository, preset, x, None, 32, quick)
            res["inputs"] = f"{n} seeded random inputs, seeded random weights"
        results.append(res)
    machine = machine.finish()
    rows = []
    for r in results:
        b = r["batch_sizes"][1]
        rows.append([
            r["model"], r["throughput_ratio"][1], r["throughput_ratio"][b], b, r["top1_agreement"],
            r["fp32"].get("accuracy"), r["int8"].get("accuracy"),
            r["fp32"]["images_per_s"][1], r["int8"]["images_per_s"][1],
            r["fp32"]["images_per_s"][b], r["int8"]["images_per_s"][b],
            r["fp32"]["model_bytes"] / 1e6, r["int8"]["model_bytes"] / 1e6, r["inputs"],
        ])
    md = [
        "# Comparison 5 — dynamic int8 vs fp32 (ONNX Runtime, in-process)",
        "",
        f"Command: `{command_line()}`  ",
        f"Machine: {machine.summary()}",
        "",
        md_table(
            ["model", "int8 ÷ fp32 throughput (b1)", "int8 ÷ fp32 throughput (max b)", "max b", "top-1 agreement",
             "fp32 accuracy", "int8 accuracy", "fp32 img/s b1", "int8 img/s b1", "fp32 img/s max b",
             "int8 img/s max b", "fp32 MB", "int8 MB", "inputs"],
            rows,
        ),
    ]
    directory = write_result(
        "int8",
        {"comparison": "int8", "quick": quick, "command": command_line(), "machine": machine, "results": results},
        "\n".join(md), out_dir,
    )
    bars = {}
    for r in results:
        b = r["batch_sizes"][1]
        bars[f"{r['model']} b1"] = r["throughput_ratio"][1]
        bars[f"{r['model']} b{b}"] = r["throughput_ratio"][b]
    plot_bars(bars, directory / "int8_speedup.png", "int8 ÷ fp32 throughput (this machine)", "ratio", target=1.0)
    return directory

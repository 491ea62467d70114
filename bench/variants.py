"""Comparison 1 — what each variant really costs: FLOPs and parameters next to measured latency.

For every variant of a preset (vanilla, cb, cbs, lavit in both forms, gab, reattn, refiner) the
counted FLOPs and parameters (from the manifest, counted on the exported graph), the ONNX Runtime
latency at batch 1/8/32 and the PyTorch eager latency, and — the point of the table — the
latency ratio to vanilla beside the FLOPs ratio to vanilla: a variant whose latency ratio is far
above its FLOPs ratio costs more than its arithmetic (memory traffic, small ops), one below it
hides work in ops the FLOPs convention counts generously.

The variants are timed round-robin (one run of each per round, medians) so that on a shared
machine a burst of background work spreads over all of them and their ratios stay meaningful.

Accuracy beside cost: with `--models DIR` (a repository of trained models, e.g. models/demo or the
output of `vitserve-export finetune`) each row also shows the manifest's held-out top-1/top-5 and
dataset identity, and a Pareto plot (accuracy vs ORT latency, one run) marks the variants no other
beats on both. Accuracies are comparable only between rows with the same dataset identity; without
`--models` the models are built with random weights and have no accuracy.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from bench.inproc import Timing, ort_session, time_interleaved
from bench.machine import machine_info, usable_cores
from bench.models import BenchModel, ensure_models, model_file, variant_models
from bench.report import command_line, md_table, pareto_front, plot_pareto, plot_scatter, write_result
from service.manifest import Manifest

BATCH_SIZES = (1, 8, 32)


def _per_image_ms(t: Timing) -> float:
    return t.median_s / t.batch_size * 1000


def _trained_models(preset: str, repository: Path) -> tuple[list[BenchModel], dict[str, Manifest]]:
    """The variants of `preset` present in a trained repository (those absent are skipped, and said)."""
    models = [m for m in variant_models(preset) if (repository / m.model_name / "vitserve.json").is_file()]
    missing = [m.model_name for m in variant_models(preset) if m not in models]
    if not models:
        raise ValueError(f"{repository} holds none of the {preset} variants")
    if missing:
        print(f"[variants] {repository} lacks {', '.join(missing)}: skipped", file=sys.stderr)
    return models, {m.model_name: Manifest.load(repository / m.model_name) for m in models}


#: the committed trained demo models: random-weight builds of the same architecture report their accuracy
#: (latency does not depend on the weights), so the default run shows accuracy beside cost for `demo`
TRAINED_DEMO = Path(__file__).resolve().parent.parent / "models" / "demo"


def _evaluated(man: Manifest, trained: Path | None) -> tuple[Manifest, str | None]:
    """The manifest whose evaluation a row reports, and where it came from when not the timed model's own."""
    if man.evaluation is not None or trained is None or not (trained / man.name / "vitserve.json").is_file():
        return man, None
    other = Manifest.load(trained / man.name)
    same = (other.spec, other.variant_options, other.architecture) == (man.spec, man.variant_options, man.architecture)
    return (other, str(trained)) if same and other.evaluation is not None else (man, None)


def obtained(man: Manifest) -> str | None:
    """How a trained model was obtained, from its manifest's recipe: trained from scratch, or converted from a
    checkpoint (function-preserving) and fine-tuned; None for a model without a recipe."""
    recipe = man.evaluation.recipe if man.evaluation else None
    if recipe is None:
        return None
    if recipe.start.startswith("checkpoint:"):
        released = (", BN statistics released after the warm-up"
                    if recipe.norm_statistics == "batch-after-warmup" else "")
        return f"converted + fine-tuned ({recipe.epochs} epochs{released})"
    return f"from scratch ({recipe.epochs} epochs)"


def _accuracy(man: Manifest, source: str | None = None) -> dict[str, Any]:
    ev = man.evaluation
    if ev is None:
        return {"top1": None, "top5": None, "dataset": None, "eval_images": None, "accuracy_from": None,
                "obtained": None}
    return {"top1": ev.top1, "top5": ev.top5, "dataset": ev.dataset.key if ev.dataset else "unknown",
            "eval_images": ev.num_images, "accuracy_from": source, "obtained": obtained(man)}


def _finetuned(man: Manifest, finetuned: Path | None) -> dict[str, Any]:
    """The same architecture's accuracy after `vitserve-export finetune` from the vanilla checkpoint (a second
    accuracy per row: converted + fine-tuned beside trained from scratch)."""
    other, source = _evaluated(man.model_copy(update={"evaluation": None}), finetuned)
    if source is None:
        return {"finetuned_top1": None, "finetuned_obtained": None, "finetuned_dataset": None}
    ev = other.evaluation
    return {"finetuned_top1": ev.top1 if ev else None, "finetuned_obtained": obtained(other),
            "finetuned_dataset": ev.dataset.key if ev and ev.dataset else None}


def measure_preset(preset: str, repository: Path, *, quick: bool, trained: bool = False,
                   accuracy_from: Path | None = None, finetuned: Path | None = None) -> dict[str, Any]:
    """Build (if needed) and time every variant of `preset`, interleaved so they share the background load.

    `trained`: `repository` holds trained models to read (never build into); their accuracies are reported.
    `accuracy_from`: a trained repository whose same-architecture models lend their accuracy to random builds.
    `finetuned`: a repository of the variants converted from the vanilla checkpoint and fine-tuned
    (`vitserve-export finetune --checkpoint`): each row also reports that accuracy.
    """
    import numpy as np

    if trained:
        models, manifests = _trained_models(preset, repository)
    else:
        models = variant_models(preset)
        manifests = ensure_models(models, repository)
    torch_batches = (1, 8) if quick else BATCH_SIZES
    min_time = 0.3 if quick else 2.0
    chw = tuple(manifests[models[0].model_name].preprocess.input_size)
    # spinning off: with several sessions alive, one's spinning pool threads would steal the next one's cores
    sessions = {m.model_name: ort_session(model_file(repository, m.model_name), spinning=False) for m in models}
    ort_t: dict[str, list[Timing]] = {m.model_name: [] for m in models}
    rng = np.random.default_rng(0)
    for b in BATCH_SIZES:
        print(f"[variants] {preset}: ORT at batch {b}, {len(models)} variants interleaved", file=sys.stderr, flush=True)
        x = rng.standard_normal((b, *chw), dtype=np.float32)
        fns = {name: (lambda s=s, x=x: s.run(None, {s.get_inputs()[0].name: x})) for name, s in sessions.items()}
        for name, t in time_interleaved(fns, b, min_repeats=3 if quick else 10, min_time_s=min_time).items():
            ort_t[name].append(t)
    del sessions
    torch_t = _time_eager(models, chw, torch_batches, quick=quick)
    rows: list[dict[str, Any]] = []
    for m in models:
        man = manifests[m.model_name]
        rows.append(
            {
                "model": m.model_name,
                "label": m.display,
                "spec": man.spec,
                "variant_options": man.variant_options,
                "flops": man.costs.flops,
                "parameters": man.costs.parameters,
                "ort": [t.model_dump() for t in ort_t[m.model_name]],
                "torch_eager": [t.model_dump() for t in torch_t[m.model_name]],
                **_accuracy(*_evaluated(man, accuracy_from)),
                **_finetuned(man, finetuned),
            }
        )
    base = rows[0]
    base_ort = {t["batch_size"]: t["median_s"] for t in base["ort"]}
    base_torch = {t["batch_size"]: t["median_s"] for t in base["torch_eager"]}
    for r in rows:
        r["flops_ratio"] = r["flops"] / base["flops"]
        r["params_ratio"] = r["parameters"] / base["parameters"]
        r["ort_latency_ratio"] = {t["batch_size"]: t["median_s"] / base_ort[t["batch_size"]] for t in r["ort"]}
        r["torch_latency_ratio"] = {t["batch_size"]: t["median_s"] / base_torch[t["batch_size"]]
                                    for t in r["torch_eager"]}
    return {"preset": preset, "batch_sizes": list(BATCH_SIZES), "rows": rows, "timing": "interleaved medians"}


def _time_eager(models: list[BenchModel], chw: tuple[int, ...], batches: tuple[int, ...], *,
                quick: bool) -> dict[str, list[Timing]]:
    """PyTorch eager (eval, unfolded, inference_mode, all cores), the variants interleaved per batch size."""
    import torch

    from export.models import create_model
    from export.spec import parse_spec

    torch.set_num_threads(usable_cores())
    nets = {m.model_name: create_model(parse_spec(m.spec, **m.options), seed=0).eval() for m in models}
    # (eager timing does not depend on the weights: seeded random ones)
    g = torch.Generator().manual_seed(0)
    out: dict[str, list[Timing]] = {name: [] for name in nets}
    with torch.inference_mode():
        for b in batches:
            print(f"[variants] PyTorch eager at batch {b}, {len(nets)} variants interleaved", file=sys.stderr,
                  flush=True)
            x = torch.randn((b, *chw), generator=g)
            fns = {name: (lambda net=net, x=x: net(x)) for name, net in nets.items()}
            timings = time_interleaved(fns, b, min_repeats=2 if quick else 5, min_time_s=0.3 if quick else 2.0,
                                       warmup=1)
            for name, t in timings.items():
                out[name].append(t)
    return out


def markdown(preset_result: dict[str, Any]) -> str:
    rows = preset_result["rows"]
    headers = [
        "variant", "GFLOPs/img", "params (M)", "FLOPs ÷ vanilla",
        "ORT b1 ms", "ORT b8 ms/img", "ORT b32 ms/img",
        "ORT b1 ÷ vanilla", "ORT b8 ÷ vanilla", "ORT b32 ÷ vanilla", "PyTorch eager b1 ms", "eager b8 ms/img",
        "eager b1 ÷ vanilla", "eager b8 ÷ vanilla", "eager ÷ ORT (b1)",
        "top-1 %", "top-5 %", "Δ top-1 vs vanilla (points)", "dataset", "obtained",
        "top-1 % converted + fine-tuned", "fine-tune recipe",
    ]
    base_top1 = rows[0].get("top1")
    table = []
    for r in rows:
        ort = {t["batch_size"]: t for t in r["ort"]}
        eager = {t["batch_size"]: t for t in r["torch_eager"]}
        table.append([
            r["label"],
            r["flops"] / 1e9,
            r["parameters"] / 1e6,
            r["flops_ratio"],
            ort[1]["median_s"] * 1000,
            ort[8]["median_s"] / 8 * 1000,
            ort[32]["median_s"] / 32 * 1000,
            r["ort_latency_ratio"][1],
            r["ort_latency_ratio"][8],
            r["ort_latency_ratio"][32],
            eager[1]["median_s"] * 1000,
            eager[8]["median_s"] / 8 * 1000,
            r["torch_latency_ratio"][1],
            r["torch_latency_ratio"][8],
            eager[1]["median_s"] / ort[1]["median_s"],
            _pct(r.get("top1")),
            _pct(r.get("top5")),
            (r["top1"] - base_top1) * 100 if r.get("top1") is not None and base_top1 is not None
            and r.get("dataset") == rows[0].get("dataset") else None,
            r.get("dataset"),
            r.get("obtained"),
            _pct(r.get("finetuned_top1")),
            r.get("finetuned_obtained"),
        ])
    return md_table(headers, table)


def _pct(value: float | None) -> float | None:
    return value * 100 if value is not None else None


def accuracy_points(preset_result: dict[str, Any]) -> list[tuple[str, float, float]]:
    """(label, ORT batch-1 ms, top-1 %) of the rows evaluated on the vanilla row's dataset identity."""
    rows = preset_result["rows"]
    dataset = rows[0].get("dataset")
    out = []
    for r in rows:
        if r.get("top1") is not None and r.get("dataset") == dataset:
            ort1 = next(t for t in r["ort"] if t["batch_size"] == 1)
            out.append((r["label"], ort1["median_s"] * 1000, r["top1"] * 100))
    return out


def run(presets: list[str], *, quick: bool, cache: Path, out_dir: Path | None = None,
        models: Path | None = None, finetuned: Path | None = None) -> Path:
    """Time every variant of each preset; `models` reads trained models (with accuracy) instead of building;
    `finetuned`: a repository of the variants converted from vanilla and fine-tuned, reported beside them."""
    machine = machine_info()
    repository = models if models is not None else cache / "repository"
    accuracy_from = TRAINED_DEMO if models is None and TRAINED_DEMO.is_dir() else None
    results = [measure_preset(p, repository, quick=quick, trained=models is not None, accuracy_from=accuracy_from,
                              finetuned=finetuned) for p in presets]
    machine = machine.finish()
    md = [
        "# Comparison 1 — variants: FLOPs vs measured latency",
        "",
        f"Command: `{command_line()}`  ",
        f"Machine: {machine.summary()}  ",
        "Latencies are medians on this machine, the variants timed round-robin; ratios are to the vanilla model of "
        "the same preset. ORT: one CPU session per variant, all cores, spinning off (several sessions are alive), "
        "full graph optimisation. PyTorch eager: eval mode, "
        "unfolded model, `torch.inference_mode`, all cores. FLOPs counted on the exported graph (2 x MACs "
        "plus element-wise ops).",
    ]
    md += ["", "Accuracy columns: held-out top-1/top-5 from each manifest's evaluation (measured through the exported "
           "graph and the service's preprocessing); they are comparable only between rows with the same dataset "
           "identity (the `dataset` column); Δ is left empty across identities. With `--models DIR` they are the "
           "timed models' own; otherwise random-weight builds report the accuracy of the same-architecture trained "
           f"model in {TRAINED_DEMO.parent.name}/{TRAINED_DEMO.name} when there is one (latency does not depend on the "
           "weights), else nothing."]
    for res in results:
        md += ["", f"## {res['preset']}", "", markdown(res)]
        pts = accuracy_points(res)
        if len(pts) > 1:
            md += ["", f"Pareto front (accuracy vs ORT batch-1 latency, this run): {', '.join(pareto_front(pts))}; "
                   f"plot `accuracy_vs_latency_{res['preset']}.png`."]
    directory = write_result(
        "variants",
        {"comparison": "variants", "quick": quick, "command": command_line(), "machine": machine, "presets": results},
        "\n".join(md),
        out_dir,
    )
    for res in results:
        pts = [(r["label"], r["flops_ratio"], r["ort_latency_ratio"][32]) for r in res["rows"]]
        plot_scatter(
            pts, directory / f"flops_vs_latency_{res['preset']}.png",
            f"{res['preset']}: FLOPs ratio vs ORT batch-32 latency ratio (to vanilla)",
            "FLOPs ÷ vanilla", "ORT latency ÷ vanilla (batch 32)", diagonal=True,
        )
        abs_pts = [(r["label"], r["flops"] / 1e9, _per_image_ms(Timing(**r["ort"][-1]))) for r in res["rows"]]
        plot_scatter(
            abs_pts, directory / f"gflops_vs_ms_{res['preset']}.png",
            f"{res['preset']}: GFLOPs per image vs ORT ms per image at batch 32 (this machine)",
            "GFLOPs / image", "ms / image (batch 32)",
        )
        acc_pts = accuracy_points(res)
        if acc_pts:
            dataset = res["rows"][0].get("dataset")
            plot_pareto(
                acc_pts, directory / f"accuracy_vs_latency_{res['preset']}.png",
                f"{res['preset']}: held-out top-1 vs ORT batch-1 latency\n(dataset {dataset}; one run, this machine)",
                "ms / image (ORT, batch 1)", "top-1 accuracy (%)",
            )
    return directory

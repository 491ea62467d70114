"""A sixth variant from one new file in export/variants/, and nothing else edited: the README's claim.

The test copies export/ into a temporary checkout, writes ONE module there (`export/variants/resgain.py`:
each block's output times a learnt per-channel gain, timm's `LayerScale`), and runs the real commands in
fresh interpreters that import that copy first (service/ and bench/ come from this checkout). The package
imports every module of export/variants/ and registers its `VariantDef` (export/variants/__init__.py), so
the new variant must appear in `vitserve-export list`, in the demo training list `vitserve-export train`
trains by default, in `vitserve-bench`'s model lists, and `demo+resgain` must build through
`vitserve-export build` (its ONNX Runtime parity check included) into a graph that computes the gain.
"""

from __future__ import annotations

import filecmp
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
NAME, SPEC, OPTIONS = "resgain", "demo+resgain", {"resgain_init": 0.5}
SUMMARY = "toy: each block's output times a learnt per-channel gain g (init resgain_init)"

#: the whole change: one new module of export/variants/
VARIANT_MODULE = '''"""Toy variant `resgain`: each block's output times a learnt per-channel gain (timm LayerScale)."""

from __future__ import annotations

from export.variants.base import BuildContext, LayerRule, Option, VariantDef


def _build(ctx: BuildContext):
    from timm.layers import LayerScale  # torch stays out of the table

    return LayerScale(ctx.dim, init_values=ctx.option("resgain_init"))


RESGAIN = VariantDef(
    name="resgain",
    summary="@SUMMARY@",
    options=(
        Option("resgain_init", float, 1.0, "initial gain g (default 1.0)"),
        Option("resgain_layers", tuple, None, "blocks with the gain (default: all)"),
    ),
    layers=LayerRule("resgain_layers", lambda ctx: list(range(ctx.depth))),
    hook="output",
    attr="gain",
    build=_build,
    no_weight_decay=("gamma",),
    cost=lambda b, c: [("elementwise.resgain", c.tokens * c.dim)] if b.has("resgain") else [],  # one Mul
    demo_epochs=3,
)
'''.replace("@SUMMARY@", SUMMARY)


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of export/ plus the one new file (the rest of the checkout is used in place)."""
    root = tmp_path_factory.mktemp("sixth")
    shutil.copytree(ROOT / "export", root / "export", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (root / "export" / "variants" / f"{NAME}.py").write_text(VARIANT_MODULE)
    return root


def _env(first: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(first) if first else "", str(ROOT),
                                                      env.get("PYTHONPATH", "")]))
    env.pop("VITSERVE_VARIANT_MODULES", None)  # the package alone finds the new module
    return env


def _run(cmd: list[str], root: Path | None, timeout: int = 300) -> str:
    """Run a command in a fresh interpreter that imports export/ from `root` (None: this checkout)."""
    done = subprocess.run(cmd, env=_env(root), cwd=root or ROOT, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _export_cli(*args: str) -> list[str]:
    exe = Path(sys.executable).with_name("vitserve-export")  # the installed entry point
    return [str(exe), *args] if exe.is_file() else [sys.executable, "-m", "export.cli", *args]


def _differences(a: filecmp.dircmp) -> list[str]:
    out = [f"{a.left}/{n}" for n in a.left_only + a.diff_files + a.funny_files]
    out += [f"{a.right}/{n}" for n in a.right_only]
    return out + [d for sub in a.subdirs.values() for d in _differences(sub)]


def test_the_change_is_one_new_file(checkout: Path) -> None:
    cmp = filecmp.dircmp(ROOT / "export", checkout / "export", ignore=["__pycache__"])
    assert _differences(cmp) == [str(checkout / "export" / "variants") + f"/{NAME}.py"]


def test_vitserve_export_list_shows_it_after_the_built_in_ones(checkout: Path) -> None:
    before = _run(_export_cli("list"), None).splitlines()
    after = _run(_export_cli("list"), checkout).splitlines()
    added = [line for line in after if line not in before]
    assert added[0].split() == [NAME, *SUMMARY.split()]
    assert [line.split()[0] for line in added[1:]] == ["resgain_init", "resgain_layers"]
    assert after[: len(before)] == before  # the rest of the listing is unchanged, the new entry comes last


_LISTS = """
import json
import export.train as train
from bench.models import variant_models
from bench.multi import side_by_side_models

seen = {}
def trainer(repository, specs, **kwargs):  # what `vitserve-export train` would train, without training
    seen["specs"] = [str(s) for s in specs]
    return {}
train.train_demo_repository = trainer
from export.cli import main
assert main(["train", "-r", REPO, "-q"]) == 0
print(json.dumps({
    "demo_specs": list(train.DEMO_SPECS), "spec_epochs": train.SPEC_EPOCHS, "cli_train": seen["specs"],
    "bench_multi": [m.model_name for m in side_by_side_models("demo")],
    "bench_variants": [m.spec for m in variant_models("demo")],
}))
"""


def test_demo_training_and_bench_lists_take_it_from_the_table(checkout: Path, tmp_path: Path) -> None:
    code = _LISTS.replace("REPO", repr(str(tmp_path / "repo")))
    before = json.loads(_run([sys.executable, "-c", code], None))
    after = json.loads(_run([sys.executable, "-c", code], checkout))
    assert after["demo_specs"] == [*before["demo_specs"], SPEC]
    assert after["cli_train"] == after["demo_specs"]  # `vitserve-export train` trains the table's demo list
    assert after["spec_epochs"] == {**before["spec_epochs"], SPEC: 3}
    assert after["bench_multi"] == [*before["bench_multi"], "demo-resgain"]  # vitserve-bench multi
    assert after["bench_variants"] == [*before["bench_variants"], SPEC]  # vitserve-bench variants


@pytest.fixture(scope="module")
def registered(checkout: Path) -> Iterator[object]:
    """The new module's variant in this process's table too (to rebuild the model in PyTorch), removed after."""
    from export import variants as registry

    spec = importlib.util.spec_from_file_location(f"sixth_variant_{NAME}", checkout / "export" / "variants" /
                                                  f"{NAME}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    registry.register(module.RESGAIN)
    try:
        yield module.RESGAIN
    finally:
        registry.unregister(NAME)


def test_demo_build_passes_parity_and_the_graph_computes_the_gain(checkout: Path, tmp_path: Path,
                                                                  registered: object) -> None:
    import numpy as np
    import onnxruntime as ort
    import torch

    from export.costs import formula_flops
    from export.models import create_model
    from export.spec import parse_spec
    from export.train import digits_split, pixel_values
    from service.manifest import INPUT_NAME, Manifest

    repo = tmp_path / "repo"
    _run(_export_cli("build", SPEC, "-r", str(repo), "-q", *[f"--opt={k}={v}" for k, v in OPTIONS.items()]),
         checkout)
    manifest = Manifest.load(repo / "demo-resgain")
    assert manifest.variants == [NAME] and manifest.spec == SPEC
    depth = manifest.architecture["depth"]
    assert manifest.variant_options == {"resgain_init": 0.5, "resgain_layers": list(range(depth))}
    assert manifest.parity is not None and manifest.parity.max_abs_diff <= manifest.parity.tolerance <= 1e-4
    spec = parse_spec(SPEC, **OPTIONS)
    assert abs(manifest.costs.flops - formula_flops(spec)) <= 0.02 * manifest.costs.flops

    x = pixel_values(digits_split().test_images[:16], manifest.preprocess)
    session = ort.InferenceSession(str(repo / "demo-resgain" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(None, {INPUT_NAME: x})[0]
    model = create_model(spec, seed=0).eval()  # the build's seed: the same weights
    gains = {k: v for k, v in model.state_dict().items() if k.endswith(".gain.gamma")}
    assert sorted(gains) == [f"blocks.{i}.gain.gamma" for i in range(depth)]
    assert all(bool((g == 0.5).all()) for g in gains.values())
    vanilla = create_model(parse_spec("demo"), seed=0).eval()  # the same weights without the gains
    shared = vanilla.state_dict()
    assert all(torch.equal(v, shared[k]) for k, v in model.state_dict().items() if k not in gains)
    with torch.no_grad():
        expected, plain = model(torch.from_numpy(x)).numpy(), vanilla(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-4)
    assert np.abs(logits - plain).max() > 1e-2  # the exported graph applies the gain

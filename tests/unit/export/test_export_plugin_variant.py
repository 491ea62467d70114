"""A sixth variant, defined in this file alone, driven through the real CLI: the one-file change.

`SOFTCAP` soft-caps the attention logits, c * tanh(logits / c) (a small change whose graph is easy to
recognise: the vanilla graph holds no Tanh). Nothing in export/ names it: `vitserve-export build` runs in
a subprocess that loads it through the documented plug-in hook, `VITSERVE_VARIANT_MODULES=module:NAME`
(export/variants/registry.py). The build must pass its parity and graph checks; the test then checks
that the op checks see its ops, that export/costs.py counts its cost as the graph does, and that the
written repository loads in ONNX Runtime and classifies as the PyTorch model does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from export.variants import BuildContext, CostContext, LayerRule, LayoutContext, Option, VariantDef

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
SPEC, OPTIONS = "demo+softcap", {"softcap_value": 3.0}


class SoftCap(nn.Module):
    """c * tanh(logits / c): logits keep their sign and order but never exceed c in size."""

    def __init__(self, cap: float) -> None:
        super().__init__()
        self.cap = float(cap)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return self.cap * torch.tanh(logits / self.cap)


def _computing_blocks(ctx: LayoutContext) -> list[int]:
    return list(ctx.computing)


def _build(ctx: BuildContext) -> nn.Module:
    return SoftCap(ctx.option("softcap_value"))


def _cost(block, c: CostContext) -> list[tuple[str, int]]:
    return [("elementwise.softcap", 3 * c.heads * c.tokens**2)] if block.has("softcap") else []  # Div, Tanh, Mul


SOFTCAP = VariantDef(
    name="softcap",
    summary="toy plug-in: attention logits soft-capped, c * tanh(logits / c)",
    options=(
        Option("softcap_value", float, 2.0, "the cap c on |logits| (default 2.0)",
               check=lambda v: v > 0, check_message="must be > 0"),
        Option("softcap_layers", tuple, None, "blocks with the cap (default: every attention-computing block)"),
    ),
    layers=LayerRule("softcap_layers", _computing_blocks, computing_only=True),
    hook="logits",
    attr="softcap",
    build=_build,
    required_ops=frozenset({"Tanh"}),
    cost=_cost,
)


@pytest.fixture(scope="module")
def registered() -> Iterator[VariantDef]:
    """The toy variant in this process's table for the module's in-process checks, removed afterwards."""
    from export import variants as registry

    registry.register(SOFTCAP)
    try:
        yield SOFTCAP
    finally:
        registry.unregister(SOFTCAP.name)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`vitserve-export build demo+softcap` in a fresh interpreter that knows the toy only through the hook."""
    repo = tmp_path_factory.mktemp("plugin") / "repository"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), str(ROOT), env.get("PYTHONPATH", "")]))
    env["VITSERVE_VARIANT_MODULES"] = f"{Path(__file__).stem}:SOFTCAP"
    cmd = [sys.executable, "-m", "export.cli", "build", SPEC, "-r", str(repo), "-q",
           *[f"--opt={k}={v}" for k, v in OPTIONS.items()]]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return repo


def test_cli_build_passes_parity_and_records_the_options(repository: Path) -> None:
    from service.manifest import Manifest

    manifest = Manifest.load(repository / "demo-softcap")
    assert manifest.variants == ["softcap"]
    assert manifest.spec == SPEC
    assert manifest.variant_options["softcap_value"] == 3.0
    assert manifest.variant_options["softcap_layers"] == list(range(manifest.architecture["depth"]))
    assert manifest.parity is not None and manifest.parity.max_abs_diff <= manifest.parity.tolerance <= 1e-4


def test_graph_checks_see_the_plugin_ops(repository: Path, registered: VariantDef) -> None:
    import onnx
    from onnx import TensorProto, helper

    from export.onnx_export import FoldingError, verify_folding
    from export.spec import parse_spec

    spec = parse_spec(SPEC, **OPTIONS)
    proto = onnx.load(str(repository / "demo-softcap" / "1" / "model.onnx"))
    counts = verify_folding(proto, spec.variants, layout=spec.layout)
    assert counts["Tanh"] == sum(b.has("softcap") for b in spec.layout) > 0
    # a graph without its op is refused in its name
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    bare = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]))
    with pytest.raises(FoldingError, match=r"softcap: expected op\(s\) \['Tanh'\]"):
        verify_folding(bare, ["softcap"])


def test_cost_model_counts_the_plugin_as_the_graph_does(repository: Path, registered: VariantDef) -> None:
    from export.costs import cost_breakdown, formula_flops
    from export.presets import get_preset
    from export.spec import parse_spec
    from service.manifest import Manifest

    spec = parse_spec(SPEC, **OPTIONS)
    preset = get_preset("demo")
    n, heads, depth = preset.num_tokens, int(preset.arch["num_heads"]), preset.depth
    term = 3 * heads * n * n * depth
    assert cost_breakdown(spec)["elementwise.softcap"] == term
    assert formula_flops(spec) - formula_flops(parse_spec("demo")) == term
    costs = Manifest.load(repository / "demo-softcap").costs
    assert costs.by_op["Tanh"] == heads * n * n * depth  # one third of the term, counted on the graph
    assert abs(costs.flops - formula_flops(spec)) <= 0.02 * costs.flops


def test_repository_loads_in_onnxruntime_and_classifies(repository: Path, registered: VariantDef) -> None:
    import numpy as np
    import onnxruntime as ort

    from export.models import create_model
    from export.spec import parse_spec
    from export.train import digits_split, pixel_values
    from service.manifest import INPUT_NAME, Manifest

    manifest = Manifest.load(repository / "demo-softcap")
    images = digits_split().test_images[:16]
    x = pixel_values(images, manifest.preprocess)
    session = ort.InferenceSession(str(repository / "demo-softcap" / "1" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    logits = session.run(None, {INPUT_NAME: x})[0]
    assert logits.shape == (16, manifest.num_classes) and np.isfinite(logits).all()
    labels = [manifest.labels[i] for i in logits.argmax(axis=1)]
    # the same seeded model in PyTorch (the build used seed 0) classifies the same images the same way
    model = create_model(parse_spec(SPEC, **OPTIONS), seed=0).eval()
    assert any(isinstance(m, SoftCap) for m in model.modules())
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-4)
    assert labels == [manifest.labels[i] for i in expected.argmax(axis=1)]


def test_cli_help_lists_the_plugin(registered: VariantDef, capsys: pytest.CaptureFixture[str]) -> None:
    from export.cli import main

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "softcap" in out and SOFTCAP.summary in out
    for opt in SOFTCAP.options:
        assert opt.key in out and opt.help in out

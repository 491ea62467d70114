"""Import rules of the layering (service/README.md, "Layers").

- service/ imports no torch, onnx, timm or export/ (the runtime image has none of them).
- The core (catalog, loader, pipeline, statistics) imports no wire format (service/api/*) and no runtime
  implementation (service/runtimes/onnxruntime/: session builder, options, provider and I/O binding helpers;
  onnxruntime itself): runtimes come from the runtimes table, wire shapes are made at the edge.
- export/ reaches service/ only through the repository contract modules and the one session builder.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
SERVICE = ROOT / "service"
CORE = ("service.catalog", "service.loader", "service.pipeline", "service.stats")
#: what the core must not pull in, directly or through anything it imports
CORE_FORBIDDEN = ("service.api", "service.runtimes.onnxruntime", "onnxruntime")
#: the modules of service/ that export/ may import: the repository contract (manifest, config.pbtxt and its
#: TensorRT accelerator block, the preprocessing a manifest names and the errors it raises) and the session builder
EXPORT_MAY_IMPORT = {"service.manifest", "service.model_config", "service.preprocess",
                     "service.runtimes.onnxruntime.providers", "service.errors", "service.runtimes.onnxruntime.session"}


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports (at any depth of its code, lazily or not)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def loaded_after(code: str) -> set[str]:
    probe = f"import sys\n{code}\nprint(','.join(sorted(sys.modules)))\n"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    return set(out.stdout.strip().split(","))


def under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_service_never_imports_torch_onnx_or_export() -> None:
    modules = sorted(
        "service." + ".".join(p.relative_to(SERVICE).with_suffix("").parts)
        for p in SERVICE.rglob("*.py")
        if p.name != "__init__.py"
    )
    code = f"import importlib\nfor m in {modules!r}: importlib.import_module(m)\nfrom service.app import create_app"
    bad = sorted(m for m in loaded_after(code) if under(m, ("torch", "onnx", "export", "timm")))
    assert bad == [], f"service pulled in: {bad}"


def test_the_core_imports_no_wire_format_and_no_runtime_implementation() -> None:
    loaded = loaded_after("\n".join(f"import {m}" for m in CORE))
    assert sorted(m for m in loaded if under(m, CORE_FORBIDDEN)) == []
    for module in CORE:  # not even lazily, inside a function
        path = ROOT / (module.replace(".", "/") + ".py")
        assert sorted(m for m in imported_modules(path) if under(m, CORE_FORBIDDEN)) == [], module


def test_the_runtimes_package_imports_no_runtime_until_the_table_is_asked() -> None:
    loaded = loaded_after("import service.runtimes")
    assert not {"onnxruntime", "service.runtimes.onnxruntime"} & loaded


def test_export_reaches_service_only_through_the_contract_and_the_session_builder() -> None:
    for path in sorted((ROOT / "export").rglob("*.py")):
        used = {m for m in imported_modules(path) if under(m, ("service",))}
        # `from service.manifest import X` also records service.manifest.X: judge the module part
        modules = {m for m in used if not any(m.startswith(a + ".") for a in EXPORT_MAY_IMPORT)}
        assert modules <= EXPORT_MAY_IMPORT, f"{path.relative_to(ROOT)} imports {sorted(modules - EXPORT_MAY_IMPORT)}"

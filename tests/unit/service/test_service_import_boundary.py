"""service/ must import without torch, onnx or export (the runtime image has none of them)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SERVICE = Path(__file__).resolve().parents[3] / "service"


def test_service_never_imports_torch_onnx_or_export() -> None:
    modules = sorted(
        "service." + ".".join(p.relative_to(SERVICE).with_suffix("").parts)
        for p in SERVICE.rglob("*.py")
        if p.name != "__init__.py"
    )
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "from service.app import create_app\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnx', 'export', 'timm'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"service pulled in: {out.stdout.strip()}"

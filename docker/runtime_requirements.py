#!/usr/bin/env python3
"""Print the service's runtime requirements from pyproject.toml, for one ONNX Runtime flavour.

Why: pyproject.toml is the single list of what the service needs, but its ONNX Runtime line is chosen
by platform markers (onnxruntime-gpu on Linux x86_64), while an image picks its flavour by target: the
CPU image wants the small `onnxruntime` wheel, the CUDA image `onnxruntime-gpu`. `make lock` compiles this
list into requirements/service-<flavour>.txt, the lock the images install, instead of retyping it.

    python3 docker/runtime_requirements.py --flavour cpu [--pyproject pyproject.toml]
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

FLAVOURS = {"cpu": "onnxruntime", "gpu": "onnxruntime-gpu"}
#: optional-dependency groups an image flavour adds: the GPU image exports nv_gpu_* through nvidia-ml-py; the CPU
#: image carries OpenVINO (service/runtimes/openvino), about 180 MB installed (a 59 MB wheel) for twice ONNX
#: Runtime's fp32 throughput on a CPU with native bf16 (BENCHMARKS.md): a CPU image serving at half the hardware's
#: speed is the worse trade. The GPU image computes on the GPU and leaves it out. Both serve gRPC (the `grpc` extra).
FLAVOUR_EXTRAS: dict[str, tuple[str, ...]] = {"cpu": ("openvino", "grpc"), "gpu": ("gpu", "grpc")}
_ORT_NAMES = frozenset(FLAVOURS.values())
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def runtime_requirements(pyproject: Path, flavour: str) -> list[str]:
    """The base dependencies (+ the flavour's extras) with markers dropped and one ONNX Runtime package."""
    if flavour not in FLAVOURS:
        raise ValueError(f"flavour must be one of {sorted(FLAVOURS)}, got {flavour!r}")
    data = tomllib.loads(pyproject.read_text())
    try:
        dependencies: list[str] = data["project"]["dependencies"]
    except KeyError as exc:
        raise ValueError(f"{pyproject} has no [project].dependencies") from exc
    wanted = FLAVOURS[flavour]
    out: list[str] = []
    ort_spec: str | None = None
    for line in dependencies:
        requirement = line.split(";", 1)[0].strip()
        match = _NAME.match(requirement)
        if match is None:
            raise ValueError(f"cannot parse requirement {line!r} in {pyproject}")
        name = match.group(1).lower().replace("_", "-")
        if name in _ORT_NAMES:
            spec = requirement[match.end():].strip()
            if ort_spec is None or name == wanted:
                ort_spec = spec
            continue
        if requirement not in out:
            out.append(requirement)
    if ort_spec is None:
        raise ValueError(f"{pyproject} lists no onnxruntime dependency")
    out.append(f"{wanted}{ort_spec}")
    extras = data["project"].get("optional-dependencies", {})
    for extra in FLAVOUR_EXTRAS[flavour]:
        out += [r.split(";", 1)[0].strip() for r in extras.get(extra, []) if r.split(";", 1)[0].strip() not in out]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flavour", choices=sorted(FLAVOURS), required=True)
    parser.add_argument("--pyproject", type=Path, default=Path(__file__).resolve().parent.parent / "pyproject.toml")
    args = parser.parse_args(argv)
    print("\n".join(runtime_requirements(args.pyproject, args.flavour)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

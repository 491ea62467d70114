"""The models a benchmark measures, built once with export/ into a cache repository and reused.

Benchmarks build their own models (seeded random weights: speed does not depend on the weights,
except for int8 agreement, which uses the trained demo) so that a run needs nothing prepared
beforehand and is reproducible from the command line alone. A model already present in the cache
with a manifest and an ONNX file is reused; delete the cache directory to rebuild.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.manifest import MANIFEST_FILENAME, MODEL_FILENAME, Manifest

DEFAULT_CACHE = Path(__file__).resolve().parent / "results" / "tmp"


@dataclass(frozen=True)
class BenchModel:
    """One model to build: spec text, variant options and the directory name it gets."""

    spec: str
    options: dict[str, Any] = field(default_factory=dict)
    name: str | None = None
    label: str | None = None

    @property
    def model_name(self) -> str:
        if self.name:
            return self.name
        return self.spec.replace("+", "-")

    @property
    def display(self) -> str:
        return self.label or self.model_name


def variant_models(preset: str) -> list[BenchModel]:
    """Vanilla and every single variant of `preset`, from the variant table (with each variant's extra
    forms, e.g. LaViT in both its forms, VARIANTS.md 2)."""
    from export import variants as registry  # the table alone: no torch

    out = [BenchModel(preset, label="vanilla")]
    for variant in registry.variants():
        out.append(BenchModel(f"{preset}+{variant.name}", label=variant.bench_label or variant.name))
        for options, suffix, label in variant.bench:
            out.append(BenchModel(f"{preset}+{variant.name}", dict(options), name=f"{preset}-{suffix}", label=label))
    return out


def model_file(repository: Path, name: str, version: int = 1) -> Path:
    return repository / name / str(version) / MODEL_FILENAME


def is_built(repository: Path, name: str) -> bool:
    return (repository / name / MANIFEST_FILENAME).is_file() and model_file(repository, name).is_file()


def ensure_models(
    models: list[BenchModel], repository: Path, *, int8: bool = False, max_batch_size: int | None = None, seed: int = 0
) -> dict[str, Manifest]:
    """Build the models missing from `repository` (with export/), return {model name: manifest}."""
    repository.mkdir(parents=True, exist_ok=True)
    out: dict[str, Manifest] = {}
    for m in models:
        need = not is_built(repository, m.model_name) or (int8 and not is_built(repository, f"{m.model_name}-int8"))
        if need:
            try:
                from export.build import build_model
            except ImportError as e:  # the bench runs from the full dev install; say what is missing
                raise RuntimeError(
                    f"building benchmark models needs the export extra (pip install -e '.[export]'): {e}") from e
            print(f"building {m.model_name} into {repository} ...", file=sys.stderr, flush=True)
            build_model(
                m.spec, repository, options=m.options or None, name=m.name, int8=int8, seed=seed,
                max_batch_size=max_batch_size, progress=True,
            )
        out[m.model_name] = Manifest.load(repository / m.model_name)
    return out

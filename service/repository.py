"""Reading a Triton-layout model repository written by export/ (see DESIGN.md).

    <root>/<model>/config.pbtxt, <root>/<model>/vitserve.json, <root>/<model>/<version>/model.onnx

The model file's name is the runtime's (model.xml + model.bin for OpenVINO, service/runtimes/table.py), or
config.pbtxt's `default_model_filename`, as Triton reads it.

Each model is read on its own (`read_model`): a `ModelEntry`, or a `ModelLoadError` with its reason,
so one broken model directory is reported while the others serve. Model names are
checked against a strict pattern before they touch the filesystem, so no name can reach a path
outside the repository.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from service.errors import exception_summary
from service.manifest import CONFIG_FILENAME, MANIFEST_FILENAME, Manifest, sha256_file
from service.model_config import ModelConfig, PbtxtError
from service.runtimes.table import runtime_model_filename

MODEL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,127}$")
VERSION_PATTERN = re.compile(r"^[1-9][0-9]{0,8}$")


class ModelLoadError(Exception):
    """A model directory that cannot be served; `reason` says why (shown in /v1/models)."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


def is_valid_model_name(name: str) -> bool:
    return bool(MODEL_NAME_PATTERN.fullmatch(name))


def parse_version(text: str) -> int:
    """A version path segment ('1', '12'); ValueError for anything else ('01', '-1', '../x')."""
    if not VERSION_PATTERN.fullmatch(text):
        raise ValueError(f"version must be a positive integer without leading zeros, got {text!r}")
    return int(text)


@dataclass(frozen=True)
class ModelEntry:
    """One model directory that parsed: its manifest, its Triton config and its version files."""

    name: str
    directory: Path
    manifest: Manifest
    config: ModelConfig
    versions: dict[int, Path] = field(default_factory=dict)

    def served_versions(self) -> list[int]:
        """The versions Triton's `version_policy { latest { num_versions: N } }` would serve, newest first."""
        return sorted(self.versions, reverse=True)[: self.config.latest_versions]

    def verify(self, version: int) -> Path:
        """Check the version's model file, and every other file the manifest lists in that version directory
        (OpenVINO's model.bin beside model.xml), against the manifest's sha256; return the model file's path."""
        path = self.versions.get(version)
        if path is None:
            raise ModelLoadError(self.name, f"version {version} not found")
        rel = f"{version}/{path.name}"
        if rel not in self.manifest.files:
            raise ModelLoadError(self.name, f"manifest has no sha256 for {rel}")
        for other, expected in self.manifest.files.items():
            if not other.startswith(f"{version}/"):
                continue
            file = self.directory / other
            if not file.is_file():
                raise ModelLoadError(self.name, f"missing {other} (listed in {MANIFEST_FILENAME})")
            actual = sha256_file(file)
            if actual != expected.lower():
                raise ModelLoadError(self.name,
                                     f"sha256 mismatch for {other}: manifest {expected[:12]}…, file {actual[:12]}…")
        return path


def model_directory(root: Path, name: str) -> Path:
    """The directory of `name` inside `root`; ValueError for names that are not plain model names."""
    if not is_valid_model_name(name):
        raise ValueError(f"invalid model name {name!r}: expected letters, digits, '_' or '-' (max 128)")
    path = (root / name).resolve()
    if path.parent != root.resolve():
        raise ValueError(f"invalid model name {name!r}")
    return path


def read_model(root: Path, name: str) -> ModelEntry:
    """Parse one model directory; every problem becomes a `ModelLoadError` with a readable reason."""
    try:
        directory = model_directory(root, name)
    except ValueError as exc:
        raise ModelLoadError(name, str(exc)) from None
    if not directory.is_dir():
        raise ModelLoadError(name, "no such model directory")
    try:
        manifest = Manifest.load(directory)
    except FileNotFoundError:
        raise ModelLoadError(name, f"missing {MANIFEST_FILENAME}") from None
    except (ValidationError, ValueError) as exc:
        reason = exception_summary(exc, first_line=False, with_type=False)
        raise ModelLoadError(name, f"invalid {MANIFEST_FILENAME}: {reason}") from None
    try:
        config = ModelConfig.load(directory / CONFIG_FILENAME)
    except FileNotFoundError:
        raise ModelLoadError(name, f"missing {CONFIG_FILENAME}") from None
    except (ValidationError, PbtxtError, ValueError) as exc:
        reason = exception_summary(exc, first_line=False, with_type=False)
        raise ModelLoadError(name, f"invalid {CONFIG_FILENAME}: {reason}") from None
    if config.name != name:
        raise ModelLoadError(name, f"{CONFIG_FILENAME} names the model {config.name!r}, directory is {name!r}")
    if manifest.name != name:
        raise ModelLoadError(name, f"{MANIFEST_FILENAME} names the model {manifest.name!r}, directory is {name!r}")
    if config.max_batch_size < 1:
        raise ModelLoadError(name, f"{CONFIG_FILENAME} max_batch_size must be >= 1 for a batching model")
    model_file = config.default_model_filename or runtime_model_filename(config.runtime_key)
    if not model_file or "/" in model_file or model_file.startswith("."):
        raise ModelLoadError(name, f"invalid {CONFIG_FILENAME} default_model_filename {model_file!r}")
    versions: dict[int, Path] = {}
    for child in directory.iterdir():
        if not child.is_dir():
            continue
        try:
            version = parse_version(child.name)
        except ValueError:
            continue
        if (child / model_file).is_file():
            versions[version] = child / model_file
    if not versions:
        raise ModelLoadError(name, f"no version directory with {model_file}")
    return ModelEntry(name=name, directory=directory, manifest=manifest, config=config, versions=versions)


def list_model_names(root: Path) -> list[str]:
    """Directories of `root` that look like models (valid names holding a config or manifest)."""
    names = []
    for child in sorted(root.iterdir()):
        if child.is_dir() and is_valid_model_name(child.name):
            if (child / CONFIG_FILENAME).exists() or (child / MANIFEST_FILENAME).exists():
                names.append(child.name)
    return names

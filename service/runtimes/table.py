"""The one table from a model's config.pbtxt `backend` (else `platform`) to the runtime that serves it.

Adding a runtime (TensorRT, OpenVINO, a remote one) is one package and one `BUILTIN_RUNTIMES` entry (or a
module that calls `register_runtime` for its keys); nothing in the store or pipeline changes. Built-in entries
name their backend and options as "module:attribute" and are imported on first use, so the core never imports a
runtime implementation (or its library). A runtime's options (a `RuntimeOptions` class) are its own: its
VITSERVE_* variables and serve flags, read by its table entry's `options`; the CLI reads each once at start.

Plugin hook: `Settings.runtime_modules` (`VITSERVE_RUNTIME_MODULES=pkg.mod,other.mod`) names modules the
model store imports at start, before any model loads; importing one registers its runtimes. That works for
a server run as a subprocess too (the setting travels in its environment).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from service.manifest import MODEL_FILENAME
from service.runtimes.base import InferenceRuntime, RuntimeOptions, RuntimeSpec
from service.settings import Settings

RuntimeFactory = Callable[[RuntimeSpec], InferenceRuntime]
OptionsFactory = Callable[[Settings, int], object]


def no_options(settings: Settings, concurrent_sessions: int) -> object:
    """Options of a runtime that needs none."""
    return None


@dataclass(frozen=True)
class RuntimeBackend:
    """A table entry. `options(settings, concurrent_sessions)` runs once per store start and its result
    reaches every `create(spec)` as `spec.options`; the core never looks inside it."""

    create: RuntimeFactory
    options: OptionsFactory = no_options
    model_filename: str = MODEL_FILENAME  # the file in each version directory (config.pbtxt may name another)


@dataclass(frozen=True)
class BuiltinRuntime:
    """A runtime shipped with vitserve, named by "module:attribute" paths so it is imported on first use."""

    keys: tuple[str, ...]  # the config.pbtxt `backend`/`platform` values it serves
    backend: str  # its RuntimeBackend
    options: str | None = None  # its RuntimeOptions class (its VITSERVE_* variables and serve flags)
    #: the model file in each version directory, as the Triton backend of the same name expects it (a model's
    #: config.pbtxt `default_model_filename` names another); known without importing the runtime
    model_filename: str = MODEL_FILENAME


BUILTIN_RUNTIMES = (
    BuiltinRuntime(("onnxruntime", "onnxruntime_onnx"), "service.runtimes.onnxruntime.runtime:BACKEND",
                   "service.runtimes.onnxruntime.options:OnnxRuntimeOptions"),
    # Triton's OpenVINO backend: an IR (model.xml + model.bin); openvino is an optional extra, imported on load
    BuiltinRuntime(("openvino",), "service.runtimes.openvino.runtime:BACKEND",
                   "service.runtimes.openvino.options:OpenVinoOptions", model_filename="model.xml"),
    # no CPU: stands in for a GPU (benchmarks)
    BuiltinRuntime(("vitserve_offcpu_standin",), "service.runtimes.standin:BACKEND"),
)

_TABLE: dict[str, RuntimeBackend | str] = {key: rt.backend for rt in BUILTIN_RUNTIMES for key in rt.keys}


def _attribute(path: str) -> Any:
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


def runtime_options_types() -> list[type[RuntimeOptions]]:
    """The built-in runtimes' options classes (importing them imports no runtime library)."""
    types = [_attribute(rt.options) for rt in BUILTIN_RUNTIMES if rt.options is not None]
    assert all(isinstance(t, type) and issubclass(t, RuntimeOptions) for t in types)
    return types


def check_runtime_options(overrides: Mapping[str, object]) -> None:
    """Read every built-in runtime's options once (environment and `overrides`), so that a bad value fails at
    start instead of at the first model load; an override that no runtime knows fails too."""
    types = runtime_options_types()
    unknown = sorted(set(overrides) - {name for t in types for name in t.model_fields})
    if unknown:
        raise ValueError(f"runtime options {unknown} belong to no runtime")
    for options_type in types:
        options_type.from_overrides(overrides)


def runtime_model_filename(key: str) -> str:
    """The model file a runtime reads from each version directory, by table key, without importing the runtime
    (model.onnx for a key no runtime serves: loading then fails naming the known keys)."""
    entry = _TABLE.get(key)
    if isinstance(entry, RuntimeBackend):
        return entry.model_filename
    return next((rt.model_filename for rt in BUILTIN_RUNTIMES if key in rt.keys), MODEL_FILENAME)


def register_runtime(
    keys: str | Iterable[str], create: RuntimeFactory, options: OptionsFactory = no_options,
    model_filename: str = MODEL_FILENAME,
) -> RuntimeBackend:
    """Serve every model whose config.pbtxt `backend` (or `platform`) is one of `keys` with `create`."""
    backend = RuntimeBackend(create, options, model_filename)
    for key in [keys] if isinstance(keys, str) else keys:
        _TABLE[key] = backend
    return backend


def runtime_backend(key: str) -> RuntimeBackend:
    """The table entry for `key`; a LookupError naming the known keys otherwise."""
    entry = _TABLE.get(key)
    if entry is None:
        raise LookupError(f"no runtime for backend/platform {key!r} (known: {', '.join(sorted(_TABLE))}; "
                          "register one with service.runtimes.register_runtime)")
    if isinstance(entry, str):
        entry = _attribute(entry)
        assert isinstance(entry, RuntimeBackend)
        _TABLE[key] = entry
    return entry


def import_runtime_modules(modules: Iterable[str]) -> None:
    """The plugin hook: import each named module (it registers its runtimes when imported)."""
    for name in modules:
        importlib.import_module(name)


@contextmanager
def runtime_override(create: RuntimeFactory, keys: Iterable[str] = ("onnxruntime", "onnxruntime_onnx"),
                     options: OptionsFactory = no_options, model_filename: str | None = None
                     ) -> Iterator[RuntimeBackend]:
    """Serve `keys` with `create` inside the block (tests run their fakes on a real repository this way)."""
    keys = list(keys)
    saved = {k: _TABLE.get(k) for k in keys}
    filename = model_filename or (runtime_model_filename(keys[0]) if keys else MODEL_FILENAME)
    try:
        yield register_runtime(keys, create, options, filename)
    finally:
        for k, v in saved.items():
            if v is None:
                _TABLE.pop(k, None)
            else:
                _TABLE[k] = v

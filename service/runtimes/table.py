"""The one table from a model's config.pbtxt `backend` (else `platform`) to the runtime that serves it.

Adding a runtime (TensorRT, OpenVINO, a remote one) is one module that calls `register_runtime` for its
keys; nothing in the store or pipeline changes. Built-in entries name their module as "module:attribute"
and are imported on first use, so the core never imports a runtime implementation (or its library).

Plugin hook: `Settings.runtime_modules` (`VITSERVE_RUNTIME_MODULES=pkg.mod,other.mod`) names modules the
model store imports at start, before any model loads; importing one registers its runtimes. That works for
a server run as a subprocess too (the setting travels in its environment).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from service.runtimes.base import InferenceRuntime, RuntimeSpec
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


_TABLE: dict[str, RuntimeBackend | str] = {
    "onnxruntime": "service.runtimes.onnxruntime:BACKEND",
    "onnxruntime_onnx": "service.runtimes.onnxruntime:BACKEND",
    "vitserve_offcpu_standin": "service.runtimes.standin:BACKEND",  # no CPU: stands in for a GPU (benchmarks)
}


def register_runtime(
    keys: str | Iterable[str], create: RuntimeFactory, options: OptionsFactory = no_options
) -> RuntimeBackend:
    """Serve every model whose config.pbtxt `backend` (or `platform`) is one of `keys` with `create`."""
    backend = RuntimeBackend(create, options)
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
        module, _, attribute = entry.partition(":")
        entry = getattr(importlib.import_module(module), attribute)
        assert isinstance(entry, RuntimeBackend)
        _TABLE[key] = entry
    return entry


def import_runtime_modules(modules: Iterable[str]) -> None:
    """The plugin hook: import each named module (it registers its runtimes when imported)."""
    for name in modules:
        importlib.import_module(name)


@contextmanager
def runtime_override(create: RuntimeFactory, keys: Iterable[str] = ("onnxruntime", "onnxruntime_onnx"),
                     options: OptionsFactory = no_options) -> Iterator[RuntimeBackend]:
    """Serve `keys` with `create` inside the block (tests run their fakes on a real repository this way)."""
    saved = {k: _TABLE.get(k) for k in keys}
    try:
        yield register_runtime(keys, create, options)
    finally:
        for k, v in saved.items():
            if v is None:
                _TABLE.pop(k, None)
            else:
                _TABLE[k] = v

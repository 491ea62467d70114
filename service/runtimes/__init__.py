"""Runtimes: the interface (`base.py`), the table from config.pbtxt's `backend`/`platform` to a factory
(`table.py`), and one module per runtime (`onnxruntime.py`). Importing this package imports no runtime
implementation; the table imports one on first use."""

from service.runtimes.base import InferenceRuntime, RuntimeSpec, warmup_sizes
from service.runtimes.table import (
    RuntimeBackend,
    RuntimeFactory,
    import_runtime_modules,
    register_runtime,
    runtime_backend,
    runtime_override,
)

__all__ = [
    "InferenceRuntime", "RuntimeBackend", "RuntimeFactory", "RuntimeSpec", "import_runtime_modules",
    "register_runtime", "runtime_backend", "runtime_override", "warmup_sizes",
]

"""Runtimes: the interface (`base.py`: the runtime, its spec, its own options), the table from config.pbtxt's
`backend`/`platform` to a factory (`table.py`), and one package or module per runtime (`onnxruntime/`,
`standin.py`). Importing this package imports no runtime implementation; the table imports one on first use."""

from service.runtimes.base import InferenceRuntime, RuntimeOptions, RuntimeSpec, warmup_sizes
from service.runtimes.table import (
    RuntimeBackend,
    RuntimeFactory,
    check_runtime_options,
    import_runtime_modules,
    register_runtime,
    runtime_backend,
    runtime_options_types,
    runtime_override,
)

__all__ = [
    "InferenceRuntime", "RuntimeBackend", "RuntimeFactory", "RuntimeOptions", "RuntimeSpec", "check_runtime_options",
    "import_runtime_modules", "register_runtime", "runtime_backend", "runtime_options_types", "runtime_override",
    "warmup_sizes",
]

"""Running a GPU session (CUDA or TensorRT provider) through ONNX Runtime's I/O binding with pinned host buffers.

Why: `session.run` with numpy arrays copies the batch from pageable memory (the driver stages it
through a bounce buffer) and allocates the output anew on every call. Bound buffers are allocated
once per batch size, and pinned host memory lets the host-to-device and device-to-host copies run
as direct DMA. The batch is copied into the bound input buffer; the output lands in a bound host
buffer and is copied out (the buffer is reused by the next batch).

Pinned memory comes from the CUDA provider's `OrtEpDevice` (`memory_info(HOST_ACCESSIBLE)`), as
ONNX Runtime documents for `OrtValue.ortvalue_from_shape_and_type`; where this onnxruntime build
exposes none, ordinary host buffers are bound (still allocated once). The CPU provider never uses
this path (`session.run` is already zero-copy there).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

log = logging.getLogger("vitserve.runtime")

Allocator = Callable[[tuple[int, ...]], Any]  # shape -> float32 OrtValue


def host_allocator(provider_name: str) -> tuple[Allocator, str]:
    """An allocator of float32 host buffers for `provider_name`'s sessions: pinned where the provider
    exposes host-accessible memory, else ordinary host memory; and which one it is."""
    import onnxruntime as ort

    memory_info = None
    try:
        for device in ort.get_ep_devices():
            if device.ep_name == provider_name:
                memory_info = device.memory_info(ort.OrtDeviceMemoryType.HOST_ACCESSIBLE)
                if memory_info is not None:
                    break
    except (AttributeError, RuntimeError):  # an onnxruntime without the EP-device API
        memory_info = None
    if memory_info is not None:
        return (lambda shape: ort.OrtValue.ortvalue_from_shape_and_type(shape, np.float32, memory_info=memory_info),
                "pinned")
    return (lambda shape: ort.OrtValue.ortvalue_from_shape_and_type(shape, np.float32, "cpu"), "pageable")


class BoundRunner:
    """`run(batch)` through I/O binding: per thread and batch size, one binding with its input and output
    host buffers (execution instances run batches on several threads at once)."""

    def __init__(self, session: Any, input_name: str, output_name: str, num_classes: int,
                 allocate: Allocator) -> None:
        self._session = session
        self._input_name = input_name
        self._output_name = output_name
        self._num_classes = num_classes
        self._allocate = allocate
        self._local = threading.local()

    def _binding(self, shape: tuple[int, ...]) -> tuple[Any, Any, Any]:
        cache: dict[tuple[int, ...], tuple[Any, Any, Any]] = self._local.__dict__.setdefault("bindings", {})
        if shape not in cache:
            binding = self._session.io_binding()
            inp = self._allocate(shape)
            out = self._allocate((shape[0], self._num_classes))
            binding.bind_ortvalue_input(self._input_name, inp)
            binding.bind_ortvalue_output(self._output_name, out)
            cache[shape] = (binding, inp, out)
        return cache[shape]

    def run(self, batch: np.ndarray) -> np.ndarray:
        binding, inp, out = self._binding(tuple(batch.shape))
        inp.update_inplace(np.ascontiguousarray(batch, dtype=np.float32))
        self._session.run_with_iobinding(binding)
        return np.array(out.numpy(), copy=True)  # the buffer is reused by this thread's next batch

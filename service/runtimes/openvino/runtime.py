"""The OpenVINO runtime: one compiled model per model version (an IR, `model.xml` + `model.bin`, as Triton's
OpenVINO backend serves it), compiled for the CPU with the precision, streams and threads that config.py
resolves from the runtime's options and the model's config.pbtxt `parameters`.

Why a runtime of its own beside ONNX Runtime: on a CPU with native bf16 (AMX, avx512_bf16) OpenVINO runs a ViT
in bf16, well above ONNX Runtime's fp32 throughput (the figures: BENCHMARKS.md); the same repository then serves
in Triton's OpenVINO backend. The batcher calls `run` from as many threads as the model has execution instances:
each call takes an infer request from a pool (one per concurrent batch), so the requests' buffers are never
shared.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

import numpy as np

from service.compute_gate import cpu_cores
from service.runtimes.base import InferenceRuntime, RuntimeSpec
from service.runtimes.openvino.config import compile_plan
from service.runtimes.openvino.options import OpenVinoOptions
from service.runtimes.table import RuntimeBackend
from service.settings import Settings

log = logging.getLogger("vitserve.runtime")

DEVICE = "CPU"
INSTALL_HINT = "pip install 'vitserve[openvino]'"
_ANNOUNCED: set[str] = set()
_LOCK = threading.Lock()
_IMPORT_LOCK = threading.Lock()


def import_openvino() -> Any:
    """The openvino module, or a RuntimeError that says it is not installed and how to install it (the model
    fails to load with that reason; the others serve)."""
    # one import at a time: models load in parallel threads, and a thread that imports while another's import
    # is failing can be handed the half-made module (no `Core`) instead of the ImportError
    with _IMPORT_LOCK:
        try:
            import openvino
        except ImportError as exc:
            raise RuntimeError(f"OpenVINO is not installed ({INSTALL_HINT}): {exc}") from None
    return openvino


def cpu_has_bf16(core: Any) -> bool:
    """Whether OpenVINO computes bf16 natively on this CPU (its OPTIMIZATION_CAPABILITIES name BF16)."""
    return "BF16" in list(core.get_property(DEVICE, "OPTIMIZATION_CAPABILITIES"))


def _announce_once(message: str) -> None:
    with _LOCK:
        if message in _ANNOUNCED:
            return
        _ANNOUNCED.add(message)
    log.warning("%s", message)


class OpenVinoRuntime(InferenceRuntime):
    """An OpenVINO `CompiledModel` on the CPU for one model version."""

    def __init__(self, spec: RuntimeSpec) -> None:
        super().__init__(spec)
        ov = import_openvino()
        if spec.model_path is None:
            raise ValueError(f"{spec.name}: OpenVinoRuntime needs a model_path")
        options = spec.options if isinstance(spec.options, OpenVinoOptions) else OpenVinoOptions()
        core = ov.Core()
        plan = compile_plan(options, spec.config.parameters if spec.config else {}, instances=spec.instances,
                            cores=cpu_cores(), cpu_has_bf16=cpu_has_bf16(core))
        if plan.note:  # one line per process: every bf16 model on this CPU says the same
            _announce_once(f"OpenVINO: {plan.note}")
        model = core.read_model(str(spec.model_path))  # model.bin beside model.xml
        self._check_signature(model)
        self._compiled = core.compile_model(model, DEVICE, plan.properties)
        got = str(self._compiled.get_property("INFERENCE_PRECISION_HINT"))
        self.precision = "bf16" if "bf" in got.lower() else "f32"
        self.provider = f"OpenVINO {DEVICE} {self.precision}"
        self.provider_note = plan.note
        self.cpu_threads = plan.threads_per_batch
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        m = spec.manifest
        self._input, self._output = m.input_name, m.output_name
        log.info("%s v%d: OpenVINO %s on %s, inference precision %s, %s streams, %s threads", spec.name,
                 spec.version, ov.__version__, DEVICE, self.precision, plan.properties["NUM_STREAMS"],
                 plan.properties["INFERENCE_NUM_THREADS"])

    def _check_signature(self, model: Any) -> None:
        m = self.spec.manifest
        inputs = {name: port for port in model.inputs for name in port.get_names()}
        outputs = {name for port in model.outputs for name in port.get_names()}
        if m.input_name not in inputs:
            raise ValueError(f"model has no input {m.input_name!r} (inputs: {sorted(inputs)})")
        if m.output_name not in outputs:
            raise ValueError(f"model has no output {m.output_name!r} (outputs: {sorted(outputs)})")
        shape = inputs[m.input_name].get_partial_shape()
        if shape.rank.is_dynamic or shape.rank.get_length() != 4:
            raise ValueError(f"input {m.input_name!r} has shape {shape}, expected rank 4 (batch, 3, H, W)")
        for dim, want in zip(list(shape)[1:], m.preprocess.input_size, strict=True):
            if dim.is_static and dim.get_length() != want:
                raise ValueError(f"input shape {shape} does not match manifest input_size {m.preprocess.input_size}")

    def run(self, pixel_values: np.ndarray) -> np.ndarray:
        try:
            request = self._requests.get_nowait()
        except queue.Empty:  # one more batch at once than before: a request of its own
            request = self._compiled.create_infer_request()
        try:
            request.infer({self._input: pixel_values}, share_inputs=True)
            # the request reuses its output buffer on the next run: the batcher gets its own copy
            return np.array(request.get_tensor(self._output).data, dtype=np.float32, copy=True)
        finally:
            self._requests.put(request)

    def close(self) -> None:
        self._requests = queue.SimpleQueue()
        self._compiled = None


def settings_options(settings: Settings, concurrent_sessions: int) -> OpenVinoOptions:
    """The table entry's `options`: this runtime's VITSERVE_OPENVINO_* variables with the overrides in
    `settings.runtime_options` (the serve flags)."""
    return OpenVinoOptions.from_overrides(settings.runtime_options)


BACKEND = RuntimeBackend(create=OpenVinoRuntime, options=settings_options, model_filename="model.xml")
"""The runtimes table's entry (service/runtimes/table.py names it for `backend: "openvino"`)."""

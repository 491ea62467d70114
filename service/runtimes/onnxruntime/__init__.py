"""The ONNX Runtime runtime: its own options (`options.py`), the one session builder (`session.py`), the
runtime the table serves (`runtime.py`), provider choice and TensorRT options from config.pbtxt
(`providers.py`) and CUDA I/O binding (`io_binding.py`).

The session builder is re-exported here: export's parity check and FLOPs probe and the in-process benchmarks
build their sessions with it."""

from service.runtimes.onnxruntime.session import SessionConfig, build_session, session_config

__all__ = ["SessionConfig", "build_session", "session_config"]

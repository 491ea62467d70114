"""The OpenVINO runtime: its own options (`options.py`), what a model's config.pbtxt asks of it and the CPU's
bf16 support (`config.py`), and the runtime the table serves for `backend: "openvino"` (`runtime.py`).

OpenVINO is an optional extra (`pip install 'vitserve[openvino]'`): only `runtime.py` imports it, when a model
that needs it loads, so a server without it serves every other model."""

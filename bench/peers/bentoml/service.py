"""BentoML peer: the benchmark ONNX model as a BentoML 1.4 service with adaptive batching (see ../README.md).

Configured through environment variables (BentoML imports this module itself):
PEER_MODEL, PEER_MAX_BATCH_SIZE, PEER_THREADS. Started by server.py with `bentoml serve`.
"""

from __future__ import annotations

import base64
import os

import bentoml
import numpy as np

MAX_BATCH = int(os.environ.get("PEER_MAX_BATCH_SIZE", "32"))


@bentoml.service(workers=1, traffic={"timeout": 120, "max_concurrency": 1024})
class OnnxClassifier:
    def __init__(self) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(os.environ["PEER_THREADS"])
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.sess = ort.InferenceSession(os.environ["PEER_MODEL"], sess_options=opts,
                                         providers=["CPUExecutionProvider"])
        inp = self.sess.get_inputs()[0]
        self.input_name = inp.name
        self.chw = tuple(int(d) for d in inp.shape[1:])

    # max_latency_ms is BentoML's latency budget (requests over it are shed with 503), not a batching
    # delay: set far above any measured latency so the comparison sheds nothing.
    @bentoml.api(route="/predict", batchable=True, batch_dim=0, max_batch_size=MAX_BATCH, max_latency_ms=60_000)
    def predict(self, items: list[str]) -> list[dict]:
        x = np.stack([np.frombuffer(base64.b64decode(s), dtype="<f4").reshape(self.chw) for s in items])
        logits = self.sess.run(None, {self.input_name: x})[0]
        out = []
        for row in logits:
            top = np.argsort(-row)[:5]
            out.append({"top5": top.tolist(), "scores": row[top].tolist()})
        return out

"""LitServe peer: the benchmark ONNX model behind LitServe's batching loop (see ../README.md)."""

from __future__ import annotations

import argparse
import base64

import litserve as ls
import numpy as np
import onnxruntime as ort


def make_session(path: str, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])


class OnnxClassifier(ls.LitAPI):
    def __init__(self, model: str, threads: int, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.model_path = model
        self.threads = threads

    def setup(self, device: str) -> None:
        self.sess = make_session(self.model_path, self.threads)
        inp = self.sess.get_inputs()[0]
        self.input_name = inp.name
        self.chw = tuple(int(d) for d in inp.shape[1:])

    def decode_request(self, request: dict) -> np.ndarray:
        return np.frombuffer(base64.b64decode(request["items"][0]), dtype="<f4").reshape(self.chw)

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        return np.stack(inputs)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.sess.run(None, {self.input_name: x})[0]

    def unbatch(self, output: np.ndarray) -> list[np.ndarray]:
        return list(output)

    def encode_response(self, logits: np.ndarray) -> dict:
        top = np.argsort(-logits)[:5]
        return {"top5": top.tolist(), "scores": logits[top].tolist()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--max-batch-size", type=int, required=True)
    p.add_argument("--max-delay-ms", type=float, required=True)
    p.add_argument("--threads", type=int, required=True)
    a = p.parse_args()
    api = OnnxClassifier(a.model, a.threads, max_batch_size=a.max_batch_size, batch_timeout=a.max_delay_ms / 1000.0)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=120)
    server.run(host="127.0.0.1", port=a.port, num_api_servers=1, generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main()

"""Ray Serve peer: the benchmark ONNX model in one replica with @serve.batch (see ../README.md)."""

from __future__ import annotations

import argparse
import base64
import signal
import threading

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--max-batch-size", type=int, required=True)
    p.add_argument("--max-delay-ms", type=float, required=True)
    p.add_argument("--threads", type=int, required=True)
    a = p.parse_args()

    import ray
    from ray import serve
    from starlette.requests import Request

    @serve.deployment(num_replicas=1, max_ongoing_requests=1024, ray_actor_options={"num_cpus": 0})
    class OnnxClassifier:
        def __init__(self) -> None:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = a.threads
            opts.inter_op_num_threads = 1
            opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            self.sess = ort.InferenceSession(a.model, sess_options=opts, providers=["CPUExecutionProvider"])
            inp = self.sess.get_inputs()[0]
            self.input_name = inp.name
            self.chw = tuple(int(d) for d in inp.shape[1:])

        @serve.batch(max_batch_size=a.max_batch_size, batch_wait_timeout_s=a.max_delay_ms / 1000.0)
        async def infer(self, xs: list[np.ndarray]) -> list[dict]:
            logits = self.sess.run(None, {self.input_name: np.stack(xs)})[0]
            out = []
            for row in logits:
                top = np.argsort(-row)[:5]
                out.append({"top5": top.tolist(), "scores": row[top].tolist()})
            return out

        async def __call__(self, request: Request) -> dict:
            body = await request.json()
            x = np.frombuffer(base64.b64decode(body["items"][0]), dtype="<f4").reshape(self.chw)
            return await self.infer(x)

    ray.init(num_cpus=a.threads, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": a.port})
    serve.run(OnnxClassifier.bind(), route_prefix="/predict", blocking=False)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()

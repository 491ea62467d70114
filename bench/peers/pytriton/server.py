"""Triton peer through PyTriton: the benchmark ONNX model behind Triton's dynamic batcher (see ../README.md).

PyTriton runs the real tritonserver binary and calls this Python function for each batch; clients
speak Triton's own HTTP/v2 protocol (binary tensor extension), exactly as they do to vitserve.
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--name", default="model")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--grpc-port", type=int, required=True)
    p.add_argument("--metrics-port", type=int, required=True)
    p.add_argument("--max-batch-size", type=int, required=True)
    p.add_argument("--max-delay-ms", type=float, required=True)
    p.add_argument("--threads", type=int, required=True)
    a = p.parse_args()

    import onnxruntime as ort
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = a.threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(a.model, sess_options=opts, providers=["CPUExecutionProvider"])
    inp, out = sess.get_inputs()[0], sess.get_outputs()[0]
    chw = tuple(int(d) for d in inp.shape[1:])
    classes = int(out.shape[1])

    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        return {out.name: sess.run(None, {inp.name: inputs[inp.name]})[0]}

    config = TritonConfig(
        http_address="127.0.0.1", http_port=a.port, grpc_address="127.0.0.1", grpc_port=a.port and a.grpc_port,
        metrics_port=a.metrics_port, allow_metrics=True, log_verbose=0,
    )
    with Triton(config=config) as triton:
        triton.bind(
            model_name=a.name,
            infer_func=infer,
            inputs=[Tensor(name=inp.name, dtype=np.float32, shape=chw)],
            outputs=[Tensor(name=out.name, dtype=np.float32, shape=(classes,))],
            config=ModelConfig(
                max_batch_size=a.max_batch_size,
                batcher=DynamicBatcher(max_queue_delay_microseconds=int(a.max_delay_ms * 1000)),
            ),
            strict=False,
        )
        triton.serve()


if __name__ == "__main__":
    main()

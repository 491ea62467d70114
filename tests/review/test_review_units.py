"""Review unit tests: the v2 codec's cached header plan and the direct path's request view."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from service.api.v2_codec import TensorSpec, parse_infer_request

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "service"))

SPECS = {"pixel_values": TensorSpec("FP32", (3, 4, 4))}


def _body(images: int, rid: str | None = None) -> tuple[bytes, int]:
    pixels = np.ones((images, 3, 4, 4), np.float32)
    header = {"inputs": [{"name": "pixel_values", "shape": list(pixels.shape), "datatype": "FP32",
                          "parameters": {"binary_data_size": pixels.nbytes}}],
              "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]}
    if rid is not None:
        header["id"] = rid
    raw = json.dumps(header).encode()
    return raw + pixels.tobytes(), len(raw)


def test_a_parsed_request_is_not_shared_with_later_requests() -> None:
    """The request `parse_infer_request` returns for one body must not be the object a later request gets:
    a caller that changes its own request (an output parameter, a shape) must not change another request's.
    (service/api/v2_codec.py `_binary_plan` caches the InferenceRequest itself and returns it to every request
    with the same header; it is a mutable pydantic model with mutable lists and dicts.)"""
    body, length = _body(2)
    first, _ = parse_infer_request(body, length, expected_inputs=SPECS, max_batch_size=8)
    assert first.outputs is not None and first.outputs[0].parameters is not None
    first.outputs[0].parameters["binary_data"] = False  # this request's business only
    first.inputs[0].shape.append(1)
    second, arrays = parse_infer_request(body, length, expected_inputs=SPECS, max_batch_size=8)
    assert second.outputs is not None and second.outputs[0].parameters == {"binary_data": True}
    assert arrays["pixel_values"].shape == (2, 3, 4, 4)


def test_direct_request_stream_read_twice_raises_as_starlette_does(tmp_path) -> None:
    """Starlette's `Request.stream()` a second time raises RuntimeError("Stream consumed"); `DirectRequest`
    (service/api/direct.py) waits for body bytes that never come (for ever: here, the 2 s timeout)."""
    from test_service_http_protocol import _protocol

    from service.api.direct import DirectRequest

    outcome: list[str] = []

    async def main() -> None:
        protocol, _, _ = _protocol(tmp_path, direct_routes=True)

        class Twice:
            def serve(self, connection, cycle):  # noqa: ANN001, ANN202 - DirectServer
                async def run() -> None:
                    request = DirectRequest(connection, cycle, None)
                    async for _ in request.stream():
                        pass
                    try:
                        async with asyncio.timeout(2):
                            async for _ in request.stream():
                                pass
                        outcome.append("second stream: empty")
                    except RuntimeError as exc:
                        outcome.append(f"RuntimeError: {exc}")
                    except TimeoutError:
                        outcome.append("second stream: hung")
                return run()

        protocol.direct = Twice()
        protocol.data_received(b"POST /m/a/infer HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nhi")
        for _ in range(300):
            if outcome:
                break
            await asyncio.sleep(0.01)

    asyncio.run(main())
    assert outcome == ["RuntimeError: Stream consumed"]


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))

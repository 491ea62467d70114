"""The v2 codec's cached header plan (shared, read-only) and the direct path's request view."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from service.api.v2_codec import parse_infer_request
from service.api.v2_wire import TensorSpec

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


def test_the_shared_parsed_request_is_left_unchanged_by_the_v2_endpoint(tiny_repository: Path) -> None:
    """`parse_infer_request` hands every request with the same binary header the one request it checked and
    cached (service/api/v2_codec.py `_binary_plan`); its contract is that callers read it and never change it.
    Held here through the real endpoint: after requests with an id, a timeout, output parameters (binary or
    JSON answers, classification), the cached request still equals a fresh validation of its header."""
    import httpx

    from service.api.v2_wire import InferenceRequest
    from service.app import create_app
    from service.settings import Settings

    pixels = np.zeros((2, 3, 32, 32), np.float32)
    headers = [
        {"inputs": [{"name": "pixel_values", "shape": [2, 3, 32, 32], "datatype": "FP32",
                     "parameters": {"binary_data_size": pixels.nbytes}}]} | extra
        for extra in (
            {},
            {"id": "r1", "parameters": {"timeout": 5000000}},
            {"outputs": [{"name": "logits", "parameters": {"binary_data": True}}]},
            {"outputs": [{"name": "logits", "parameters": {"binary_data": False}}]},
            {"outputs": [{"name": "logits", "parameters": {"classification": 3}}]},
        )
    ]
    raws = [json.dumps(h).encode() for h in headers]
    limits: list[int] = []

    async def main() -> None:
        app = create_app(Settings(repository=tiny_repository, warmup="one"), wait_for_models=True)
        async with app.router.lifespan_context(app):
            pipeline = app.state.pipeline
            limits.append(pipeline.max_images(pipeline.store.version("tiny_a")))
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://v") as client:
                for _ in range(2):  # the second round is served from the cache
                    for raw in raws:
                        r = await client.post("/v2/models/tiny_a/infer", content=raw + pixels.tobytes(), headers={
                            "Inference-Header-Content-Length": str(len(raw)),
                            "content-type": "application/octet-stream"})
                        assert r.status_code == 200, r.text

    asyncio.run(main())
    specs = {"pixel_values": TensorSpec("FP32", (3, 32, 32))}
    for raw in raws:
        body = raw + pixels.tobytes()
        cached, _ = parse_infer_request(body, len(raw), expected_inputs=specs, max_batch_size=limits[0])
        again, _ = parse_infer_request(body, len(raw), expected_inputs=specs, max_batch_size=limits[0])
        assert again is cached  # shared, as documented
        assert cached == InferenceRequest.model_validate_json(raw), raw


def test_direct_request_stream_read_twice_raises_as_starlette_does(tmp_path) -> None:
    """Starlette's `Request.stream()` a second time raises RuntimeError("Stream consumed"); `DirectRequest`
    (service/api/fast_path.py) waits for body bytes that never come (for ever: here, the 2 s timeout)."""
    from test_service_http_protocol import _protocol

    from service.api.fast_path import DirectRequest

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


def _collect(tmp_path, pieces: list[bytes], *, lose_connection: bool = False
             ) -> tuple[list[object], list[bool], object]:
    """Feed `pieces` to a protocol whose direct server reads the body whole; what the reader got, whether reading
    was paused while the body was collected, and the protocol."""
    from test_service_http_protocol import _protocol

    from service.api.fast_path import DirectRequest

    got: list[object] = []
    paused_while_collecting: list[bool] = []
    made: list[object] = []

    async def main() -> None:
        protocol, _, _ = _protocol(tmp_path, direct_routes=True)
        made.append(protocol)

        class Whole:
            def serve(self, connection, cycle):  # noqa: ANN001, ANN202 - DirectServer
                async def run() -> None:
                    try:
                        got.append(await DirectRequest(connection, cycle, None).body())
                    except Exception as exc:  # noqa: BLE001 - the outcome is the test's
                        got.append(type(exc).__name__)
                return run()

        protocol.direct = Whole()
        for piece in pieces:
            protocol.data_received(piece)
            await asyncio.sleep(0)
            if protocol._collecting is not None:
                paused_while_collecting.append(protocol.flow.read_paused)
        if lose_connection:
            protocol.connection_lost(None)
        for _ in range(100):
            if got:
                break
            await asyncio.sleep(0.01)

    asyncio.run(main())
    return got, paused_while_collecting, made[0]


def test_a_declared_body_is_collected_whole_without_pausing(tmp_path) -> None:
    """A body of declared length above uvicorn's 64 KiB high-water mark, arriving in pieces: once its reader
    waits for it, reading never pauses, and the reader gets all of it as bytes, once."""
    body = bytes(range(256)) * 800  # 200 KiB
    data = b"POST /m/a/infer HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % len(body) + body
    step = 96 * 1024  # the first piece passes the mark before the reader runs
    got, paused, protocol = _collect(tmp_path, [data[i:i + step] for i in range(0, len(data), step)])
    assert got == [body] and type(got[0]) is bytes
    assert paused and not any(paused)
    assert protocol._collecting is None and protocol._pieces == []


def test_a_body_cut_by_a_lost_connection_is_dropped_and_the_reader_told(tmp_path) -> None:
    body = bytes(200 * 1024)
    data = b"POST /m/a/infer HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % (2 * len(body)) + body
    got, _, protocol = _collect(tmp_path, [data[:100_000], data[100_000:]], lose_connection=True)
    assert got == ["ClientDisconnect"]
    assert protocol._collecting is None and protocol._pieces == []
    assert protocol.body_budget.in_flight == 0


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))

"""The hot routes served without ASGI (service/api/fast_path.py: `DirectRoutes`) answer exactly as the ASGI path does.

One battery of raw HTTP/1.1 exchanges (good and bad requests, 100-continue, chunked bodies, pipelining,
HTTP/1.0) goes to two real servers on the same repository, one with `VITSERVE_DIRECT_ROUTES=true`, one
with it off: every answer must match in status line, headers (but the Date value, and the length of a body
that carries timings) and body (JSON compared without its timings), and both servers must count the same
requests in their metrics. Then the direct path's own duties: a client that disconnects while its request
waits is cancelled (499), and a request accepted before SIGTERM is answered.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from service_server import ServerProcess, start_server
from test_http_server import metric_samples
from tiny_repository import TinyModel, build_tiny_repository

MAX_BODY = 64 * 1024
MODELS = [TinyModel("tiny_a"), TinyModel("tiny_b", num_classes=5, versions=[1, 2]),
          # one image per batch, each taking a while: a second request waits in the queue
          TinyModel("tiny_slow", size=64, hidden=4096, max_batch_size=1)]


@dataclass
class Answer:
    status_line: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes


def direct_and_asgi_servers(tmp_path_factory: pytest.TempPathFactory, models: list[TinyModel],
                            env: dict[str, str]) -> Iterator[dict[str, ServerProcess]]:
    """Two servers on one tiny repository, direct routes on ("direct") and off ("asgi"); each must exit 0."""
    repo = build_tiny_repository(tmp_path_factory.mktemp("direct_repo"), models)
    started: dict[str, ServerProcess] = {}
    try:
        for name, flag in (("direct", "true"), ("asgi", "false")):
            started[name] = start_server(repo, tmp_path_factory.mktemp(name), "--warmup", "one", "--intra-op-threads",
                                         "1", env={**env, "VITSERVE_DIRECT_ROUTES": flag})
        yield started
    finally:
        for srv in started.values():
            code = srv.stop()
            assert code == 0, srv.log()[-3000:]


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ServerProcess]]:
    yield from direct_and_asgi_servers(tmp_path_factory, MODELS, {"VITSERVE_MAX_BODY_BYTES": str(MAX_BODY)})


def _port(server: ServerProcess) -> int:
    return int(server.base_url.rsplit(":", 1)[1])


def _read_answer(sock: socket.socket, buf: bytearray) -> Answer:
    """One response from `sock` (bytes past it stay in `buf`): by Content-Length, or up to the close."""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError(f"closed before a response head: {bytes(buf)!r}")
        buf += data
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    status_line, *lines = head.split(b"\r\n")
    headers = [(n.strip().lower(), v.strip()) for n, _, v in (line.partition(b":") for line in lines)]
    length = 0 if status_line.startswith(b"HTTP/1.1 1") else next(
        (int(v) for n, v in headers if n == b"content-length"), None)
    body = bytearray(rest)
    while length is None or len(body) < length:
        data = sock.recv(65536)
        if not data:
            break
        body += data
    size = len(body) if length is None else length
    buf[:] = body[size:]
    return Answer(status_line, headers, bytes(body[:size]))


def exchange(server: ServerProcess, *parts: bytes, answers: int = 1, gap_s: float = 0.0) -> list[Answer]:
    """Send `parts` on one connection (`gap_s` apart) and read `answers` responses (interim 100s included)."""
    with socket.create_connection(("127.0.0.1", _port(server)), timeout=30) as sock:
        for i, part in enumerate(parts):
            if i and gap_s:
                time.sleep(gap_s)
            try:
                sock.sendall(part)
            except (BrokenPipeError, ConnectionResetError):  # answered and closed before the rest was sent
                break
        buf = bytearray()
        return [_read_answer(sock, buf) for _ in range(answers)]


def post(path: str, body: bytes, *headers: str, version: str = "1.1") -> bytes:
    lines = [f"POST {path} HTTP/{version}", "host: test", *headers, f"content-length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def chunked(path: str, body: bytes, *headers: str, piece: int = 4096) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "host: test", *headers, "transfer-encoding: chunked"]
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + piece]), body[i:i + piece]) for i in range(0, len(body), piece))
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + chunks + b"0\r\n\r\n"


def png(size: int = 32) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (20, 120, 220)).save(buf, "PNG")
    return buf.getvalue()


def v2_json(shape: tuple[int, ...] = (1, 3, 32, 32), **extra: object) -> bytes:
    data = np.linspace(-1, 1, int(np.prod(shape))).astype(np.float32).tolist()
    return json.dumps({"id": "r1", "inputs": [{"name": "pixel_values", "shape": list(shape), "datatype": "FP32",
                                               "data": data}], **extra}).encode()


def v2_binary(pixels: np.ndarray) -> tuple[bytes, str]:
    header = json.dumps({"inputs": [{"name": "pixel_values", "shape": list(pixels.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": pixels.nbytes}}],
                         "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]}).encode()
    return header + pixels.tobytes(), f"inference-header-content-length: {len(header)}"


def multipart(image: bytes, *, field: bool = False) -> tuple[bytes, str]:
    """A multipart body with the image; `field`: after a text field (the full parser's case)."""
    boundary = "direct-test-boundary"
    body = (f"--{boundary}\r\ncontent-disposition: form-data; name=\"note\"\r\n\r\nhello\r\n".encode()
            if field else b"") + (
        f"--{boundary}\r\ncontent-disposition: form-data; name=\"image\"; filename=\"x.png\"\r\n"
        f"content-type: image/png\r\n\r\n").encode() + image + f"\r\n--{boundary}--\r\n".encode()
    return body, f"content-type: multipart/form-data; boundary={boundary}"


def battery() -> dict[str, tuple[tuple[bytes, ...], int]]:
    """name -> (what is sent on one connection, how many answers come back)."""
    pixels = np.linspace(-1, 1, 3 * 32 * 32, dtype=np.float32).reshape(1, 3, 32, 32)
    binary, binary_header = v2_binary(pixels)
    nan = pixels.copy()
    nan[0, 0, 0, 0] = np.nan
    nan_body, _ = v2_binary(nan)
    image = png()
    form, form_type = multipart(image)
    form_field, _ = multipart(image, field=True)
    json_type = "content-type: application/json"
    infer = "/v2/models/tiny_a/infer"
    classify = "/v1/models/tiny_a/classify"
    # just over the limit: what the server leaves unread when it answers 413 and closes stays small
    over = b" " * (MAX_BODY + 1000)
    return {
        "v2 json": ((post(infer, v2_json(), json_type),), 1),
        "v2 binary": ((post(infer, binary, binary_header, "content-type: application/octet-stream"),), 1),
        "v2 binary gzip answer": ((post(infer, binary, binary_header, "accept-encoding: gzip"),), 1),
        "v2 gzip body": ((post(infer, gzip.compress(v2_json()), json_type, "content-encoding: gzip"),), 1),
        "v2 versioned": ((post("/v2/models/tiny_b/versions/2/infer", v2_json(), json_type),), 1),
        "v2 unknown version": ((post("/v2/models/tiny_b/versions/9/infer", v2_json(), json_type),), 1),
        "v2 bad version": ((post("/v2/models/tiny_b/versions/x1/infer", v2_json(), json_type),), 1),
        "v2 unknown model": ((post("/v2/models/nope/infer", v2_json(), json_type),), 1),
        "v2 wrong shape": ((post(infer, v2_json((1, 3, 16, 16)), json_type),), 1),
        "v2 NaN": ((post(infer, nan_body, binary_header),), 1),
        "v2 not json": ((post(infer, b"{nope", json_type),), 1),
        "v2 chunked": ((chunked(infer, v2_json(), json_type),), 1),
        "v2 chunked over the limit": ((chunked(infer, over, json_type),), 1),
        "classify chunked over the limit": ((chunked(classify, over, "content-type: image/png"),), 1),
        "v2 content-length over the limit": ((post(infer, b"", json_type).replace(
            b"content-length: 0", b"content-length: %d" % (MAX_BODY + 1)),), 1),
        "v2 bad content-length": ((post(infer, b"", json_type).replace(b"content-length: 0",
                                                                       b"content-length: x"),), 1),
        "v2 100-continue": ((post(infer, b"", json_type, "expect: 100-continue").replace(
            b"content-length: 0", b"content-length: %d" % len(v2_json())), v2_json()), 2),
        "v2 100-continue over the limit": ((post(infer, b"", "expect: 100-continue").replace(
            b"content-length: 0", b"content-length: %d" % (MAX_BODY + 1)),), 1),
        "http/1.0": ((post(infer, v2_json(), json_type, version="1.0"),), 1),
        "pipelined": ((post(infer, v2_json(), json_type) + post(classify, image, "content-type: image/png")
                       + post("/v2/models/nope/infer", b"{}", json_type) + post(infer, v2_json(), json_type,
                                                                               "connection: close"),), 4),
        "classify multipart": ((post(classify, form, form_type),), 1),
        "classify multipart, full parser": ((post(classify + "?top_k=2", form_field, form_type),), 1),
        "classify invalid multipart": ((post(classify, b"--x\r\ngarbage", form_type),), 1),
        "classify raw": ((post(classify + "?top_k=3&version=1", image, "content-type: image/png"),), 1),
        "classify base64 json": ((post(classify, json.dumps({"image": base64.b64encode(image).decode()}).encode(),
                                       json_type),), 1),
        "classify top_k=0": ((post(classify + "?top_k=0", image, "content-type: image/png"),), 1),
        "classify wrong content type": ((post(classify, image, "content-type: text/plain"),), 1),
        "classify no content type": ((post(classify, image),), 1),
        "classify not an image": ((post(classify, b"not an image", "content-type: image/png"),), 1),
        "classify unknown model": ((post("/v1/models/nope/classify", image, "content-type: image/png"),), 1),
        "classify chunked": ((chunked("/v1/models/tiny_b/classify", image, "content-type: image/png", piece=100),), 1),
    }


TIMING_KEYS = {"timings", "total_ms"}


def _without_timings(value: object) -> object:
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def comparable(answer: Answer) -> tuple[object, ...]:
    """What must match between the two paths: status line, headers but Date's value (and Server-Timing's and
    the length of a body with timings), the body (decompressed; JSON without timings)."""
    headers = dict(answer.headers)
    body = answer.body
    if headers.get(b"content-encoding") == b"gzip":
        body = gzip.decompress(body)
    timed = b'"timings"' in body
    assert int(headers.get(b"content-length", len(answer.body))) == len(answer.body)
    varying = {b"date", b"server-timing"} | ({b"content-length"} if timed else set())
    shown = [(n, b"<varies>" if n in varying else v) for n, v in answer.headers]
    try:
        parsed: object = _without_timings(json.loads(body))
    except ValueError:
        parsed = body
    return answer.status_line, shown, parsed


def test_both_paths_answer_the_battery_alike(servers: dict[str, ServerProcess]) -> None:
    direct, asgi = servers["direct"], servers["asgi"]
    statuses = {}
    for name, (parts, count) in battery().items():
        try:
            got = [comparable(a) for a in exchange(direct, *parts, answers=count, gap_s=0.05)]
            want = [comparable(a) for a in exchange(asgi, *parts, answers=count, gap_s=0.05)]
        except ConnectionError as exc:
            raise AssertionError(f"{name}: {exc}") from exc
        assert got == want, name
        statuses[name] = [a[0].split(b" ")[1].decode() for a in got]
        # both still serve
        for srv in (direct, asgi):
            assert httpx.get(srv.base_url + "/v2/health/ready", timeout=10).status_code == 200, name
    # the battery meant what it says: a few statuses it must have produced
    assert statuses["v2 binary"] == ["200"] and statuses["classify multipart, full parser"] == ["200"]
    assert statuses["v2 chunked over the limit"] == ["413"] and statuses["v2 content-length over the limit"] == ["413"]
    assert statuses["v2 100-continue"] == ["100", "200"] and statuses["pipelined"] == ["200", "200", "404", "200"]
    assert statuses["classify top_k=0"] == ["400"] and statuses["v2 NaN"] == ["400"]
    # the same requests counted by model and status on both
    counts = [{k: v for k, v in metric_samples(httpx.get(s.base_url + "/metrics").text,
                                                "vitserve_requests_total{").items()} for s in (direct, asgi)]
    assert counts[0] == counts[1] and counts[0]


def _requests_total(server: ServerProcess, model: str, code: str) -> float:
    samples = metric_samples(httpx.get(server.base_url + "/metrics").text, "vitserve_requests_total{")
    return samples.get(f'vitserve_requests_total{{code="{code}",model="{model}",protocol="http"}}', 0.0)


def _inferences(server: ServerProcess, model: str) -> float:
    samples = metric_samples(httpx.get(server.base_url + "/metrics").text, "vitserve_inferences_total{")
    return samples.get(f'vitserve_inferences_total{{model="{model}",version="1"}}', 0.0)


def test_a_client_that_leaves_while_queued_is_cancelled(servers: dict[str, ServerProcess]) -> None:
    """tiny_slow computes one image at a time: requests sent together queue behind the first; clients that
    hang up while queued get their requests cancelled (499, never computed)."""
    srv = servers["direct"]
    pixels = np.ones((1, 3, 64, 64), dtype=np.float32)
    body, header = v2_binary(pixels)
    request = post("/v2/models/tiny_slow/infer", body, header)
    before_499, before_images = _requests_total(srv, "tiny_slow", "499"), _inferences(srv, "tiny_slow")
    socks = [socket.create_connection(("127.0.0.1", _port(srv)), timeout=30) for _ in range(12)]
    for sock in socks:
        sock.sendall(request)
    time.sleep(0.05)
    kept, gone = socks[0], socks[1:]
    for sock in gone:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # reset: gone at once
        sock.close()
    answer = _read_answer(kept, bytearray())
    kept.close()
    assert answer.status_line.startswith(b"HTTP/1.1 200 ")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and _requests_total(srv, "tiny_slow", "499") - before_499 < 1:
        time.sleep(0.05)
    time.sleep(0.5)  # what was dispatched before the resets finishes
    cancelled = _requests_total(srv, "tiny_slow", "499") - before_499
    computed = _inferences(srv, "tiny_slow") - before_images
    # (a request reset before the server read it never reaches it: neither computed nor cancelled)
    assert cancelled >= 1, srv.log()[-2000:]
    assert computed + cancelled <= len(socks), "a cancelled request was computed"
    assert httpx.post(srv.base_url + "/v2/models/tiny_slow/infer", content=body,
                      headers={"inference-header-content-length": header.split(": ")[1]}, timeout=30).status_code == 200


def test_sigterm_answers_a_request_already_accepted(tmp_path: Path, servers: dict[str, ServerProcess]) -> None:
    """A request in progress on the direct path when SIGTERM arrives is answered, and the server exits 0."""
    srv = start_server(_repository(servers), tmp_path, "--warmup", "one", "--intra-op-threads", "1",
                       env={"VITSERVE_DIRECT_ROUTES": "true"})
    body, header = v2_binary(np.ones((1, 3, 64, 64), dtype=np.float32))
    request = post("/v2/models/tiny_slow/infer", body, header)
    answers: list[Answer] = []
    socks = [socket.create_connection(("127.0.0.1", _port(srv)), timeout=30) for _ in range(4)]
    for sock in socks:
        sock.sendall(request)
    time.sleep(0.05)

    def read_all() -> None:
        for sock in socks:
            answers.append(_read_answer(sock, bytearray()))

    reader = threading.Thread(target=read_all)
    reader.start()
    code = srv.stop()
    reader.join(30)
    for sock in socks:
        sock.close()
    assert code == 0, srv.log()[-3000:]
    assert [a.status_line.split(b" ")[1] for a in answers] == [b"200"] * 4, srv.log()[-3000:]


def _repository(servers: dict[str, ServerProcess]) -> Path:
    """The module's repository (the one the servers serve)."""
    cmd = [str(arg) for arg in servers["direct"].proc.args]  # type: ignore[union-attr]
    return Path(cmd[cmd.index("--repository") + 1])

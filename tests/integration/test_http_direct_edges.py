"""Edges of the direct path (service/api/fast_path.py) and the lazily armed guards (service/http_protocol.py).

Each exchange goes to two real servers on one repository, direct routes on and off, and both must answer
alike; a few exchanges check a duty of their own (408 for a slow head, a stalled body closed, 499 counted).
"""

from __future__ import annotations

import json
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from service_server import ServerProcess, start_server
from test_http_direct import Answer, _read_answer, comparable, direct_and_asgi_servers, png, post, v2_binary
from test_http_server import metric_samples
from tiny_repository import TinyModel

TIMEOUT_S = 1.0
MODELS = [TinyModel("tiny_a"), TinyModel("tiny_narrow", input_range=(-0.5, 0.5)),
          TinyModel("tiny_slow", size=64, hidden=4096, max_batch_size=1)]
INFER = "/v2/models/tiny_a/infer"


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ServerProcess]]:
    yield from direct_and_asgi_servers(
        tmp_path_factory, MODELS,
        {"VITSERVE_HEADER_TIMEOUT_S": str(TIMEOUT_S), "VITSERVE_BODY_TIMEOUT_S": str(TIMEOUT_S)})


def _connect(server: ServerProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", int(server.base_url.rsplit(":", 1)[1])), timeout=15)


def _closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Whether the server closes `sock` within `seconds` (and what it sent before)."""
    sock.settimeout(0.2)
    got = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return True, got
        if not data:
            return True, got
        got += data
    return False, got


def _requests_total(server: ServerProcess, model: str, code: str) -> float:
    samples = metric_samples(httpx.get(server.base_url + "/metrics").text, "vitserve_requests_total{")
    return samples.get(f'vitserve_requests_total{{code="{code}",model="{model}",protocol="http"}}', 0.0)


def _pixels(images: int = 1, size: int = 32, value: float | None = None) -> np.ndarray:
    if value is not None:
        return np.full((images, 3, size, size), value, np.float32)
    return np.linspace(-0.4, 0.4, images * 3 * size * size, dtype=np.float32).reshape(images, 3, size, size)


def _binary_request(pixels: np.ndarray, path: str = INFER, *headers: str) -> bytes:
    body, header = v2_binary(pixels)
    return post(path, body, header, *headers)


@pytest.mark.parametrize("which", ["direct", "asgi"])
def test_keep_alive_second_head_byte_by_byte_gets_408(servers: dict[str, ServerProcess], which: str) -> None:
    """After one answered request, the next head trickles in a byte at a time: 408 within the header timeout."""
    with _connect(servers[which]) as sock:
        sock.sendall(_binary_request(_pixels()))
        assert _read_answer(sock, bytearray()).status_line.startswith(b"HTTP/1.1 200 ")
        head = post(INFER, b"{}", "content-type: application/json")
        start = time.monotonic()
        got = b""
        sock.settimeout(0.25)
        for byte in head[:40]:
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            try:
                got += sock.recv(65536)
            except TimeoutError:
                pass
            if got:
                break
        closed, rest = _closed_within(sock, 3)
        elapsed = time.monotonic() - start
        assert (got + rest).startswith(b"HTTP/1.1 408 "), got + rest
        assert closed and elapsed < TIMEOUT_S + 4


@pytest.mark.parametrize("which", ["direct", "asgi"])
@pytest.mark.parametrize("keep_alive_first", [False, True])
def test_body_stalled_after_head_in_one_packet_is_closed_and_counted(
        servers: dict[str, ServerProcess], which: str, keep_alive_first: bool) -> None:
    """Head and half the body in one packet, then nothing: the connection closes after the body timeout and the
    request counts as a client disconnect (499), on the first request of a connection and on a kept-alive one."""
    srv = servers[which]
    before = _requests_total(srv, "tiny_a", "499")
    request = _binary_request(_pixels())
    with _connect(srv) as sock:
        if keep_alive_first:
            sock.sendall(request)
            assert _read_answer(sock, bytearray()).status_line.startswith(b"HTTP/1.1 200 ")
        sock.sendall(request[: len(request) - 2000])
        closed, got = _closed_within(sock, TIMEOUT_S + 4)
    assert closed and got == b"", got
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _requests_total(srv, "tiny_a", "499") == before:
        time.sleep(0.05)
    assert _requests_total(srv, "tiny_a", "499") == before + 1


@pytest.mark.parametrize("which", ["direct", "asgi"])
def test_client_gone_mid_body_counts_499(servers: dict[str, ServerProcess], which: str) -> None:
    srv = servers[which]
    before = _requests_total(srv, "tiny_a", "499")
    request = _binary_request(_pixels())
    sock = _connect(srv)
    sock.sendall(request[: len(request) // 2])
    time.sleep(0.1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _requests_total(srv, "tiny_a", "499") == before:
        time.sleep(0.05)
    assert _requests_total(srv, "tiny_a", "499") == before + 1


def _exchange(server: ServerProcess, parts: list[bytes], answers: int, gap_s: float = 0.0) -> list[Answer]:
    with _connect(server) as sock:
        for i, part in enumerate(parts):
            if i and gap_s:
                time.sleep(gap_s)
            sock.sendall(part)
        buf = bytearray()
        return [_read_answer(sock, buf) for _ in range(answers)]


def test_large_body_in_pieces_over_the_high_water_mark(servers: dict[str, ServerProcess]) -> None:
    """8 images (98 KB, above uvicorn's 64 KiB HIGH_WATER_LIMIT) sent in 4 KB pieces: reading pauses and resumes;
    both paths answer the same logits as for the body sent whole."""
    request = _binary_request(_pixels(8))
    pieces = [request[i:i + 4096] for i in range(0, len(request), 4096)]
    answers = {name: [comparable(a) for a in _exchange(srv, pieces, 1, gap_s=0.002)]
               for name, srv in servers.items()}
    whole = [comparable(a) for a in _exchange(servers["direct"], [request], 1)]
    assert answers["direct"] == answers["asgi"] == whole
    assert whole[0][0].startswith(b"HTTP/1.1 200 ")


def test_pipelined_large_bodies_each_get_their_own_answer(servers: dict[str, ServerProcess]) -> None:
    """Three 98 KB bodies of different images (one gzip-encoded, one behind `expect: 100-continue`) pipelined in
    one stream of 3 KB pieces: a body collected whole (fast_path `DirectRequest._whole`) never takes bytes of the
    next request, and each answer is the one its body gets alone, on both paths."""
    import gzip

    bodies = [v2_binary(_pixels(8) * scale) for scale in (1.0, -0.5, 0.25)]
    requests = [post(INFER, bodies[0][0], bodies[0][1]),
                post(INFER, gzip.compress(bodies[1][0]), bodies[1][1], "content-encoding: gzip"),
                post(INFER, bodies[2][0], bodies[2][1], "expect: 100-continue")]

    def final(answers: list[Answer]) -> list[tuple[object, ...]]:  # without the interim 100 Continue
        return [comparable(a) for a in answers if not a.status_line.startswith(b"HTTP/1.1 1")]

    alone = [final(_exchange(servers["direct"], [r], 2 if b"expect" in r else 1))[0] for r in requests]
    assert all(a[0].startswith(b"HTTP/1.1 200 ") for a in alone) and len({repr(a[-1]) for a in alone}) == 3
    stream = b"".join(requests)
    pieces = [stream[i:i + 3072] for i in range(0, len(stream), 3072)]
    for name, srv in servers.items():
        assert final(_exchange(srv, pieces, 4, gap_s=0.001)) == alone, name


def _with_id(pixels: np.ndarray, rid: str, path: str = INFER) -> bytes:
    header = json.dumps({"id": rid, "inputs": [{"name": "pixel_values", "shape": list(pixels.shape),
                                                "datatype": "FP32", "parameters": {"binary_data_size": pixels.nbytes}}],
                         "parameters": {"binary_data_output": False}}).encode()
    return post(path, header + pixels.tobytes(), f"inference-header-content-length: {len(header)}")


def test_many_pipelined_requests_answered_in_order(servers: dict[str, ServerProcess]) -> None:
    """30 requests in one write, mixed hot (direct) and ASGI routes; the client reads only after sending all."""
    parts = []
    for i in range(30):
        if i % 5 == 4:
            parts.append(b"GET /v2/health/ready HTTP/1.1\r\nhost: t\r\n\r\n")
        elif i % 5 == 3:
            parts.append(post("/v1/models/tiny_a/classify", png(), "content-type: image/png"))
        else:
            parts.append(_with_id(_pixels(), f"r{i}"))
    for name, srv in servers.items():
        answers = _exchange(srv, [b"".join(parts)], 30)
        assert [a.status_line.split(b" ")[1] for a in answers] == [b"200"] * 30, name
        ids = [json.loads(a.body).get("id") for a in answers if a.body.startswith(b'{"model_name"')]
        assert ids == [f"r{i}" for i in range(30) if i % 5 < 3], name


def test_nan_inf_and_range_refused_after_the_header_plan_is_cached(servers: dict[str, ServerProcess]) -> None:
    """The same header bytes (so the cached plan) with NaN, inf or out-of-range values: 400 every time."""
    srv = servers["direct"]
    good = _pixels()
    for _ in range(3):
        body, header = v2_binary(good)
        assert _exchange(srv, [post("/v2/models/tiny_narrow/infer", body, header)], 1)[0].status_line.startswith(
            b"HTTP/1.1 200 ")
    for bad_value in (np.nan, np.inf, 0.9):
        bad = good.copy()
        bad[0, 1, 2, 3] = bad_value
        body, header = v2_binary(bad)
        answer = _exchange(srv, [post("/v2/models/tiny_narrow/infer", body, header)], 1)[0]
        assert answer.status_line.startswith(b"HTTP/1.1 400 "), (bad_value, answer)


@pytest.mark.parametrize("which", ["direct", "asgi"])
def test_100_continue_refused_early_then_body_sent_anyway_keeps_the_connection(
        servers: dict[str, ServerProcess], which: str) -> None:
    """Expect: 100-continue on an unknown model: 404 without a 100; the client sends the body anyway, then a
    second request on the same connection is answered."""
    srv = servers[which]
    body, header = v2_binary(_pixels())
    head = post("/v2/models/nope/infer", b"", header, "expect: 100-continue").replace(
        b"content-length: 0", b"content-length: %d" % len(body))
    with _connect(srv) as sock:
        sock.sendall(head)
        buf = bytearray()
        first = _read_answer(sock, buf)
        sock.sendall(body + _binary_request(_pixels()))
        second = _read_answer(sock, buf)
    assert first.status_line.startswith(b"HTTP/1.1 404 ")
    assert second.status_line.startswith(b"HTTP/1.1 200 ")


def test_http10_keep_alive_and_client_close_answered_alike(servers: dict[str, ServerProcess]) -> None:
    body, header = v2_binary(_pixels())
    cases = [
        [post(INFER, body, header, "connection: keep-alive", version="1.0")],
        # after a request with Connection: close, a pipelined one is not answered
        [post(INFER, body, header, "connection: close") + post(INFER, body, header)],
    ]
    for parts in cases:
        got = {name: [comparable(a) for a in _exchange(srv, parts, 1)] for name, srv in servers.items()}
        assert got["direct"] == got["asgi"], parts[0][:80]


@pytest.mark.parametrize("which", ["direct", "asgi"])
def test_client_gone_mid_multipart_stream_counts_499_not_400(servers: dict[str, ServerProcess], which: str) -> None:
    """A chunked multipart upload (no Content-Length: the full multipart parser reads the stream) whose client
    disconnects mid-body is a client disconnect (499), as for every other body, not a malformed body (400).
    (Both paths: service/api/v1.py `read_image` turns the parser's ClientDisconnect into InvalidInput.)"""
    srv = servers[which]
    before = {code: _requests_total(srv, "tiny_a", code) for code in ("400", "499")}
    boundary = "review-boundary"
    head = ("POST /v1/models/tiny_a/classify HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n"
            f"content-type: multipart/form-data; boundary={boundary}\r\n\r\n").encode()
    part = (f"--{boundary}\r\ncontent-disposition: form-data; name=\"image\"; filename=\"x.png\"\r\n"
            "content-type: image/png\r\n\r\n").encode() + png()[:50]
    sock = _connect(srv)
    sock.sendall(head + b"%x\r\n%s\r\n" % (len(part), part))
    time.sleep(0.2)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and all(_requests_total(srv, "tiny_a", c) == before[c] for c in before):
        time.sleep(0.05)
    after = {code: _requests_total(srv, "tiny_a", code) for code in ("400", "499")}
    assert (after["400"] - before["400"], after["499"] - before["499"]) == (0, 1)


def test_a_client_that_reads_late_gets_every_pipelined_answer(servers: dict[str, ServerProcess]) -> None:
    """Write back-pressure: 400 pipelined classify requests whose answers (~160 KB) exceed the transport's high
    water mark while the client reads nothing for a second; then every answer arrives, in order, on both paths."""
    import threading

    request = post("/v1/models/tiny_a/classify?top_k=10", png(8), "content-type: image/png")
    count = 400
    for name, srv in servers.items():
        with _connect(srv) as sock:
            sender = threading.Thread(target=sock.sendall, args=(request * count,))
            sender.start()
            time.sleep(1.0)
            buf = bytearray()
            answers = [_read_answer(sock, buf) for _ in range(count)]
            sender.join(10)
        assert [a.status_line.split(b" ")[1] for a in answers] == [b"200"] * count, name


@pytest.mark.parametrize("flag", ["true", "false"])
def test_sigterm_closes_kept_alive_connections_and_answers_in_flight_with_close(
        servers: dict[str, ServerProcess], tmp_path_factory: pytest.TempPathFactory, flag: str) -> None:
    """Drain: an idle kept-alive connection is closed; requests in flight are answered 200 and their connections
    close after; the server exits 0. Every answer given after SIGTERM says `connection: close` (a client otherwise
    reuses a connection the server is about to close: its next request is lost to a reset). The slow model computes
    one image at a time, so the queued requests are answered one after another, before and after the signal;
    only answers that arrive well after it was sent are held to the rule."""
    import signal
    import threading

    from service.runtimes.standin import BATCH_MS_ENV, write_standin_model

    # the off-CPU stand-in, one image per batch, 300 ms each: the queued answers come 0.3 s apart
    repo = tmp_path_factory.mktemp("drain_repo")
    write_standin_model(repo, "standin_slow", size=32, num_classes=10, max_batch_size=1)
    srv = start_server(repo, tmp_path_factory.mktemp("drain"), "--warmup", "one",
                       env={"VITSERVE_DIRECT_ROUTES": flag, BATCH_MS_ENV: "300"})
    slow = _binary_request(_pixels(), "/v2/models/standin_slow/infer")
    idle = _connect(srv)
    idle.sendall(slow)
    assert _read_answer(idle, bytearray()).status_line.startswith(b"HTTP/1.1 200 ")
    busy = [_connect(srv) for _ in range(4)]
    for sock in busy:
        sock.sendall(slow)
    time.sleep(0.05)
    answers: list[tuple[float, Answer]] = []
    closed_after: list[bool] = []

    def read_one(sock: socket.socket) -> None:
        answer = _read_answer(sock, bytearray())
        answers.append((time.monotonic(), answer))
        closed_after.append(_closed_within(sock, 5)[0])

    readers = [threading.Thread(target=read_one, args=(sock,)) for sock in busy]
    for reader in readers:
        reader.start()
    signalled = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    idle_closed, _ = _closed_within(idle, 5)
    for reader in readers:
        reader.join(30)
    code = srv.stop()
    for sock in (idle, *busy):
        sock.close()
    assert code == 0, srv.log()[-2000:]
    assert idle_closed
    assert [a.status_line.split(b" ")[1] for _, a in answers] == [b"200"] * len(busy)
    assert all(closed_after)
    late = [a for at, a in answers if at > signalled + 0.2]  # the signal has been handled by then
    assert len(late) >= 3, [at - signalled for at, _ in answers]
    assert all((b"connection", b"close") in a.headers for a in late), [a.headers for a in late]


def test_connection_cap_then_direct_requests_on_the_admitted_connections(
        servers: dict[str, ServerProcess], tmp_path_factory: pytest.TempPathFactory) -> None:
    """With 2 connections at most: a third gets 503 and is closed; the two admitted ones serve hot requests
    (direct path), and once one closes a new connection is admitted."""
    cmd = [str(arg) for arg in servers["direct"].proc.args]  # type: ignore[union-attr]
    repo = cmd[cmd.index("--repository") + 1]
    srv = start_server(Path(repo), tmp_path_factory.mktemp("cap"), "--warmup", "one", "--intra-op-threads", "1",
                       env={"VITSERVE_DIRECT_ROUTES": "true", "VITSERVE_MAX_CONNECTIONS": "2"})
    try:
        time.sleep(0.3)  # the readiness probes' connections are gone
        first, second = _connect(srv), _connect(srv)
        time.sleep(0.1)
        with _connect(srv) as third:
            refused = _read_answer(third, bytearray())
        assert refused.status_line.startswith(b"HTTP/1.1 503 ")
        for sock in (first, second):
            sock.sendall(_binary_request(_pixels()))
            assert _read_answer(sock, bytearray()).status_line.startswith(b"HTTP/1.1 200 ")
        first.close()
        time.sleep(0.2)
        with _connect(srv) as fourth:
            fourth.sendall(_binary_request(_pixels()))
            assert _read_answer(fourth, bytearray()).status_line.startswith(b"HTTP/1.1 200 ")
        second.close()
    finally:
        assert srv.stop() == 0, srv.log()[-2000:]

"""Hostile clients of the routes beside inference (`/v1/compare`, repository control, unknown paths) with
`--http-workers 2`, and the same requests against the single-process server: the answers and the work done must be
the same in both modes.

- A client that resets its connection is never computed for: its request leaves the engine's queue (issue 25,
  item 2), whichever route it came by (/v1/compare, the direct classify and infer routes).
- A request the app refuses without reading its body (an unknown path or model, a body over a route's own
  limit, no API key) is answered at once, although most of its declared body never comes (item 5).
"""

from __future__ import annotations

import io
import json
import re
import socket
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from service_server import ServerProcess, start_server

from service.runtimes.standin import write_standin_model

STANDIN = "standin"
SIZE = 32
#: the stand-in's time per batch: the one request in flight holds the batcher this long, so the others queue
BATCH_MS = 2000
#: a hang's bound (never a speed figure): a prompt answer takes milliseconds
ANSWER_TIMEOUT_S = 10.0
DECLARED = 30_000_000
SENT = 64 * 1024


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("workers_hostile_repo")
    write_standin_model(root, STANDIN, size=SIZE, num_classes=10, max_batch_size=4, max_queue_size=64)
    return root


@pytest.fixture(scope="module", params=["single", "workers"])
def server(request: pytest.FixtureRequest, repository: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    args = ["--http-workers", "2"] if request.param == "workers" else []
    srv = start_server(repository, tmp_path_factory.mktemp(request.param), "--warmup", "one", *args,
                       env={"VITSERVE_STANDIN_BATCH_MS": str(BATCH_MS)})
    try:
        yield srv
    finally:
        code = srv.stop(timeout=60)
        assert code == 0, f"server exited with {code}:\n{srv.log()[-3000:]}"


def port_of(server: ServerProcess) -> int:
    return int(server.base_url.rsplit(":", 1)[1])


def png(side: int, seed: int = 0) -> bytes:
    """Noise: a PNG that compresses little, so its body is about 3 bytes a pixel."""
    buf = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 255, (side, side, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def binary_infer(images: int = 1) -> tuple[bytes, dict[str, str]]:
    x = np.zeros((images, 3, SIZE, SIZE), np.float32)
    header = (b'{"inputs":[{"name":"pixel_values","shape":[%d,3,%d,%d],"datatype":"FP32",'
              b'"parameters":{"binary_data_size":%d}}]}' % (images, SIZE, SIZE, x.nbytes))
    return header + x.tobytes(), {"Inference-Header-Content-Length": str(len(header)),
                                  "Content-Type": "application/octet-stream"}


IMAGE = png(600)  # ~1 MB: a body read in many pieces
ROUTES = {  # route -> (path, body, headers, the model label its requests are counted under)
    "compare": (f"/v1/compare?models={STANDIN}", IMAGE, {"Content-Type": "image/png"}, "_compare"),
    "classify": (f"/v1/models/{STANDIN}/classify", IMAGE, {"Content-Type": "image/png"}, STANDIN),
    "infer": (f"/v2/models/{STANDIN}/infer", *binary_infer(), STANDIN),
}


def raw_request(path: str, body: bytes, headers: dict[str, str], length: int | None = None) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body) if length is None else length}\r\n"
    return (head + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode() + body


def connect(server: ServerProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port_of(server)), timeout=30)


def reset(conn: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0), as a client that gives up abruptly."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def read_response(conn: socket.socket) -> tuple[int, bytes]:
    """(status, body) of one HTTP/1.1 response with a Content-Length, read from a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if status == 100:  # an interim answer to Expect: 100-continue; the final one follows
        rest = body
        while b"\r\n\r\n" not in rest:
            chunk = conn.recv(65536)
            assert chunk, "connection closed after 100 Continue"
            rest += chunk
        head, _, body = rest.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
    match = re.search(rb"(?im)^content-length: *(\d+)", head)
    assert match is not None, head
    length = int(match.group(1))
    while len(body) < length:
        chunk = conn.recv(65536)
        assert chunk, "connection closed mid-body"
        body += chunk
    return status, body[:length]


def metric(server: ServerProcess, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels` (0 when none)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(server.base_url + "/metrics", timeout=30).text
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()))


def queue_depth(server: ServerProcess) -> float:
    return metric(server, "vitserve_queue_depth", model=STANDIN, version="1")


def computed(server: ServerProcess) -> float:
    return metric(server, "vitserve_inferences_total", model=STANDIN, version="1")


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


# -- item 2: a client that leaves is not computed for ----------------------------------------------
@pytest.mark.parametrize("route", list(ROUTES))
def test_requests_whose_clients_reset_are_never_computed(server: ServerProcess, route: str) -> None:
    """A full batch holds the stand-in's batcher for BATCH_MS; behind it, requests reset once they are seen in
    the queue, and requests whose clients reset their connections right after sending. None of them may be
    computed: each leaves the queue (499), and the server serves the next client as before."""
    path, body, headers, label = ROUTES[route]
    blocker_body, blocker_headers = binary_infer(4)  # a full batch: nothing joins it
    before = computed(server)
    gone_before = metric(server, "vitserve_requests_total", model=label, code="499")
    blocker = connect(server)
    blocker.sendall(raw_request(f"/v2/models/{STANDIN}/infer", blocker_body, blocker_headers))
    try:
        time.sleep(0.2)  # the blocker first (had another request overtaken it, the depth below would be 4 + 3)
        queued = []
        for _ in range(4):  # seen in the engine's queue, then reset
            conn = connect(server)
            conn.sendall(raw_request(path, body, headers))
            queued.append(conn)
        wait_for(lambda: queue_depth(server) == len(queued), "the requests to queue behind the blocker")
        for _ in range(4):  # reset right after sending (issue 25's framing)
            conn = connect(server)
            conn.sendall(raw_request(path, body, headers))
            reset(conn)
        for conn in queued:
            reset(conn)
        wait_for(lambda: queue_depth(server) == 0, "the abandoned requests to leave the queue")
        status, answer = read_response(blocker)
        assert status == 200, answer[:300]
    finally:
        blocker.close()
    time.sleep(BATCH_MS / 1000 + 0.5)  # had an abandoned request stayed queued, its batch would be done by now
    assert computed(server) - before == 4, "a request whose client had left was computed"
    assert metric(server, "vitserve_requests_total", model=label, code="499") - gone_before >= len(queued)
    with httpx.Client(base_url=server.base_url, timeout=30) as client:  # the next client is served
        r = client.post(path, content=body, headers=headers)
        assert r.status_code == 200, r.text
    assert computed(server) - before == 5


# -- item 5: what the app refuses unread is answered at once, however large the declared body -----------------
KEY_ERROR = {"error": "repository control needs a valid API key (Authorization: Bearer <key> or X-API-Key)"}
REFUSED = {  # name -> (method, path, headers, status, JSON answer): the single-process server's answers
    "unknown path": ("POST", "/nope", {}, 404, {"error": "Not Found"}),
    "index over its own limit": ("POST", "/v2/repository/index", {"Content-Type": "application/json"}, 413,
                                 {"error": "this endpoint takes a body of at most 1024 bytes"}),
    "compare, unknown model": ("POST", "/v1/compare?models=unknown", {"Content-Type": "image/png"}, 404,
                               {"error": "unknown model 'unknown'"}),
    "compare, one model unknown": ("POST", f"/v1/compare?models={STANDIN},nope", {"Content-Type": "image/png"},
                                   404, {"error": "unknown model 'nope'"}),
    "compare, bad query": ("POST", "/v1/compare?top_k=0", {"Content-Type": "image/png"}, 400,
                           {"error": "invalid request: query.top_k: Input should be greater than or equal to 1"}),
    "compare, unsupported type": ("POST", "/v1/compare", {"Content-Type": "text/plain"}, 415,
                                  {"error": "unsupported Content-Type 'text/plain' (send multipart/form-data, "
                                            "image/*, or JSON)"}),
    "load without a key": ("POST", f"/v2/repository/models/{STANDIN}/load", {}, 401, KEY_ERROR),
    "unload, wrong key": ("POST", f"/v2/repository/models/{STANDIN}/unload", {"Authorization": "Bearer nope"},
                          401, KEY_ERROR),
    "wrong method": ("PUT", "/v1/models", {}, 405, {"error": "Method Not Allowed"}),
}
#: the ones answered before any byte of the body is read (the index reads a little of it first)
UNREAD = [name for name in REFUSED if name != "index over its own limit"]


def send_head(server: ServerProcess, method: str, path: str, headers: dict[str, str]) -> socket.socket:
    conn = connect(server)
    conn.settimeout(ANSWER_TIMEOUT_S)
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    conn.sendall((head + "\r\n").encode())
    return conn


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
@pytest.mark.parametrize("name", list(REFUSED))
def test_a_request_refused_unread_is_answered_without_its_body(server: ServerProcess, name: str,
                                                               framing: str) -> None:
    """30 MB declared (or a chunked body begun), 64 KiB sent, the rest never: the answer comes at once, the same
    in both modes (a front end once read and forwarded the whole body first: no answer at all here)."""
    method, path, headers, status, answer = REFUSED[name]
    if framing == "chunked":
        conn = send_head(server, method, path, {**headers, "Transfer-Encoding": "chunked"})
        conn.sendall(b"%x\r\n" % SENT + b"\0" * SENT + b"\r\n")
    else:
        conn = send_head(server, method, path, {**headers, "Content-Length": str(DECLARED)})
        conn.sendall(b"\0" * SENT)
    try:
        got, body = read_response(conn)
    finally:
        reset(conn)
    assert (got, json.loads(body)) == (status, answer)


@pytest.mark.parametrize("name", UNREAD)
def test_a_request_refused_unread_gets_no_100_continue(server: ServerProcess, name: str) -> None:
    """`Expect: 100-continue` and no body sent: the refusal is the first answer (no 100 asks for a body nobody
    reads), as from the single-process server."""
    method, path, headers, status, answer = REFUSED[name]
    conn = send_head(server, method, path, {**headers, "Content-Length": str(DECLARED), "Expect": "100-continue"})
    try:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            assert chunk, data
            data += chunk
        assert data.startswith(f"HTTP/1.1 {status} ".encode()), data[:200]
    finally:
        reset(conn)


def test_a_compare_body_arrives_whole_however_it_is_framed(server: ServerProcess) -> None:
    """A compare of a ~1 MB PNG sent slowly in chunks, and with Expect: 100-continue: the answer of the body sent
    at once."""
    path = f"/v1/compare?models={STANDIN}"
    expected = httpx.post(server.base_url + path, content=IMAGE, headers={"Content-Type": "image/png"}, timeout=30)
    assert expected.status_code == 200, expected.text
    conn = send_head(server, "POST", path, {"Content-Type": "image/png", "Transfer-Encoding": "chunked"})
    try:
        for start in range(0, len(IMAGE), 200_000):
            piece = IMAGE[start:start + 200_000]
            conn.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
            time.sleep(0.05)
        conn.sendall(b"0\r\n\r\n")
        status, body = read_response(conn)
    finally:
        conn.close()
    assert status == 200 and json.loads(body)["results"][0]["predictions"] == expected.json()["results"][0][
        "predictions"]
    conn = send_head(server, "POST", path, {"Content-Type": "image/png", "Content-Length": str(len(IMAGE)),
                                            "Expect": "100-continue"})
    try:
        interim = conn.recv(65536)
        assert interim.startswith(b"HTTP/1.1 100 "), interim[:100]
        conn.sendall(IMAGE)
        status, body = read_response(conn)
    finally:
        conn.close()
    assert status == 200, body[:300]

"""Hostile inputs, round 3 (issue 25), the HTTP layer: header size however the head arrives, Host, clients that
reset pipelined connections, and the bytes of request bodies held at once.

Each test drives a real `vitserve serve` on a loopback port, once single-process and once with
`--http-workers 2` (the front ends run the same protocol, each with its share of the limits). The
server's log is checked at the end (`stopped_cleanly`): no traceback, exit 0.
"""

from __future__ import annotations

import gzip
import json
import os
import select
import signal
import socket
import struct
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from reliability_support import (
    FIGURES,
    ServerProcess,
    metric,
    png_bytes,
    proc_status_kb,
    reset_peak_rss,
    start_server,
    stopped_cleanly,
    wait_until,
)
from service_server import front_ends

MAX_HEADER = 32 * 1024
BUDGET = 24 * 1024 * 1024  # VITSERVE_MAX_BODY_BYTES_IN_FLIGHT of the servers here (each of 2 front ends: half)
HELD_BODY = 6_000_000  # what each hostile connection declares (4 fit in the budget, 2 in a front end's half)
HOSTILE = 24


@dataclass
class Served:
    srv: ServerProcess
    workers: bool

    @property
    def mode(self) -> str:
        return "workers" if self.workers else "single"

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.srv.base_url.removeprefix("http://").split(":")
        return host, int(port)

    def serving_pids(self) -> list[int]:
        """The processes that read request bodies: the server, or its front ends."""
        return front_ends(self.srv) if self.workers else [self.srv.proc.pid]


@pytest.fixture(scope="module", params=["single", "workers"])
def served(request: pytest.FixtureRequest, reliability_repository: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    workers = request.param == "workers"
    srv = start_server(reliability_repository, tmp_path_factory.mktemp(f"round3_http_{request.param}"),
                       "--models", "tiny_a", "tiny_slow", "--warmup", "one",
                       *(("--http-workers", "2") if workers else ()),
                       env={"VITSERVE_MAX_BODY_BYTES_IN_FLIGHT": str(BUDGET)})
    with stopped_cleanly(srv):
        yield Served(srv, workers)


# -- raw HTTP ---------------------------------------------------------------------------------------
def read_response(sock: socket.socket, buf: bytearray) -> tuple[int, dict[str, str], bytes]:
    """One response (status, headers, body) by Content-Length; bytes after it stay in `buf`."""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError(f"closed before a response head: {bytes(buf)[:200]!r}")
        buf += data
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {n.strip().lower(): v.strip() for n, _, v in (line.partition(":") for line in lines)}
    length = int(headers.get("content-length", "0"))
    body = bytearray(rest)
    while len(body) < length:
        data = sock.recv(65536)
        if not data:
            break
        body += data
    buf[:] = body[length:]
    return int(status_line.split(" ")[1]), headers, bytes(body[:length])


def exchange(served: Served, *pieces: bytes, answers: int = 1, gap_s: float = 0.0) -> list[tuple[int, dict, bytes]]:
    """Send `pieces` on one connection (`gap_s` apart, each its own segment) and read `answers` responses."""
    with socket.create_connection(served.address, timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i, piece in enumerate(pieces):
            if i and gap_s:
                time.sleep(gap_s)
            try:
                sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):  # answered and closed before the rest was sent
                break
        buf = bytearray()
        return [read_response(sock, buf) for _ in range(answers)]


def assert_json_error(answer: tuple[int, dict, bytes], status: int) -> None:
    got, headers, body = answer
    assert got == status, answer
    assert headers.get("content-type", "").startswith("application/json"), headers
    assert isinstance(json.loads(body).get("error"), str), body


def still_serving(served: Served) -> None:
    with httpx.Client(base_url=served.srv.base_url, timeout=30) as c:
        assert c.get("/v2/health/live").status_code == 200
        x = np.zeros((1, 3, 32, 32), np.float32).ravel().tolist()
        r = c.post("/v2/models/tiny_a/infer", json={"inputs": [{"name": "pixel_values", "shape": [1, 3, 32, 32],
                                                                 "datatype": "FP32", "data": x}]})
        assert r.status_code == 200, r.text[:300]


LIVE = b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n"


# -- 7: the header limit holds however the head arrives ----------------------------------------------
def _head_framings() -> dict[str, tuple[tuple[bytes, ...], int]]:
    """name -> (pieces sent on one connection, how many answers: the last one is the 431)."""
    pad = b"X-Pad: " + b"a" * 60_000 + b"\r\n"
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(5000))
    trickle = [b"X-T%d: %s\r\n" % (i, b"b" * 1000) for i in range(31)]  # ~31 KB in 1 KB pieces ...
    return {
        "60 KB head in one write": ((LIVE + pad + b"\r\n",), 1),
        "5000 headers": ((LIVE + many + b"\r\n",), 1),
        "large head pipelined behind a small request": ((LIVE + b"\r\n" + LIVE + pad + b"\r\n",), 2),
        "trickled, then completed by a large piece": ((LIVE, *trickle, b"X-End: " + b"c" * 30_000 + b"\r\n\r\n"), 1),
    }


@pytest.mark.parametrize("framing", list(_head_framings()))
def test_a_head_over_the_limit_gets_431_however_it_arrives(served: Served, framing: str) -> None:
    """The limit counted only what one socket read left incomplete: a head read whole (one write, 5,000
    headers), one behind another request in the same read, or one whose last piece completes it got 200."""
    pieces, answers = _head_framings()[framing]
    got = exchange(served, *pieces, answers=answers, gap_s=0.005)
    if answers == 2:
        assert got[0][0] == 200, got[0]  # the request before it is answered first
    assert_json_error(got[-1], 431)
    still_serving(served)
    FIGURES[f"round3_431_{served.mode}_{framing}"] = got[-1][0]


def test_a_head_just_under_the_limit_is_served(served: Served) -> None:
    got = exchange(served, LIVE + b"X-Pad: " + b"a" * (MAX_HEADER - 200) + b"\r\n\r\n")
    assert got[0][0] == 200, got[0]


# -- 9: Host ----------------------------------------------------------------------------------------
ROUTES = {  # direct routes (served from the protocol) and ASGI ones
    "v2 infer (direct)": (b"POST", b"/v2/models/tiny_a/infer", b"content-type: application/json\r\n", b"{}"),
    "v1 classify (direct)": (b"POST", b"/v1/models/tiny_a/classify", b"content-type: image/png\r\n", b"x"),
    "health (ASGI)": (b"GET", b"/v2/health/live", b"", b""),
    "metrics (ASGI)": (b"GET", b"/metrics", b"", b""),
    "compare (ASGI)": (b"POST", b"/v1/compare?models=tiny_a", b"content-type: image/png\r\n", b"x"),
}


def _request(route: str, host: bytes, version: bytes = b"1.1") -> bytes:
    method, path, headers, body = ROUTES[route]
    return (method + b" " + path + b" HTTP/" + version + b"\r\n" + host + headers
            + b"content-length: %d\r\n\r\n" % len(body) + body)


@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize("host", ["none", "two"])
def test_http11_without_exactly_one_host_gets_400(served: Served, route: str, host: str) -> None:
    """RFC 9112 section 3.2: 400 for an HTTP/1.1 request without Host and for any request with two."""
    hosts = {"none": b"", "two": b"Host: a\r\nHost: b\r\n"}[host]
    got = exchange(served, _request(route, hosts))
    assert_json_error(got[0], 400)
    assert "Host" in json.loads(got[0][2])["error"]
    still_serving(served)


def test_http10_without_host_is_served_and_with_two_is_refused(served: Served) -> None:
    assert exchange(served, _request("health (ASGI)", b"", b"1.0"))[0][0] == 200
    assert_json_error(exchange(served, _request("health (ASGI)", b"Host: a\r\nHost: b\r\n", b"1.0"))[0], 400)


# -- 8: a client that resets a connection with pipelined requests ------------------------------------
def _requests_total(served: Served, code: str) -> float:
    return metric(httpx.get(served.srv.base_url + "/metrics", timeout=30).text, "vitserve_requests_total",
                  model="tiny_slow", code=code)


def test_a_reset_connection_with_pipelined_requests_logs_no_traceback(served: Served) -> None:
    """12 pipelined requests, the connection reset (RST) while the second is computed: the request being
    answered wrote to the closed transport, "Exception in ASGI application" and a traceback per reset."""
    image = png_bytes(seed=3)
    request = (b"POST /v1/models/tiny_slow/classify HTTP/1.1\r\nHost: t\r\ncontent-type: image/png\r\n"
               b"content-length: %d\r\n\r\n" % len(image) + image)
    before = _requests_total(served, "499")
    resets = 4
    for _ in range(resets):
        sock = socket.create_connection(served.address, timeout=30)
        sock.sendall(request * 12)
        buf = bytearray()
        assert read_response(sock, buf)[0] == 200  # the first is answered; the second is being computed
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # RST
    assert wait_until(lambda: _requests_total(served, "499") > before, 30), "no client disconnect was counted"
    still_serving(served)
    log = served.srv.log()
    assert "Exception in ASGI application" not in log and "Traceback" not in log, log[-4000:]
    assert "pipelined request(s) not started" in log
    FIGURES[f"round3_reset_{served.mode}_499"] = _requests_total(served, "499") - before


# -- 4: bytes of request bodies in flight -----------------------------------------------------------
MULTIPART_PART = (b'--b\r\ncontent-disposition: form-data; name="image"; filename="x.png"\r\n'
                  b"content-type: image/png\r\n\r\n")


HOSTILE_HEADS = [
    (b"/v2/models/tiny_a/infer", b"content-type: application/json\r\n"),
    (b"/v2/models/tiny_a/infer", b"content-type: application/octet-stream\r\ninference-header-content-length: 100\r\n"),
    (b"/v2/models/tiny_a/infer", b"content-type: application/json\r\ncontent-encoding: gzip\r\n"),
    (b"/v1/models/tiny_a/classify", b"content-type: image/png\r\n"),
    (b"/v1/models/tiny_a/classify", b"content-type: multipart/form-data; boundary=b\r\n"),
    (b"/v1/compare?models=tiny_a", b"content-type: image/png\r\n"),
]


def held_request(route: int, length: int) -> bytes:
    """A request declaring `length` bytes, all but the last sent, on one of the paths that buffer a body
    (direct and ASGI routes, v2 JSON, binary and gzip, v1 raw and multipart, compare through FastAPI). The
    body is zeros after what keeps the route reading (a multipart part's head)."""
    path, extra = HOSTILE_HEADS[route % len(HOSTILE_HEADS)]
    prefix = MULTIPART_PART if b"multipart" in extra else b""
    return (b"POST " + path + b" HTTP/1.1\r\nHost: t\r\n" + extra + b"content-length: %d\r\n\r\n" % length
            + prefix + b"\x00" * (length - 1 - len(prefix)))


def _rss_kb(served: Served) -> int:
    return sum(proc_status_kb(pid, "VmHWM") for pid in served.serving_pids())


def _answer_or_none(sock: socket.socket, timeout: float) -> int | None:
    """The status a connection was answered with, None if it was not answered within `timeout`."""
    sock.settimeout(timeout)
    try:
        return read_response(sock, bytearray())[0]
    except TimeoutError:
        return None
    except (ConnectionError, OSError):
        return 0


def test_bodies_held_at_once_are_bounded_and_the_excess_gets_503(served: Served) -> None:
    """Connections each holding a body one byte short of complete added up without bound (28 x 30 MB:
    +760 MB). Now the declared bytes are held against a budget: past it a connection gets 503 +
    Retry-After before its body is read, memory stays near the budget, and the budget comes back."""
    pids = served.serving_pids()
    for pid in pids:
        reset_peak_rss(pid)
    before_kb = _rss_kb(served)
    with ExitStack() as stack:
        socks = []
        for i in range(HOSTILE):
            sock = stack.enter_context(socket.create_connection(served.address, timeout=30))
            socks.append(sock)
            try:
                sock.sendall(held_request(i, HELD_BODY))
            except (BrokenPipeError, ConnectionResetError):
                pass  # refused and closed before the body was all sent (the 503 is read below)
        time.sleep(1.0)  # the server reads what is in the socket buffers
        growth_mb = (_rss_kb(served) - before_kb) / 1024
        # a good request fits beside the held bodies, and health answers
        still_serving(served)
        # the refused have their 503; the others get their last byte, complete, and are answered (4xx: not valid)
        answered = set(select.select(socks, [], [], 0)[0])
        for sock in socks:
            if sock not in answered:
                sock.sendall(b"\x00")
        statuses = [_answer_or_none(sock, 30) for sock in socks]
    refused = [s for s in statuses if s == 503]
    admitted = [s for s in statuses if s != 503]
    fit = BUDGET // HELD_BODY
    assert 1 <= len(admitted) <= fit, statuses
    assert all(s is not None and 400 <= s < 500 for s in admitted), statuses
    assert len(refused) >= HOSTILE - fit, statuses
    assert growth_mb < BUDGET / 2**20 + 40, f"memory grew {growth_mb:.0f} MB holding {len(admitted)} bodies"
    # nothing leaked: with the hostile connections closed, bodies up to the whole budget pass again
    big = png_bytes((1200, 1200), seed=5)
    for _ in range(6):
        r = httpx.post(served.srv.base_url + "/v1/models/tiny_a/classify", content=big,
                       headers={"content-type": "image/png"}, timeout=30)
        assert r.status_code == 200, r.text[:300]
    FIGURES[f"round3_body_budget_{served.mode}"] = {
        "connections": HOSTILE, "declared_mb": HELD_BODY / 1e6, "admitted": len(admitted),
        "refused_503": len(refused), "rss_growth_mb": round(growth_mb)}


def _share(served: Served) -> int:
    return -(-BUDGET // 2) if served.workers else BUDGET


@pytest.mark.parametrize("route", range(len(HOSTILE_HEADS)))
def test_every_body_path_holds_its_budget_until_answered(served: Served, route: int) -> None:
    """One body one byte short of complete holds nearly the whole budget (of the front end it reached): the
    next body is refused before it is read (no 100-continue) with 503, Retry-After and a JSON error; once
    the first is answered the budget is back."""
    held = _share(served) - 100_000
    expect = (b"POST /v2/models/tiny_a/infer HTTP/1.1\r\nHost: t\r\ncontent-type: application/json\r\n"
              b"expect: 100-continue\r\ncontent-length: %d\r\n\r\n" % 1_000_000)
    with pinned(served), socket.create_connection(served.address, timeout=30) as sock:
        sock.sendall(held_request(route, held))
        time.sleep(0.5)
        got = exchange(served, expect)[0]
        assert_json_error(got, 503)
        assert got[1].get("retry-after") == "1" and got[1].get("connection") == "close", got[1]
        sock.sendall(b"\x00")
        first = read_response(sock, bytearray())[0]
        assert 400 <= first < 500, first
        # the budget is back (no leak): a body close to all of it passes
        body = b"\x00" * (_share(served) - 100_000)
        r = httpx.post(served.srv.base_url + "/v1/models/tiny_a/classify", content=body, timeout=30,
                       headers={"content-type": "image/png"})
        assert r.status_code == 415, r.text[:300]  # read whole and refused by the decoder, not by the budget
    still_serving(served)


def test_small_bodies_are_served_while_large_ones_hold_the_whole_budget(served: Served) -> None:
    """Bodies that hold the budget to its last byte refuse the next large body, never a small one (up to
    64 KiB, bounded by the connection cap instead): good clients with ordinary images keep being served."""
    with pinned(served), socket.create_connection(served.address, timeout=30) as sock:
        sock.sendall(held_request(0, _share(served) - 10))
        time.sleep(0.5)
        assert_json_error(exchange(served, held_request(1, 100_000) + b"\x00")[0], 503)
        small = png_bytes((120, 120), seed=3)
        assert 10_000 < len(small) <= 64 * 1024, len(small)
        with httpx.Client(base_url=served.srv.base_url, timeout=30) as client:
            for _ in range(3):
                r = client.post("/v1/models/tiny_a/classify", content=small, headers={"content-type": "image/png"})
                assert r.status_code == 200, r.text[:300]
        sock.sendall(b"\x00")
        assert 400 <= read_response(sock, bytearray())[0] < 500
    still_serving(served)


@contextmanager
def pinned(served: Served) -> Iterator[None]:
    """With --http-workers, every new connection goes to front end 0 (the other is stopped meanwhile)."""
    if not served.workers:
        yield
        return
    other = sorted(served.serving_pids(), key=lambda pid: Path(f"/proc/{pid}/comm").read_text())[1]
    os.kill(other, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(other, signal.SIGCONT)


def test_a_chunked_body_is_held_as_it_arrives_and_refused_past_the_budget(served: Served) -> None:
    """A body of unknown length (chunked) holds its bytes as they arrive: with the budget held by other
    requests it is answered 503 mid-body, and the request being answered sees its client leave."""
    piece = b"\x00" * 65536
    chunk = b"%x\r\n" % len(piece) + piece + b"\r\n"
    with pinned(served), ExitStack() as stack:
        for _ in range(BUDGET // HELD_BODY // (2 if served.workers else 1)):
            sock = stack.enter_context(socket.create_connection(served.address, timeout=30))
            sock.sendall(held_request(0, HELD_BODY))
        time.sleep(0.5)
        sock = stack.enter_context(socket.create_connection(served.address, timeout=30))
        sock.sendall(b"POST /v2/models/tiny_a/infer HTTP/1.1\r\nHost: t\r\ncontent-type: application/json\r\n"
                     b"transfer-encoding: chunked\r\n\r\n")
        sent = 0
        try:
            while sent < 8 * HELD_BODY and not select.select([sock], [], [], 0)[0]:  # until an answer comes
                sock.sendall(chunk)
                sent += len(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass
        got = _answer_or_none(sock, 30)
    assert got == 503, (got, sent)
    assert sent < BUDGET + 8 * 2**20, sent  # refused on its way, not after the body limit
    still_serving(served)


@pytest.mark.parametrize("path", ["/v2/models/tiny_a/infer", "/v2/repository/index"])
def test_a_chunked_body_answered_before_its_end_leaves_nothing_held(served: Served, path: str) -> None:
    """A chunked body past the body limit is answered 413 on its way; what it sent after that answer was
    taken from the budget and never given back, until every body got 503."""
    piece = b"\x00" * 65536
    chunk = b"%x\r\n" % len(piece) + piece + b"\r\n"
    head = (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: t\r\ncontent-type: application/json\r\n"
            b"transfer-encoding: chunked\r\n\r\n")
    with pinned(served):
        for _ in range(2):
            with socket.create_connection(served.address, timeout=30) as sock:
                sock.sendall(head)
                try:
                    for _ in range(40 * 2**20 // len(piece)):  # past the 32 MiB body limit
                        sock.sendall(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                assert _answer_or_none(sock, 30) == 413
        # nothing is held: a body of nearly the whole budget (of this front end) is read
        r = httpx.post(served.srv.base_url + "/v1/models/tiny_a/classify", content=b"\x00" * (_share(served) - 100_000),
                       headers={"content-type": "image/png"}, timeout=30)
    assert r.status_code == 415, r.text[:300]


def test_gzip_bodies_hold_their_sent_size_and_inflate_within_the_body_limit(served: Served) -> None:
    """A gzip body is held at its compressed size; what it inflates to is bounded by the body limit (413)."""
    bomb = gzip.compress(b" " * (40 * 2**20))  # inflates past the 32 MiB body limit
    r = httpx.post(served.srv.base_url + "/v2/models/tiny_a/infer", content=bomb, timeout=30,
                   headers={"content-type": "application/json", "content-encoding": "gzip"})
    assert r.status_code == 413, r.text[:300]

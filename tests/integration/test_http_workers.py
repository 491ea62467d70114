"""`vitserve serve --http-workers 2` through real HTTP: one engine process, two front ends on one port.

The front ends take turns at accepting (service/workers/accept.py); a test pins requests to one front
end by stopping the other (SIGSTOP: it accepts nothing until SIGCONT, and its sibling stops waiting for
it after a few milliseconds per connection). Front ends are the supervisor's
children named `vitserve-fe<i>` (/proc/<pid>/comm), the engine `vitserve-engine`.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from service_server import ServerProcess, children, front_ends, start_server
from tiny_repository import TinyModel, add_version, build_tiny_repository

from service.runtimes.standin import standin_outputs, write_standin_model

STANDIN = "standin"
WIDE = "standin_wide"
SIZE = 32


@pytest.fixture(scope="module")
def workers_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = build_tiny_repository(tmp_path_factory.mktemp("workers_repo"),
                                 [TinyModel("tiny_a"), TinyModel("tiny_b", num_classes=5, versions=[1, 2])])
    write_standin_model(root, STANDIN, size=SIZE, num_classes=10, max_batch_size=4)
    # max batch 64: a front end's groups carry up to 8 requests (service/workers/client.py)
    write_standin_model(root, WIDE, size=SIZE, num_classes=10, max_batch_size=64)
    return root


@contextmanager
def running(repository: Path, tmp: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[ServerProcess]:
    server = start_server(repository, tmp, "--warmup", "one", *args, env=env)
    try:
        yield server
    finally:
        code = server.stop(timeout=60)
        assert code == 0, f"server exited with {code}:\n{server.log()[-3000:]}"


@pytest.fixture(scope="module")
def single(workers_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running(workers_repository, tmp_path_factory.mktemp("single")) as server:
        yield server


@pytest.fixture(scope="module")
def multi(workers_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running(workers_repository, tmp_path_factory.mktemp("multi"), "--http-workers", "2") as server:
        yield server


@contextmanager
def only(server: ServerProcess, index: int) -> Iterator[None]:
    """Every new connection goes to front end `index`: the others are stopped meanwhile."""
    others = [pid for i, pid in enumerate(front_ends(server)) if i != index]
    for pid in others:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in others:
            os.kill(pid, signal.SIGCONT)


def post(server: ServerProcess, path: str, **kwargs: object) -> httpx.Response:
    """A request on a connection of its own (so it goes to whichever front end accepts now)."""
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        return client.post(path, **kwargs)  # type: ignore[arg-type]


def infer_body(x: np.ndarray) -> dict[str, object]:
    return {"inputs": [{"name": "pixel_values", "shape": list(x.shape), "datatype": "FP32",
                        "data": x.ravel().tolist()}]}


def binary_infer(x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    header = (b'{"inputs":[{"name":"pixel_values","shape":[%d,3,%d,%d],"datatype":"FP32",'
              b'"parameters":{"binary_data_size":%d}}],"outputs":[{"name":"logits","parameters":{"binary_data":true}}]}'
              % (x.shape[0], SIZE, SIZE, x.nbytes))
    return header + x.tobytes(), {"Inference-Header-Content-Length": str(len(header)),
                                  "Content-Type": "application/octet-stream"}


def binary_logits(r: httpx.Response) -> np.ndarray:
    n = int(r.headers["inference-header-content-length"])
    return np.frombuffer(r.content[n:], dtype=np.float32)


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def requests_200(server: ServerProcess, model: str) -> float:
    for line in httpx.get(server.base_url + "/metrics").text.splitlines():
        if line.startswith(f'vitserve_requests_total{{code="200",model="{model}",protocol="http"}}'):
            return float(line.split()[-1])
    return 0.0


def established(pid: int, port: int) -> int:
    """TCP connections process `pid` holds on local port `port`, established (from /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                inodes.add(fields[9])
    held = 0
    for fd in os.scandir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(fd.path)
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            held += 1
    return held


def test_a_burst_of_new_connections_spreads_evenly_across_the_front_ends(multi: ServerProcess) -> None:
    """Connections queued while neither front end runs are taken in turns once both run again: the one
    that wakes first does not take them all (as the event loop's own listener does)."""
    port = int(multi.base_url.rsplit(":", 1)[1])
    pids = front_ends(multi)
    deadline = time.monotonic() + 30
    while not all(re.search(rf"\[front end {i} \d+\]: accepting connections", multi.log()) for i in range(2)):
        assert time.monotonic() < deadline, "a front end never started accepting"
        time.sleep(0.05)
    request = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
    conns = []
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        for _ in range(64):  # the kernel completes each handshake; they wait in the accept queue
            conn = socket.create_connection(("127.0.0.1", port), timeout=30)
            conn.sendall(request)
            conns.append(conn)
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    try:
        for conn in conns:  # each answered, and kept open (keep-alive)
            assert conn.recv(65536).startswith(b"HTTP/1.1 200"), "a queued connection was not answered"
        held = [established(pid, port) for pid in pids]
        assert sum(held) >= 64, held
        assert min(held) >= 64 // 4, f"connections per front end: {held}"
    finally:
        for conn in conns:
            conn.close()


def _http_response(conn: socket.socket) -> tuple[int, bytes]:
    """(status, body) of one HTTP/1.1 response with a Content-Length, read from a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        assert chunk, "connection closed before a response"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?im)^content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        chunk = conn.recv(65536)
        assert chunk, "connection closed mid-body"
        body += chunk
    return int(head.split(b" ", 2)[1]), body[:length]


def _engine_counts(server: ServerProcess, model: str) -> tuple[int, float]:
    """(successful requests in the engine's statistics, observations in its queue-time histogram)."""
    stats = httpx.get(server.base_url + f"/v2/models/{model}/stats").json()["model_stats"][0]
    queued = 0.0
    for line in httpx.get(server.base_url + "/metrics").text.splitlines():
        if line.startswith(f'vitserve_queue_duration_seconds_count{{model="{model}",version="1"}}'):
            queued = float(line.split()[-1])
    return stats["inference_stats"]["success"]["count"], queued


def test_a_burst_read_in_one_turn_is_sent_in_groups_and_each_request_gets_its_own_answer(
        multi: ServerProcess) -> None:
    """Requests queued while the front ends are stopped are read in a few turns of their loops, the load under
    which a front end's submits share engine requests (groups: tests/unit/service/test_service_workers_groups.py
    shows how they form): each answer is still the stand-in's gather of its own input, and the engine's
    statistics and queue-time histogram count every request."""
    port = int(multi.base_url.rsplit(":", 1)[1])
    pids = front_ends(multi)
    before = _engine_counts(multi, WIDE)
    # distinct inputs within the model's value range (a normalised pixel's)
    images = [np.full((1, 3, SIZE, SIZE), (i - 16) / 16, np.float32) + np.arange(SIZE, dtype=np.float32) / 1024
              for i in range(32)]
    conns = []
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        for x in images:  # each on a connection of its own, waiting in the accept queue with its request
            body, headers = binary_infer(x)
            head = (f"POST /v2/models/{WIDE}/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
                    + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode()
            conn = socket.create_connection(("127.0.0.1", port), timeout=30)
            conn.sendall(head + body)
            conns.append(conn)
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    try:
        for x, conn in zip(images, conns, strict=True):
            status, body = _http_response(conn)
            assert status == 200, body[:300]
            n = len(body) - 10 * 4  # the JSON header, then the logits
            assert np.array_equal(np.frombuffer(body[n:], np.float32).reshape(1, 10), standin_outputs(x, 10))
    finally:
        for conn in conns:
            conn.close()
    success, queued = _engine_counts(multi, WIDE)
    assert (success - before[0], queued - before[1]) == (32, 32)  # requests counted as requests, not groups


def test_each_front_end_answers_bit_equal_to_the_single_process_server(
        single: ServerProcess, multi: ServerProcess) -> None:
    rng = np.random.default_rng(3)
    # eighths: every partial sum is exact, so the logits do not depend on the summation order (ONNX Runtime's
    # vectorised reduction follows the input buffer's alignment: a request body's vs a shared-memory block's)
    x = (rng.integers(-8, 8, (2, 3, SIZE, SIZE)) / 8).astype(np.float32)
    expected = {
        "json": post(single, "/v2/models/tiny_a/infer", json=infer_body(x)).json()["outputs"][0]["data"],
        "binary": binary_logits(post(single, "/v2/models/tiny_b/infer", content=binary_infer(x)[0],
                                     headers=binary_infer(x)[1])),
        "classify": post(single, "/v1/models/tiny_a/classify?top_k=3", content=png(1),
                         headers={"Content-Type": "image/png"}).json()["predictions"],
    }
    before = requests_200(multi, STANDIN)
    for index in range(2):
        with only(multi, index):
            r = post(multi, "/v2/models/tiny_a/infer", json=infer_body(x))
            assert r.status_code == 200, r.text
            assert r.json()["outputs"][0]["data"] == expected["json"]  # bit-equal: same session, same numbers
            body, headers = binary_infer(x)
            r = post(multi, "/v2/models/tiny_b/infer", content=body, headers=headers)
            assert r.status_code == 200 and np.array_equal(binary_logits(r), expected["binary"])
            r = post(multi, "/v1/models/tiny_a/classify?top_k=3", content=png(1), headers={"Content-Type": "image/png"})
            assert r.status_code == 200 and r.json()["predictions"] == expected["classify"]
            for _ in range(3):  # the stand-in's outputs are a gather of the inputs: checkable exactly
                r = post(multi, f"/v2/models/{STANDIN}/infer", content=body, headers=headers)
                assert r.status_code == 200
                assert np.array_equal(binary_logits(r).reshape(2, 10), standin_outputs(x, 10))
    # each front end counted its own requests: /metrics (from either) shows the total
    assert requests_200(multi, STANDIN) == before + 6
    with only(multi, 1):
        assert requests_200(multi, STANDIN) == before + 6
    stats = httpx.get(multi.base_url + f"/v2/models/{STANDIN}/stats").json()["model_stats"][0]
    assert stats["inference_stats"]["success"]["count"] >= 6


def timeless(doc: object) -> object:
    """A JSON document without the load times (two servers never load in the same time)."""
    if isinstance(doc, dict):
        return {k: timeless(v) for k, v in doc.items() if k != "load_seconds"}
    if isinstance(doc, list):
        return [timeless(v) for v in doc]
    return doc


def test_every_endpoint_and_every_error_is_the_single_process_servers(
        single: ServerProcess, multi: ServerProcess) -> None:
    gets = ["/v1/models", "/v1/models/tiny_b", "/v2", "/v2/models/tiny_b", "/v2/models/tiny_b/versions/2/config",
            "/v2/models/tiny_a/ready", "/v2/health/ready", "/v2/health/live", "/openapi.json", "/v2/models/nope"]
    bad = [
        ("/v2/models/tiny_a/infer", {"content": b"not json"}),
        ("/v2/models/tiny_a/infer", {"json": infer_body(np.zeros((1, 3, 8, 8), np.float32))}),
        ("/v2/models/tiny_a/infer", {"content": json.dumps(infer_body(np.full((1, 3, SIZE, SIZE), np.nan,
                                                                              np.float32)))}),
        ("/v2/models/nope/infer", {"json": {}}),
        ("/v2/models/tiny_b/versions/7/infer", {"json": {}}),
        ("/v1/models/tiny_a/classify", {"content": b"not an image", "headers": {"Content-Type": "image/png"}}),
        ("/v1/models/tiny_a/classify?top_k=0", {"content": png(2), "headers": {"Content-Type": "image/png"}}),
        ("/v2/repository/models/tiny_a/unload", {}),
    ]
    for index in range(2):
        with only(multi, index):
            for path in gets:
                a, b = httpx.get(single.base_url + path), httpx.get(multi.base_url + path)
                assert (a.status_code, timeless(a.json())) == (b.status_code, timeless(b.json())), path
            for path, kwargs in bad:
                a, b = post(single, path, **kwargs), post(multi, path, **kwargs)
                assert 400 <= b.status_code < 500, (path, b.status_code, b.text)
                assert (a.status_code, a.json()) == (b.status_code, b.json()), path
    # repository control from a front end acts on the engine, and every front end sees it
    key = {"Authorization": "Bearer integration-key-0123"}
    with only(multi, 0):
        assert post(multi, "/v2/repository/models/tiny_b/unload", headers=key).status_code == 200
    with only(multi, 1):
        assert post(multi, "/v2/models/tiny_b/infer", json=infer_body(np.zeros((1, 3, SIZE, SIZE), np.float32))
                    ).status_code == 503
        assert post(multi, "/v2/repository/models/tiny_b/load", headers=key).status_code == 200
    with only(multi, 0):
        r = post(multi, "/v2/models/tiny_b/infer", json=infer_body(np.zeros((1, 3, SIZE, SIZE), np.float32)))
        assert r.status_code == 200, r.text


_FROZEN = re.compile(r"vitserve\.gc(?: \[(?P<role>[a-z ]+\d?) \d+\])?: (?P<n>\d+) objects frozen out of "
                     r"collections after start-up")


def test_every_serving_process_freezes_what_its_start_up_left_alive(
    single: ServerProcess, multi: ServerProcess,
) -> None:
    """service/gc_policy.py runs in each process entry point: the single-process server, the engine, each front
    end (a front end once the engine's table says the initial load is done)."""
    deadline = time.monotonic() + 10
    while True:
        found = {(m["role"] or "single"): int(m["n"])
                 for log in (single.log(), multi.log()) for m in _FROZEN.finditer(log)}
        if len(found) == 4 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert set(found) == {"single", "engine", "front end 0", "front end 1"}, found
    assert all(n > 10_000 for n in found.values()), found  # the modules, the app and the models' objects


def test_versions_swapped_under_load_lose_no_request_in_any_front_end(tmp_path: Path) -> None:
    """The engine pushes its new model table before the old version refuses: a front end retries the new one."""
    model = TinyModel("tiny_b", num_classes=5, versions=[1, 2])
    root = build_tiny_repository(tmp_path / "repo", [model])
    body = infer_body(np.zeros((1, 3, SIZE, SIZE), np.float32))

    async def main() -> tuple[dict[int, int], set[str]]:
        codes: dict[int, int] = {}
        versions: set[str] = set()
        limits = httpx.Limits(max_connections=16, max_keepalive_connections=0)  # both front ends take requests
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30, limits=limits) as client:
            stop = time.monotonic() + 3.5

            async def load() -> None:
                while time.monotonic() < stop:
                    r = await client.post("/v2/models/tiny_b/infer", json=body)
                    codes[r.status_code] = codes.get(r.status_code, 0) + 1
                    if r.status_code == 200:
                        versions.add(r.json()["model_version"])

            async def swap() -> None:
                for version in (3, 4):
                    await asyncio.sleep(1.0)
                    add_version(root, model, version)

            await asyncio.gather(*(load() for _ in range(16)), swap())
        return codes, versions

    with running(root, tmp_path, "--http-workers", "2", "--poll-interval-s", "0.2") as server:
        codes, versions = asyncio.run(main())
    assert set(codes) == {200}, codes
    assert {"3", "4"} <= versions


async def _fire(server: ServerProcess, n: int) -> list[asyncio.Task[httpx.Response]]:
    """`n` stand-in requests, each on its own connection, sent now."""
    x = np.ones((1, 3, SIZE, SIZE), np.float32)
    body, headers = binary_infer(x)
    client = httpx.AsyncClient(base_url=server.base_url, timeout=60,
                               limits=httpx.Limits(max_connections=n, max_keepalive_connections=0))
    tasks = [asyncio.create_task(client.post(f"/v2/models/{STANDIN}/infer", content=body, headers=headers))
             for _ in range(n)]
    await asyncio.sleep(0.2)  # on their way; the slow stand-in keeps them in flight
    return tasks


@pytest.fixture(scope="module")
def slow_multi(workers_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Two front ends on the stand-in alone, 300 ms per batch of 4: requests stay in flight a while.
    The last test of the module stops it (SIGTERM) itself."""
    with running(workers_repository, tmp_path_factory.mktemp("slow"), "--http-workers", "2", "--models", STANDIN,
                 env={"VITSERVE_STANDIN_BATCH_MS": "300"}) as server:
        yield server


def test_a_killed_front_end_is_replaced_and_the_others_requests_complete(slow_multi: ServerProcess) -> None:
    server = slow_multi
    victim, survivor = front_ends(server)

    async def main() -> list[object]:
        with only(server, 1):
            tasks = await _fire(server, 8)  # in flight in the survivor
        assert not all(t.done() for t in tasks)
        os.kill(victim, signal.SIGKILL)
        return await asyncio.gather(*tasks, return_exceptions=True)

    outcomes = asyncio.run(main())
    assert all(isinstance(o, httpx.Response) and o.status_code == 200 for o in outcomes), outcomes
    replacement, still = front_ends(server)
    assert replacement != victim and still == survivor
    with only(server, 0):  # the replacement serves
        body, headers = binary_infer(np.ones((1, 3, SIZE, SIZE), np.float32))
        r = post(server, f"/v2/models/{STANDIN}/infer", content=body, headers=headers)
        assert r.status_code == 200, r.text
    assert "front end 0" in server.log() and "replacing it" in server.log()


#: CPU-spinning processes beside the server (at least this many; one per core beyond it)
BURNERS = 3
#: the server's processes run this much nicer than the burners: a busy host starves them, as a test suite
#: running beside the server does
LOADED_NICE = 5


@contextmanager
def host_loaded(server: ServerProcess) -> Iterator[None]:
    """The host busy on purpose for the block: a CPU burner per core (at least `BURNERS`) at normal priority, the
    server's processes (and the front ends the supervisor starts later, which inherit it) niced below them."""
    for pid in [server.proc.pid, *children(server).values()]:
        os.setpriority(os.PRIO_PROCESS, pid, LOADED_NICE)
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
               for _ in range(max(BURNERS, os.cpu_count() or 1))]
    try:
        yield
    finally:
        for burner in burners:
            burner.kill()
        for burner in burners:
            burner.wait(10)


def gone(pid: int, timeout: float = 10.0) -> None:
    """Wait until a killed process is dead (a zombie not yet reaped, or reaped): it accepts nothing more."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return
        if stat[stat.rfind(")") + 2] in "ZX":
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} still alive {timeout} s after SIGKILL")


def live_on_a_new_connection(port: int, timeout: float) -> str:
    """GET /v2/health/live on a connection of its own: the answer's status, or the error's name (e.g.
    ConnectionRefusedError: no socket listens on the port)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
            conn.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            status, _ = _http_response(conn)
            return str(status)
    except OSError as exc:
        return type(exc).__name__
    except AssertionError:  # closed before an answer
        return "closed"


def new_connections_for(port: int, seconds: float, threads: int = 8) -> collections.Counter[str]:
    """`live_on_a_new_connection` over and over from `threads` threads for `seconds`: each outcome's count."""
    outcomes: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def hammer() -> None:
        while time.monotonic() < end:
            outcome = live_on_a_new_connection(port, timeout=30)
            with lock:
                outcomes[outcome] += 1

    workers = [threading.Thread(target=hammer) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    return outcomes


def test_the_port_accepts_while_a_killed_front_end_is_replaced_on_a_loaded_host(
        workers_repository: Path, tmp_path: Path) -> None:
    """Issue 25 item 10: with the host busy, SIGKILL of one front end was reported to leave the port refusing
    new connections (ConnectionRefusedError) for seconds while the sibling lived. The supervisor holds the one
    listening socket for the server's life and every front end (a replacement too) inherits it, so the kernel
    queues a connection whatever the front ends do: here every new connection during the replacement is
    answered, and even with both front ends killed at once connections queue and are answered by the
    replacements (none refused)."""
    with running(workers_repository, tmp_path, "--http-workers", "2", "--models", STANDIN) as server:
        port = int(server.base_url.rsplit(":", 1)[1])
        victim, survivor = front_ends(server)
        with host_loaded(server):
            os.kill(victim, signal.SIGKILL)
            gone(victim)
            during = new_connections_for(port, seconds=3.0)  # the replacement starts meanwhile (slowly)
            assert set(during) == {"200"}, during
            pids = front_ends(server)
            assert pids[0] != victim and pids[1] == survivor
            for pid in pids:  # no front end left at all: the port still queues
                os.kill(pid, signal.SIGKILL)
            for pid in pids:
                gone(pid)
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                queued = list(pool.map(lambda _: live_on_a_new_connection(port, timeout=60), range(8)))
        assert queued == ["200"] * 8, queued


def test_deadlines_and_disconnects_reach_the_engines_queue(slow_multi: ServerProcess) -> None:
    server = slow_multi
    body = infer_body(np.ones((1, 3, SIZE, SIZE), np.float32))

    async def main() -> tuple[list[object], httpx.Response]:
        with only(server, 0):
            busy = await _fire(server, 12)  # three batches of 300 ms ahead
            async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
                late = await client.post(f"/v2/models/{STANDIN}/infer",
                                         json={**body, "parameters": {"timeout": 100_000}})  # 100 ms
                with pytest.raises(httpx.ReadTimeout):  # a client that gives up: its request leaves the queue
                    await client.post(f"/v2/models/{STANDIN}/infer", json=body, timeout=0.2)
        return await asyncio.gather(*busy, return_exceptions=True), late

    before = httpx.get(server.base_url + f"/v2/models/{STANDIN}/stats").json()["model_stats"][0]["inference_count"]
    busy, late = asyncio.run(main())
    assert all(isinstance(r, httpx.Response) and r.status_code == 200 for r in busy), busy
    assert late.status_code == 504, late.text  # expired in the engine's queue, never computed
    time.sleep(0.7)  # longer than a batch: had the abandoned request stayed queued, it would be computed by now
    after = httpx.get(server.base_url + f"/v2/models/{STANDIN}/stats").json()["model_stats"][0]["inference_count"]
    assert after - before == 12  # neither the expired nor the abandoned request was computed


def test_sigterm_drains_every_front_end_and_loses_nothing(slow_multi: ServerProcess) -> None:
    server = slow_multi

    async def main() -> list[object]:
        groups = []
        for index in range(2):  # requests in flight in both front ends
            with only(server, index):
                groups.append(await _fire(server, 8))
        assert not any(all(t.done() for t in group) for group in groups)
        server.proc.send_signal(signal.SIGTERM)
        return await asyncio.gather(*groups[0], *groups[1], return_exceptions=True)

    outcomes = asyncio.run(main())
    code = server.stop(timeout=60)
    assert all(isinstance(o, httpx.Response) and o.status_code == 200 for o in outcomes), [
        getattr(o, "status_code", o) for o in outcomes]
    assert code == 0, server.log()[-3000:]
    assert "engine stopped" in server.log()

"""Hostile inputs, round 3 (issue 25), the v2 wire: item 3 (a compressed answer was encoded and gzipped on the
event loop, and its size was the client's to choose through the echoed id) and item 11 (integer parameters out
of range were taken; a compressed body with bytes after its end was taken).

Each test runs against a real `vitserve serve` on a loopback port in each serving mode: the protocol's direct
routes, ASGI only (VITSERVE_DIRECT_ROUTES=false), and `--http-workers 2`, where a front end parses, encodes and
compresses v2 infer itself.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from reliability_support import (
    FIGURES,
    ServerProcess,
    TinyModel,
    assert_clean_error,
    build_tiny_repository,
    start_server,
    stopped_cleanly,
)
from service_server import front_ends

from service.runtimes.standin import standin_outputs, write_standin_model

MODES = ["direct", "asgi", "workers"]
#: a stand-in model whose JSON answer at its max batch is megabytes (64 x 6144 numbers): gzip takes a while
BIG, BIG_CLASSES, BIG_BATCH = "standin_big", 6144, 64
#: CPU a thread other than the event loop's spends before a probe is sent: the answer is being encoded or
#: compressed there (nothing else of a request costs that much off the loop)
OFF_LOOP_WORK_S = 0.05
MAX_ID_CHARS = 1024


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = build_tiny_repository(tmp_path_factory.mktemp("round3_v2_repo"), [TinyModel("tiny_a")])
    write_standin_model(root, BIG, size=32, num_classes=BIG_CLASSES, max_batch_size=BIG_BATCH)
    return root


@dataclass
class Served:
    mode: str
    server: ServerProcess

    @property
    def base_url(self) -> str:
        return self.server.base_url

    @contextmanager
    def pinned(self) -> Iterator[int]:
        """Every new connection goes to one serving process, whose pid is yielded (a front end: the others are
        stopped meanwhile)."""
        if self.mode != "workers":
            yield self.server.proc.pid
            return
        front = front_ends(self.server)
        for pid in front[1:]:
            os.kill(pid, signal.SIGSTOP)
        try:
            yield front[0]
        finally:
            for pid in front[1:]:
                os.kill(pid, signal.SIGCONT)


@pytest.fixture(scope="module", params=MODES)
def served(request: pytest.FixtureRequest, repository: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Served]:
    mode = request.param
    args = ["--http-workers", "2"] if mode == "workers" else []
    env = {"VITSERVE_DIRECT_ROUTES": "false"} if mode == "asgi" else None
    srv = start_server(repository, tmp_path_factory.mktemp(f"round3_v2_{mode}"), "--warmup", "one", *args, env=env)
    with stopped_cleanly(srv):
        yield Served(mode, srv)


def off_loop_cpu_s(pid: int) -> float:
    """CPU seconds of every thread of `pid` but its main one, the event loop's."""
    ticks = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        if task.name == str(pid):
            continue
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def binary_request(x: np.ndarray, **header: Any) -> tuple[bytes, dict[str, str]]:
    """A v2 binary-extension request of FP32 `x` with JSON outputs; `header` adds to (or replaces) its fields."""
    doc: dict[str, Any] = {"inputs": [{"name": "pixel_values", "shape": list(x.shape), "datatype": "FP32",
                                       "parameters": {"binary_data_size": x.nbytes}}],
                           "parameters": {"binary_data_output": False}}
    doc.update(header)
    head = json.dumps(doc).encode()
    return head + x.astype(np.float32).tobytes(), {
        "content-type": "application/octet-stream", "inference-header-content-length": str(len(head))}


def pixels(n: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, 32, 32), dtype=np.float32)


# -- 3: the echoed id ------------------------------------------------------------------------------
@pytest.mark.parametrize("model, id_chars", [("tiny_a", MAX_ID_CHARS), ("tiny_a", MAX_ID_CHARS + 1),
                                             (BIG, 6_000_000)])
def test_the_echoed_request_id_is_bounded(served: Served, model: str, id_chars: int) -> None:
    """The request id is echoed in the answer (and compressed with it): 6 MB of it were taken and echoed (the
    JSON limit of a 64-image 32-px model). Up to 1024 characters are echoed; a longer one gets a short 400."""
    rid = "i" * id_chars
    body, headers = binary_request(pixels(), id=rid)
    with httpx.Client(base_url=served.base_url, timeout=120) as c:
        r = c.post(f"/v2/models/{model}/infer", content=body, headers={**headers, "accept-encoding": "gzip"})
    if id_chars <= MAX_ID_CHARS:
        assert r.status_code == 200, r.text[:300]
        assert r.json()["id"] == rid
        return
    assert_clean_error(r, [400])
    assert "id" in r.json()["error"] and str(MAX_ID_CHARS) in r.json()["error"], r.text[:300]
    assert len(r.content) < 1024


# -- 3: compression off the event loop --------------------------------------------------------------
def test_a_large_gzip_answer_is_compressed_off_the_event_loop(served: Served) -> None:
    """A megabytes-long JSON answer was encoded and gzipped on the event loop: every other request on it, health
    probes included, waited for the whole of it. Now a thread other than the loop's does that work: once it has
    worked a while on the answer, a health probe is answered while the answer is still being prepared.

    On the old code no other thread works on the answer (the wait below ends with the answer) and a probe sent
    meanwhile waits for it; nothing here depends on how fast the host is."""
    x = pixels(BIG_BATCH, seed=3)
    body, headers = binary_request(x)
    result: dict[str, httpx.Response] = {}
    done = threading.Event()

    def big() -> None:
        try:
            with httpx.Client(base_url=served.base_url, timeout=300) as c:
                result["answer"] = c.post(f"/v2/models/{BIG}/infer", content=body,
                                          headers={**headers, "accept-encoding": "gzip"})
        finally:
            done.set()

    with served.pinned() as pid:
        before = off_loop_cpu_s(pid)
        worker = threading.Thread(target=big)
        worker.start()
        try:
            while off_loop_cpu_s(pid) - before < OFF_LOOP_WORK_S and not done.is_set():
                time.sleep(0.005)
            off_loop = not done.is_set()
            sent = time.perf_counter()
            probe = httpx.get(served.base_url + "/v2/health/live", timeout=120)
            probe_s = time.perf_counter() - sent
            answered_first = not done.is_set()
        finally:
            worker.join(300)
    answer = result["answer"]
    assert answer.status_code == 200, answer.text[:300]
    assert answer.headers["content-encoding"] == "gzip"
    data = np.asarray(answer.json()["outputs"][0]["data"], dtype=np.float32)
    assert np.array_equal(data.reshape(BIG_BATCH, BIG_CLASSES), standin_outputs(x, BIG_CLASSES))
    assert off_loop, "the answer was encoded and compressed on the event loop's thread (no other thread worked)"
    assert probe.status_code == 200
    assert answered_first, "a health probe waited for the compression of another client's answer"
    FIGURES[f"health_probe_during_big_gzip_ms_{served.mode}"] = round(probe_s * 1000, 1)


# -- 11: integer parameters -------------------------------------------------------------------------
BIG_INT = 10**400
PARAMETER_CASES: dict[str, tuple[dict[str, Any], int]] = {
    "priority huge": ({"parameters": {"priority": BIG_INT}}, 400),
    "priority negative": ({"parameters": {"priority": -5}}, 400),
    "priority 2**63": ({"parameters": {"priority": 2**63}}, 400),
    "priority 1": ({"parameters": {"priority": 1}}, 200),
    "sequence_id huge": ({"parameters": {"sequence_id": BIG_INT}}, 400),
    "sequence_id negative": ({"parameters": {"sequence_id": -1}}, 400),
    "sequence_id string": ({"parameters": {"sequence_id": "session-7"}}, 200),
    "sequence_start not bool": ({"parameters": {"sequence_start": 1}}, 400),
    "timeout negative": ({"parameters": {"timeout": -1}}, 400),
    "custom huge": ({"parameters": {"my_knob": BIG_INT}}, 400),
    "custom below int64": ({"parameters": {"my_knob": -(2**63) - 1}}, 400),
    "custom int64": ({"parameters": {"my_knob": -(2**63), "other": "x", "flag": True, "ratio": 0.5}}, 200),
    "custom overflowing float": ({"parameters": {"my_knob": float("inf")}}, 400),
    "custom object": ({"parameters": {"my_knob": {"a": 1}}}, 400),
    "input parameter huge": ({"input_parameters": {"my_knob": BIG_INT}}, 400),
    "classification huge": ({"outputs": [{"name": "logits", "parameters": {"classification": BIG_INT}}]}, 400),
    "classification negative": ({"outputs": [{"name": "logits", "parameters": {"classification": -1}}]}, 400),
    "output parameter huge": ({"outputs": [{"name": "logits", "parameters": {"my_knob": BIG_INT}}]}, 400),
    "classification 3": ({"outputs": [{"name": "logits", "parameters": {"classification": 3}}]}, 200),
}


def _dumps_big(doc: Any) -> str:
    """JSON with float('inf') written as 1e400, as a client with big numbers would (Python writes Infinity)."""
    return json.dumps(doc).replace("Infinity", "1e400")


@pytest.mark.parametrize("framing", ["binary", "json"])
@pytest.mark.parametrize("case", list(PARAMETER_CASES))
def test_every_integer_parameter_is_bounded(served: Served, case: str, framing: str) -> None:
    """`parameters.priority = 10**400` (and -5) got 200: parameters the server does not use were not checked.
    Every parameter is now a string, a boolean, a finite number or a 64-bit integer, and Triton's unsigned ones
    (priority, timeout, sequence_id, binary_data_size, classification) are within 0..2**63-1."""
    extra, status = PARAMETER_CASES[case]
    x = pixels()
    doc: dict[str, Any] = {"inputs": [{"name": "pixel_values", "shape": list(x.shape), "datatype": "FP32"}],
                           "parameters": {"binary_data_output": False}}
    inp = doc["inputs"][0]
    if framing == "binary":
        inp["parameters"] = {"binary_data_size": x.nbytes}
    else:
        inp["data"] = x.ravel().tolist()
    inp.setdefault("parameters", {}).update(extra.get("input_parameters", {}))
    doc["parameters"].update(extra.get("parameters", {}))
    if "outputs" in extra:
        doc["outputs"] = extra["outputs"]
    head = _dumps_big(doc).encode()
    if framing == "binary":
        body = head + x.tobytes()
        headers = {"content-type": "application/octet-stream", "inference-header-content-length": str(len(head))}
    else:
        body, headers = head, {"content-type": "application/json"}
    with httpx.Client(base_url=served.base_url, timeout=60) as c:
        r = c.post("/v2/models/tiny_a/infer", content=body, headers=headers)
    assert_clean_error(r, [status])
    if status == 400:
        assert "parameter" in r.json()["error"], r.text[:300]
        assert len(r.content) < 1024


# -- 11: compressed request bodies ------------------------------------------------------------------
def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def _raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


ENCODED_CASES: dict[str, tuple[str, Any, int]] = {
    "gzip": ("gzip", _gzip, 200),
    "gzip + garbage": ("gzip", lambda b: _gzip(b) + b"garbage", 400),
    "gzip + zero padding": ("gzip", lambda b: _gzip(b) + bytes(16), 400),
    "gzip + a second member": ("gzip", lambda b: _gzip(b) + _gzip(b"{}"), 400),
    "gzip + garbage, chunked": ("gzip", lambda b: _gzip(b) + b"garbage", 400),
    "deflate": ("deflate", zlib.compress, 200),
    "deflate + garbage": ("deflate", lambda b: zlib.compress(b) + b"garbage", 400),
    "raw deflate": ("deflate", _raw_deflate, 200),
    "raw deflate + garbage": ("deflate", lambda b: _raw_deflate(b) + b"garbage", 400),
}


@pytest.mark.parametrize("case", list(ENCODED_CASES))
def test_a_compressed_body_is_one_stream_and_nothing_after_it(served: Served, case: str) -> None:
    """A gzip body with bytes after the stream was taken (the bytes ignored). Bytes after the end of a gzip or
    deflate stream are refused; so is a second gzip member (RFC 1952 allows a series; no client sends one, and
    each costs a decompressor)."""
    encoding, compress, status = ENCODED_CASES[case]
    body, headers = binary_request(pixels())
    content: Any = compress(body)
    if "chunked" in case:
        data = content
        content = iter([data[:100], data[100:]])  # no Content-Length: Transfer-Encoding: chunked
    with httpx.Client(base_url=served.base_url, timeout=60) as c:
        r = c.post("/v2/models/tiny_a/infer", content=content, headers={**headers, "content-encoding": encoding})
    assert_clean_error(r, [status])
    if status == 400:
        error = r.json()["error"]
        assert "member" in error or "follow the end" in error, error

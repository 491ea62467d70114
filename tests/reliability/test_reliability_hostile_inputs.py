"""Hostile and malformed input against the real server: a clear 4xx JSON error, never a 5xx or a crash.

Every case of the committed corpus (tests/reliability/corpus, written by make_corpus.py) is sent
while well-formed requests run in parallel; those must all succeed. The server's memory peak
(VmHWM) must stay bounded: bombs and amplification images are refused or handled cheaply.
"""

from __future__ import annotations

import socket
import time
from urllib.parse import quote

import httpx
import pytest
from make_corpus import CORPUS, Case, load_corpus
from reliability_support import (
    FIGURES,
    GoodTraffic,
    ServerProcess,
    assert_clean_error,
    metric,
    proc_status_kb,
    reset_peak_rss,
)

CASES = load_corpus()
# the resident memory the server may gain from the whole corpus (bombs decoded would need GBs)
PEAK_GROWTH_LIMIT_KB = 400 * 1024


def send(client: httpx.Client, case: Case, model: str = "tiny_a", compare: bool = False) -> httpx.Response:
    body = (CORPUS / case.file).read_bytes()
    headers = dict(case.headers)
    if case.content_type is not None:
        headers["content-type"] = case.content_type
    path = f"/v1/models/{model}/classify" if case.endpoint == "classify" else f"/v2/models/{model}/infer"
    if compare:
        path = f"/v1/compare?models={model}"
    request = client.build_request("POST", path, content=body, headers=headers)
    if case.content_type is None:
        request.headers.pop("content-type", None)
    return client.send(request)


def test_corpus_files_match_the_index() -> None:
    on_disk = {p.name for p in CORPUS.iterdir()} - {"index.json"}
    assert on_disk == {c.file for c in CASES}, "run tests/reliability/make_corpus.py to regenerate the corpus"


def test_every_corpus_case_gets_its_status_and_good_requests_are_undisturbed(hostile_server: ServerProcess) -> None:
    pid = hostile_server.proc.pid
    reset_peak_rss(pid)
    baseline_kb = proc_status_kb(pid, "VmRSS")
    failures: list[str] = []
    with GoodTraffic(hostile_server.base_url) as good, httpx.Client(base_url=hostile_server.base_url, timeout=60) as c:
        for case in CASES:
            try:
                assert_clean_error(send(c, case), case.expect)
            except (AssertionError, httpx.HTTPError) as exc:
                failures.append(f"{case.name} ({case.why}): {type(exc).__name__}: {exc}")
    peak_kb = proc_status_kb(pid, "VmHWM")
    FIGURES["hostile_corpus"] = {"cases": len(CASES), "rss_before_mb": round(baseline_kb / 1024),
                                 "peak_rss_mb": round(peak_kb / 1024)}
    assert not failures, "\n".join(failures)
    good.check()
    assert hostile_server.proc.poll() is None, "the server died"
    assert peak_kb - baseline_kb < PEAK_GROWTH_LIMIT_KB, (
        f"resident memory peaked at {peak_kb // 1024} MB from {baseline_kb // 1024} MB")


def test_image_cases_through_compare(hostile_server: ServerProcess) -> None:
    """/v1/compare reads the image the same way; when every model refuses it, its status is the answer."""
    failures = []
    with httpx.Client(base_url=hostile_server.base_url, timeout=60) as c:
        for case in (c_ for c_ in CASES if c_.endpoint == "classify"):
            try:
                assert_clean_error(send(c, case, compare=True), case.expect)
            except (AssertionError, httpx.HTTPError) as exc:
                failures.append(f"{case.name}: {type(exc).__name__}: {exc}")
    assert not failures, "\n".join(failures)


def test_a_huge_json_tensor_body_is_refused_before_it_is_parsed(hostile_server: ServerProcess) -> None:
    """28 MB of JSON numbers (under the 32 MB body limit, far over what tiny_a's 8 x 3x32x32 can need): parsed,
    it cost ~750 MB and stalled the event loop for 2 s; it must get 413 without being turned into floats."""
    pid = hostile_server.proc.pid
    reset_peak_rss(pid)
    before_kb = proc_status_kb(pid, "VmRSS")
    n = 14_000_000
    body = (b'{"inputs":[{"name":"pixel_values","shape":[1,3,32,32],"datatype":"FP32","data":['
            + b"0," * (n - 1) + b"0]}]}")
    with httpx.Client(base_url=hostile_server.base_url, timeout=60) as c:
        r = c.post("/v2/models/tiny_a/infer", content=body, headers={"content-type": "application/json"})
    assert_clean_error(r, [413])
    growth_mb = (proc_status_kb(pid, "VmHWM") - before_kb) / 1024
    # the raw body is buffered (~28 MB, plus a copy while it is joined); parsed it would be ~750 MB
    assert growth_mb < 200, f"resident memory peaked {growth_mb:.0f} MB above its level before the request"
    FIGURES["huge_json_body"] = {"body_mb": round(len(body) / 2**20, 1), "status": r.status_code,
                                 "peak_growth_mb": round(growth_mb)}


@pytest.mark.parametrize(
    "method, path, status",
    [
        ("post", "/v2/models/nope/infer", [404]),
        ("post", "/v1/models/nope/classify", [404]),
        ("get", "/v2/models/nope", [404]),
        ("get", "/v2/models/nope/ready", [404]),
        ("get", "/v1/models/nope", [404]),
        ("post", "/v2/models/tiny_a/versions/99/infer", [404]),
        ("post", "/v2/models/tiny_a/versions/0/infer", [404]),
        ("post", "/v2/models/tiny_a/versions/-1/infer", [404]),
        ("post", "/v2/models/tiny_a/versions/01/infer", [404]),
        ("post", "/v2/models/tiny_a/versions/1e3/infer", [404]),
        ("post", "/v2/models/tiny_a/versions/99999999999999999999/infer", [404]),
        ("get", "/v2/models/tiny_a/versions/99", [404]),
        ("get", "/v2/models/tiny_a/versions/99/ready", [404, 503]),
        ("get", "/v2/models/tiny_a/versions/99/stats", [404]),
        ("post", "/v1/models/tiny_a/classify?version=99", [404]),
        ("post", "/v1/models/tiny_a/classify?version=-3", [400]),
        ("post", "/v1/models/tiny_a/classify?top_k=0", [400]),
        ("post", "/v1/models/tiny_a/classify?top_k=abc", [400]),
        ("post", "/v1/models/tiny_a/classify?deadline_ms=-5", [400]),
        ("post", "/v1/models/tiny_a/classify?deadline_ms=nan", [400]),
        ("post", "/v1/compare?models=tiny_a,nope", [404]),
        ("post", "/v1/compare?models=,,,", [400]),
        ("get", "/v2/models/" + "a" * 5000, [404, 414]),
    ],
)
def test_unknown_models_versions_and_bad_parameters(hostile_server: ServerProcess, method: str, path: str,
                                                    status: list[int]) -> None:
    from make_corpus import gradient, pil

    with httpx.Client(base_url=hostile_server.base_url, timeout=30) as c:
        kw = {"content": pil(gradient(), "PNG"), "headers": {"content-type": "image/png"}} if method == "post" else {}
        if "/infer" in path:
            kw = {"json": {"inputs": [{"name": "pixel_values", "shape": [1, 3, 32, 32], "datatype": "FP32",
                                       "data": [0.0] * 3072}]}}
        r = getattr(c, method)(path, **kw)
        assert_clean_error(r, status)


def test_oversized_body_gets_413_before_it_is_read(hostile_server: ServerProcess) -> None:
    """Declare 1 GB, send 1 KB and stall: the 413 must arrive without waiting for (or reading) the rest."""
    host, port = hostile_server.base_url.removeprefix("http://").split(":")
    latencies = []
    for path, ctype in (("/v1/models/tiny_a/classify", "image/png"), ("/v2/models/tiny_a/infer", "application/json"),
                        ("/v1/compare", "image/png")):
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {1 << 30}\r\n\r\n").encode()
            start = time.perf_counter()
            sock.sendall(head + b"\x00" * 1024)
            data = b""
            while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
                chunk = sock.recv(65536)  # a 10 s socket timeout fails the test if no answer comes
                if not chunk:
                    break
                data += chunk
            latencies.append(time.perf_counter() - start)
        status_line, _, rest = data.partition(b"\r\n")
        assert b" 413 " in status_line + b" ", data[:300]
        assert b'"error"' in rest
    FIGURES["oversized_body_413_s"] = [round(x, 4) for x in latencies]


def test_stalled_uploads_do_not_block_other_clients(hostile_server: ServerProcess) -> None:
    """200 clients that send half a body and stall (slowloris on the body) hold connections, not the server;
    when they hang up, that is a client's doing: no 5xx in the metrics (alerts) and no stack trace in the log."""
    host, port = hostile_server.base_url.removeprefix("http://").split(":")
    sockets = []
    try:
        for _ in range(200):
            sock = socket.create_connection((host, int(port)), timeout=10)
            sock.sendall((f"POST /v1/models/tiny_a/classify HTTP/1.1\r\nHost: {host}\r\n"
                          f"Content-Type: image/png\r\nContent-Length: 100000\r\n\r\n").encode() + b"\x89PNG" * 8)
            sockets.append(sock)
        with GoodTraffic(hostile_server.base_url) as good:
            time.sleep(1.0)
        good.check(minimum=4)
    finally:
        for sock in sockets:
            sock.close()
    time.sleep(1.0)
    text = httpx.get(hostile_server.base_url + "/metrics").text
    assert metric(text, "vitserve_requests_total", model="tiny_a", code="500") == 0, "client disconnects counted as 500"
    assert "Traceback" not in hostile_server.log(), hostile_server.log()[-2000:]


def test_streamed_body_without_length_is_cut_at_the_limit(hostile_server: ServerProcess) -> None:
    """A chunked body with no Content-Length is counted while it streams and refused past the limit."""
    sent = 0

    def chunks():
        nonlocal sent
        block = b"\x00" * (1 << 20)
        for _ in range(64):  # 64 MB offered, the default limit is 32 MB
            sent += len(block)
            yield block

    with httpx.Client(base_url=hostile_server.base_url, timeout=30) as c:
        try:
            r = c.post("/v1/models/tiny_a/classify", content=chunks(), headers={"content-type": "image/png"})
        except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
            assert sent < 64 << 20, "the server read the whole stream"
            return
        assert_clean_error(r, [413])


@pytest.mark.parametrize("name", ["..%2F..%2Fetc%2Fpasswd", "%2e%2e", "..%252F..%252Fetc", "tiny_a%00", "tiny_a%2F..",
                                  ".tiny_a", "-rf", "tiny a", "%C0%AE%C0%AE", quote("ü-model")])
def test_path_traversal_model_names_never_resolve(hostile_server: ServerProcess, name: str) -> None:
    with httpx.Client(base_url=hostile_server.base_url, timeout=30) as c:
        for method, path in (("get", f"/v2/models/{name}"), ("get", f"/v2/models/{name}/config"),
                             ("get", f"/v1/models/{name}"), ("post", f"/v2/models/{name}/infer"),
                             ("post", f"/v1/models/{name}/classify")):
            kw = {"content": b"x", "headers": {"content-type": "image/png"}} if method == "post" else {}
            r = getattr(c, method)(path, **kw)
            assert_clean_error(r, [400, 404, 405])


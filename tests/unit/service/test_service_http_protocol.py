"""vitserve's HTTP protocol: a response head leaves with its body in one write, never reordered or lost."""

from __future__ import annotations

import asyncio

from service.http_protocol import _OneWrite


class _Transport:
    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes]] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.calls.append(("write", data))

    def writelines(self, pieces) -> None:
        self.calls.append(("writelines", b"".join(pieces)))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def test_a_head_and_its_body_leave_in_one_write_and_a_lone_head_at_the_next_turn() -> None:
    async def main() -> None:
        t = _Transport()
        w = _OneWrite(t, asyncio.get_running_loop())  # type: ignore[arg-type]
        w.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # not a response head: out at once
        w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        assert t.calls == [("write", b"HTTP/1.1 100 Continue\r\n\r\n")]
        w.write(b"ok")
        assert t.calls[1:] == [("writelines", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")]
        w.write(b"HTTP/1.1 204 No Content\r\n\r\n")  # no body follows
        await asyncio.sleep(0)
        assert t.calls[2:] == [("write", b"HTTP/1.1 204 No Content\r\n\r\n")]
        w.write(b"HTTP/1.1 200 OK\r\n\r\n")
        w.close()  # a held head goes out before the close
        assert t.calls[3:] == [("write", b"HTTP/1.1 200 OK\r\n\r\n")] and t.closed
        await asyncio.sleep(0)
        assert len(t.calls) == 4  # the cancelled or spent flush writes nothing twice
        assert w.is_closing()  # everything else is the transport's

    asyncio.run(main())


class _SocketTransport(_Transport):
    """What uvicorn's protocol asks of a TCP transport."""

    def get_extra_info(self, name: str, default=None):
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 5000)}.get(name, default)

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.calls.append(("eof", b""))

    def output(self) -> bytes:
        return b"".join(data for _, data in self.calls)


def _protocol(tmp_path, direct_routes: bool, **settings_: float):
    """vitserve's protocol over a fake transport: hot POSTs echo body and query, the ASGI app records its calls."""
    import uvicorn
    from fastapi import APIRouter, Request
    from starlette.responses import Response
    from uvicorn.server import ServerState

    from service.api.fast_path import DirectRoutes, hot_routes
    from service.api.request_view import AsgiRequest, RequestView
    from service.http_protocol import guarded_protocol
    from service.settings import Settings

    router = APIRouter()

    async def echo_view(request: RequestView, model: str) -> Response:
        return Response(model.encode() + b":" + request.query_string + b":" + await request.body(),
                        media_type="text/plain", headers={"X-Echo": "1"})

    @router.post("/m/{model}/infer")
    async def echo(model: str, request: Request) -> Response:
        return await echo_view(AsgiRequest(request), model)

    asgi_paths: list[str] = []

    async def app(scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        asgi_paths.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"4")]})
        await send({"type": "http.response.body", "body": b"asgi"})

    settings = Settings(repository=tmp_path, direct_routes=direct_routes, max_body_bytes=1024, **settings_)
    cls = guarded_protocol(settings, direct=DirectRoutes(hot_routes(router, {echo: echo_view}), 1024))
    config = uvicorn.Config(app, lifespan="off", proxy_headers=False, access_log=False)
    protocol = cls(config=config, server_state=ServerState(), app_state={})
    transport = _SocketTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    return protocol, transport, asgi_paths


def test_hot_posts_are_served_without_the_asgi_app_and_everything_else_with_it(tmp_path) -> None:
    async def main() -> None:
        protocol, transport, asgi_paths = _protocol(tmp_path, direct_routes=True)
        # two pipelined requests, then one over the limit (answered from Content-Length, then closed)
        protocol.data_received(b"POST /m/a/infer?q=1 HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nhi"
                               b"GET /m/a/infer HTTP/1.1\r\nhost: x\r\n\r\n")
        for _ in range(20):
            await asyncio.sleep(0)
        out = transport.output()
        assert asgi_paths == ["/m/a/infer"]  # the GET only
        first, _, second = out.partition(b"a:q=1:hi")
        assert first == (b"HTTP/1.1 200 OK\r\nx-echo: 1\r\ncontent-length: 8\r\n"
                         b"content-type: text/plain; charset=utf-8\r\n\r\n")
        assert second.startswith(b"HTTP/1.1 200 OK\r\n") and second.endswith(b"\r\n\r\nasgi")
        assert transport.calls[0][0] == "write" and transport.calls[0][1].endswith(b"a:q=1:hi")  # one write
        protocol.data_received(b"POST /m/a/infer HTTP/1.1\r\nhost: x\r\ncontent-length: 2000\r\n\r\n")
        for _ in range(20):
            await asyncio.sleep(0)
        assert transport.output().endswith(b'connection: close\r\n\r\n{"error": "request body of 2000 bytes '
                                           b'exceeds the limit of 1024"}') and transport.closed
        assert not protocol.tasks

    asyncio.run(main())


def test_with_direct_routes_off_every_request_goes_to_the_asgi_app(tmp_path) -> None:
    async def main() -> None:
        protocol, transport, asgi_paths = _protocol(tmp_path, direct_routes=False)
        protocol.data_received(b"POST /m/a/infer HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nhi")
        for _ in range(20):
            await asyncio.sleep(0)
        assert asgi_paths == ["/m/a/infer"] and transport.output().endswith(b"asgi")

    asyncio.run(main())


def test_a_whole_request_costs_no_timer_and_an_incomplete_head_or_body_is_timed(tmp_path) -> None:
    async def main() -> None:
        protocol, transport, _ = _protocol(tmp_path, direct_routes=True, header_timeout_s=0.05, body_timeout_s=0.05)
        protocol.data_received(b"POST /m/a/infer HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nhi")
        assert protocol._timer is None  # the connection's head timer ended with the head; nothing else armed
        await asyncio.sleep(0.01)
        assert transport.output().endswith(b"a::hi")
        protocol.data_received(b"POST /m/a/infer HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\n\r\nhi")
        assert protocol._timer is not None  # a body still incomplete
        protocol.data_received(b"yo")
        assert protocol._timer is None
        await asyncio.sleep(0.01)
        assert transport.output().endswith(b"a::hiyo") and not transport.closed
        protocol.data_received(b"POST /m/a/infer HTTP/1.1\r\nhost:")  # the next head, incomplete
        await asyncio.sleep(0.1)
        assert b"HTTP/1.1 408 Request Timeout" in transport.output() and transport.calls[-1][0] == "eof"

    asyncio.run(main())


def test_the_body_budget_is_one_per_protocol_class_and_divided_among_the_front_ends(tmp_path) -> None:
    from service.http_protocol import guarded_protocol
    from service.settings import Settings
    from service.workers.supervisor import front_end_settings

    settings = Settings(repository=tmp_path, http_workers=3, max_body_bytes_in_flight=100_000)
    cls = guarded_protocol(front_end_settings(settings))
    assert cls.body_budget.limit == 33_334  # 3 x 33,334 >= 100,000, rounded up
    assert guarded_protocol(settings).body_budget is not cls.body_budget  # each class (process) its own
    budget = cls.body_budget
    assert budget.fits(33_334) and budget.fits(10**9)  # nothing held: a lone body fits whatever its size
    budget.take(20_000)
    assert budget.fits(13_334) and not budget.fits(13_335)
    assert budget.fits(50_000, held=20_000)  # a chunked body alone past the limit is still read
    budget.release(20_000)
    assert budget.in_flight == 0


def test_a_refused_head_is_answered_after_the_requests_before_it_and_a_lost_one_marks_the_active(tmp_path) -> None:
    async def main() -> None:
        protocol, transport, _ = _protocol(tmp_path, direct_routes=True)
        protocol.data_received(b"POST /m/a/infer HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nhi"
                               b"GET /m/a/infer HTTP/1.1\r\nhost: x\r\n\r\n"
                               b"GET /m/a/infer HTTP/1.1\r\n\r\n")  # no Host: refused once the others are answered
        for _ in range(20):
            await asyncio.sleep(0)
        out = transport.output()
        assert out.index(b"a::hi") < out.index(b"asgi") < out.index(b"HTTP/1.1 400 Bad Request")
        assert out.endswith(b'{"error": "an HTTP/1.1 request needs a Host header"}') and transport.calls[-1][0] == "eof"

        protocol, transport, _ = _protocol(tmp_path, direct_routes=True)
        protocol.data_received(b"POST /m/a/infer HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\n\r\nhi")
        active = protocol.cycle
        protocol.data_received(b"yo" + b"GET /m/a/infer HTTP/1.1\r\nhost: x\r\n\r\n")  # pipelined behind it
        assert protocol.pipeline and protocol.cycle is not active
        transport.closed = True
        protocol.connection_lost(ConnectionResetError())
        assert active.disconnected  # uvicorn marked only the last request read
        for _ in range(20):
            await asyncio.sleep(0)
        assert b"a::hiyo" not in transport.output() and protocol.body_budget.in_flight == 0

    asyncio.run(main())

"""The fast path calls the hot endpoints (over a `RequestView`) straight from ASGI: matched POSTs never reach
the inner app, everything else does, and errors get the same JSON answers as under FastAPI's handlers."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from service.api.fast_path import FastPathMiddleware, hot_routes
from service.api.request_view import AsgiRequest, RequestView
from service.errors import ModelNotFound


def make_app() -> tuple[FastPathMiddleware, list[str]]:
    router = APIRouter(prefix="/v2")

    async def infer_view(request: RequestView, model: str) -> Response:
        if model == "missing":
            raise ModelNotFound("no model 'missing'")
        if model == "boom":
            raise RuntimeError("a bug with a secret path /etc/x")
        return JSONResponse({"model": model, "body": (await request.body()).decode(),
                             "query": request.query_string.decode()})

    @router.post("/models/{model}/infer")
    async def infer(model: str, request: Request) -> Response:
        return await infer_view(AsgiRequest(request), model)

    @router.post("/models/{model}/other")
    async def other(model: str) -> Response:
        return JSONResponse({})

    inner_calls: list[str] = []

    async def inner(scope, receive, send) -> None:
        inner_calls.append(f'{scope["method"]} {scope["path"]}')
        await JSONResponse({"inner": True})(scope, receive, send)

    return FastPathMiddleware(inner, hot_routes(router, {infer: infer_view})), inner_calls


def request(app: FastPathMiddleware, method: str, path: str, body: bytes = b"") -> httpx.Response:
    async def main() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            return await c.request(method, path, content=body)

    return asyncio.run(main())


def test_matched_posts_skip_the_inner_app() -> None:
    app, inner_calls = make_app()
    r = request(app, "POST", "/v2/models/m1/infer?a=1", b"hello")
    assert r.status_code == 200
    assert r.json() == {"model": "m1", "body": "hello", "query": "a=1"}
    assert inner_calls == []


def test_other_methods_and_routes_reach_the_inner_app() -> None:
    app, inner_calls = make_app()
    assert request(app, "GET", "/v2/models/m1/infer").json() == {"inner": True}
    assert request(app, "POST", "/v2/models/m1/other").json() == {"inner": True}
    assert request(app, "POST", "/v2/models/m1/infer/extra").json() == {"inner": True}
    assert inner_calls == ["GET /v2/models/m1/infer", "POST /v2/models/m1/other", "POST /v2/models/m1/infer/extra"]


def test_errors_use_the_service_error_table() -> None:
    app, _ = make_app()
    r = request(app, "POST", "/v2/models/missing/infer")
    assert r.status_code == 404 and r.json() == {"error": "no model 'missing'"}
    r = request(app, "POST", "/v2/models/boom/infer")
    assert r.status_code == 500 and r.json() == {"error": "internal error"}  # no trace, no path


def test_request_headers_look_up_as_starlettes() -> None:
    from starlette.datastructures import Headers

    from service.api.request_view import RequestHeaders

    raw = [(b"content-type", b"image/png"), (b"x-twice", b"first"), (b"x-twice", b"second"), (b"x-l", b"caf\xe9")]
    ours, theirs = RequestHeaders(raw), Headers(raw=raw)
    for key in ("Content-Type", "content-type", "X-Twice", "x-l", "absent"):
        assert ours.get(key) == theirs.get(key)
    assert ours.get("absent", "d") == "d" and ours["x-twice"] == "first"
    assert ours.getlist("x-twice") == ["first", "second"]


def test_hot_routes_match_posts_below_the_root_path() -> None:
    app, _ = make_app()
    routes = app.routes
    scope = {"type": "http", "method": "POST", "path": "/api/v2/models/m1/infer", "root_path": "/api"}
    hit = routes.match(scope)
    assert hit is not None and hit[1] == {"model": "m1"}
    assert routes.match({**scope, "method": "GET"}) is None
    assert routes.match({**scope, "root_path": ""}) is None  # /api/v2/... is no hot route without the root
    assert routes.match({**scope, "path": "/v2/models/m1/infer/x"}) is None

"""CLI settings parsing and the HTTP edge helpers (disconnect cancels the work, API key checks)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pydantic import SecretStr
from starlette.requests import Request

from service.api.common import cancel_on_disconnect, check_key
from service.api.request_view import AsgiRequest
from service.cli import build_parser, main, settings_from_args
from service.errors import ClientClosedRequest, Unauthorized


def test_flags_become_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VITSERVE_PORT", "7000")
    args = build_parser().parse_args(["serve", "--repository", str(tmp_path), "--models", "a", "b",
                                      "--max-queue-delay-ms", "3", "--host", "0.0.0.0"])
    s = settings_from_args(args)
    assert s.models == ["a", "b"] and s.max_queue_delay_ms == 3 and s.host == "0.0.0.0" and s.port == 7000


def test_bad_settings_exit_with_status_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--repository", str(tmp_path / "missing")]) == 2
    assert "not a directory" in capsys.readouterr().err


def _request(receive) -> AsgiRequest:
    return AsgiRequest(Request({"type": "http", "method": "POST", "path": "/", "headers": []}, receive))


async def _waits_for_ever(cancelled: asyncio.Event) -> int:
    """Work that only ends by being cancelled (and says so)."""
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        cancelled.set()
        raise
    return 1


def test_disconnect_cancels_the_waiting_work() -> None:
    async def main_() -> None:
        gone = asyncio.Event()

        async def receive():
            await gone.wait()
            return {"type": "http.disconnect"}

        cancelled = asyncio.Event()

        task = asyncio.create_task(cancel_on_disconnect(_request(receive), _waits_for_ever(cancelled)))
        await asyncio.sleep(0.01)
        gone.set()
        with pytest.raises(ClientClosedRequest):
            await task
        await asyncio.sleep(0)
        assert cancelled.is_set()

    asyncio.run(main_())


def test_finished_work_is_returned_while_the_client_stays() -> None:
    async def main_() -> None:
        async def receive():
            await asyncio.sleep(30)

        async def work() -> int:
            return 7

        assert await cancel_on_disconnect(_request(receive), work()) == 7

    asyncio.run(main_())


def test_api_key_check() -> None:
    def req(headers: dict[str, str]) -> Request:
        raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        return Request({"type": "http", "method": "POST", "path": "/", "headers": raw})

    key = SecretStr("right-key-123")
    check_key(req({"Authorization": "Bearer right-key-123"}), key, required=True, what="x")
    check_key(req({"X-API-Key": "right-key-123"}), key, required=True, what="x")
    check_key(req({}), None, required=False, what="x")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "right-key-12"}):
        with pytest.raises(Unauthorized):
            check_key(req(headers), key, required=True, what="x")
    with pytest.raises(Unauthorized, match="no API key configured"):
        check_key(req({"X-API-Key": "anything"}), None, required=True, what="x")


def test_query_parameters_are_validated_once_per_short_query_string() -> None:
    from service.api.common import CACHED_QUERY_BYTES, _parse_query_cached, parse_query
    from service.api.v1 import ClassifyQuery
    from service.errors import InvalidInput

    def req(query: bytes) -> AsgiRequest:
        return AsgiRequest(Request({"type": "http", "method": "POST", "path": "/", "headers": [],
                                    "query_string": query}))

    first = parse_query(ClassifyQuery, req(b"top_k=3&version=2"))
    hits = _parse_query_cached.cache_info().hits
    assert parse_query(ClassifyQuery, req(b"top_k=3&version=2")) == first
    assert (first.top_k, first.version) == (3, 2) and _parse_query_cached.cache_info().hits == hits + 1
    for _ in range(2):  # an error is raised every time (never cached as a result)
        with pytest.raises(InvalidInput, match="top_k"):
            parse_query(ClassifyQuery, req(b"top_k=0"))
    long = b"top_k=4&pad=" + b"x" * CACHED_QUERY_BYTES
    size = _parse_query_cached.cache_info().currsize
    assert parse_query(ClassifyQuery, req(long)).top_k == 4 and _parse_query_cached.cache_info().currsize == size


class _Connection:
    """The part of vitserve's HTTP protocol that reports a lost connection (service/http_protocol.py)."""

    def __init__(self) -> None:
        self.callbacks: list = []

    def watch_disconnect(self, callback) -> None:
        self.callbacks.append(callback)

    def unwatch_disconnect(self, callback) -> None:
        self.callbacks.remove(callback)

    def lose(self) -> None:
        for callback in list(self.callbacks):
            callback()


def test_a_lost_connection_reported_by_the_protocol_cancels_the_work_without_a_watcher_task() -> None:
    from service.http_protocol import DISCONNECT_WATCH

    async def main_() -> None:
        conn = _Connection()

        async def receive():
            raise AssertionError("no ASGI receive needed: the protocol reports the disconnect")

        scope = {"type": "http", "method": "POST", "path": "/", "headers": [], DISCONNECT_WATCH: conn}
        cancelled = asyncio.Event()

        view = AsgiRequest(Request(scope, receive))
        task = asyncio.create_task(cancel_on_disconnect(view, _waits_for_ever(cancelled)))
        await asyncio.sleep(0.01)
        conn.lose()
        with pytest.raises(ClientClosedRequest):
            await task
        assert cancelled.is_set() and conn.callbacks == []

        async def quick() -> int:
            return 5

        assert await cancel_on_disconnect(AsgiRequest(Request(scope, receive)), quick()) == 5
        assert conn.callbacks == []  # unwatched once answered

    asyncio.run(main_())

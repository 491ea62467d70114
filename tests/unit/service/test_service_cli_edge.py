"""CLI settings parsing and the HTTP edge helpers (disconnect cancels the work, API key checks)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pydantic import SecretStr
from starlette.requests import Request

from service.api.common import cancel_on_disconnect, check_key
from service.errors import ClientClosedRequest
from service.cli import build_parser, main, settings_from_args
from service.errors import Unauthorized


def test_flags_become_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VITSERVE_PORT", "7000")
    args = build_parser().parse_args(["serve", "--repository", str(tmp_path), "--models", "a", "b",
                                      "--max-queue-delay-ms", "3", "--host", "0.0.0.0"])
    s = settings_from_args(args)
    assert s.models == ["a", "b"] and s.max_queue_delay_ms == 3 and s.host == "0.0.0.0" and s.port == 7000


def test_bad_settings_exit_with_status_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--repository", str(tmp_path / "missing")]) == 2
    assert "not a directory" in capsys.readouterr().err


def _request(receive) -> Request:
    return Request({"type": "http", "method": "POST", "path": "/", "headers": []}, receive)


def test_disconnect_cancels_the_waiting_work() -> None:
    async def main_() -> None:
        gone = asyncio.Event()

        async def receive():
            await gone.wait()
            return {"type": "http.disconnect"}

        cancelled = asyncio.Event()

        async def work() -> int:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return 1

        task = asyncio.create_task(cancel_on_disconnect(_request(receive), work()))
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

"""vitserve's HTTP protocol (service/http_protocol.py), its direct routes (service/api/direct.py) and the
disconnect watch (service/api/common.py) build on uvicorn internals: a subclass of its httptools protocol
that overrides and calls private methods, its request cycle's fields and module-level helpers. pyproject
pins uvicorn to the release these were written against; this test names every one of them, so moving to
another release fails here, loudly, rather than in a served request."""

from __future__ import annotations

import asyncio
import importlib.metadata
import inspect
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http import httptools_impl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

ROOT = Path(__file__).resolve().parents[3]

#: methods of HttpToolsProtocol that GuardedHttpToolsProtocol overrides or calls, with their parameters
PROTOCOL_METHODS = {
    "connection_made": ["self", "transport"],
    "connection_lost": ["self", "exc"],
    "data_received": ["self", "data"],
    "eof_received": ["self"],
    "on_headers_complete": ["self"],
    "on_body": ["self", "body"],
    "on_message_complete": ["self"],
    "on_response_complete": ["self"],
    "_start_asgi_task": ["self", "cycle", "app"],
    "_unset_keepalive_if_required": ["self"],
    "_should_upgrade": ["self"],
    "handle_websocket_upgrade": ["self"],
    "_unsupported_upgrade_warning": ["self"],
}
#: attributes a connected protocol has and the subclass reads or sets
PROTOCOL_ATTRIBUTES = ("flow", "pipeline", "cycle", "parser", "server_state", "connections", "scope", "headers",
                       "app", "logger", "transport", "loop")
#: fields of a request cycle that the subclass and the direct routes read or set
CYCLE_FIELDS = ("scope", "transport", "flow", "response_started", "response_complete", "disconnected",
                "message_event", "body", "more_body", "keep_alive", "on_response", "default_headers",
                "access_log", "access_logger", "waiting_for_100_continue")


def test_uvicorn_is_the_pinned_release() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pin = next(d for d in deps if d.startswith("uvicorn"))
    wanted = re.search(r"==([\w.]+)", pin)
    assert wanted, f"uvicorn must be pinned exactly in pyproject.toml (its internals are used): {pin}"
    assert importlib.metadata.version("uvicorn") == wanted.group(1) == uvicorn.__version__


@pytest.mark.parametrize("name", sorted(PROTOCOL_METHODS))
def test_the_protocol_methods_used_are_there_with_their_signatures(name: str) -> None:
    method = getattr(HttpToolsProtocol, name, None)
    assert callable(method), f"uvicorn's HttpToolsProtocol has no {name}: service/http_protocol.py needs it"
    assert list(inspect.signature(method).parameters) == PROTOCOL_METHODS[name], name


def test_a_connected_protocol_has_the_attributes_used() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        pass

    class Transport(asyncio.Transport):
        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return default

        def is_closing(self) -> bool:
            return False

        def pause_reading(self) -> None:
            pass

        def resume_reading(self) -> None:
            pass

    config = uvicorn.Config(app, http="httptools", log_config=None)
    config.load()
    loop = asyncio.new_event_loop()
    try:
        protocol = HttpToolsProtocol(config=config, server_state=ServerState(), app_state={}, _loop=loop)
        protocol.connection_made(Transport())
        missing = [a for a in PROTOCOL_ATTRIBUTES if not hasattr(protocol, a)]
        assert not missing, f"uvicorn's HttpToolsProtocol lacks {missing}"
        assert callable(protocol.flow.resume_reading) and callable(protocol.flow.pause_reading)
        assert callable(protocol.parser.feed_data) and callable(protocol.parser.get_http_version)
    finally:
        loop.close()


def test_the_request_cycle_fields_and_module_helpers_used_are_there() -> None:
    source = inspect.getsource(RequestResponseCycle.__init__)
    missing = [f for f in CYCLE_FIELDS if f"self.{f} " not in source and f"self.{f}:" not in source]
    assert not missing, f"uvicorn's RequestResponseCycle no longer sets {missing}"
    assert list(inspect.signature(RequestResponseCycle.run_asgi).parameters) == ["self", "app"]
    for helper in ("HEADER_RE", "HEADER_VALUE_RE", "STATUS_LINE"):
        assert hasattr(httptools_impl, helper), helper
    from uvicorn._types import ASGI3Application  # noqa: F401  (imported by service/http_protocol.py)
    from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

    assert callable(get_client_addr) and callable(get_path_with_query_string)

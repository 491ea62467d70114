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

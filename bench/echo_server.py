"""A trivial HTTP/1.1 server used to measure the load generator's own ceiling.

It answers every request with a fixed small JSON body (and a `Server-Timing` header, so the
client's timing parser runs as it does against vitserve) at almost no CPU cost: a raw asyncio
protocol, keep-alive, no framework. Whatever request rate the generator reaches against it is
the most the generator can drive on this machine, and the client CPU per request measured
here is its per-request overhead. Run as `python -m bench.echo_server --port P`.
"""

from __future__ import annotations

import argparse
import asyncio

_BODY = b'{"ok":true,"timings":{"queue":0.0,"compute":0.0}}'
_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nServer-Timing: queue;dur=0, compute;dur=0\r\n"
    b"Content-Length: " + str(len(_BODY)).encode() + b"\r\n\r\n" + _BODY
)


class _EchoProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in bytes(self.buf[:end]).split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            total = end + 4 + length
            if len(self.buf) < total:
                return
            del self.buf[:total]
            if self.transport is not None:
                self.transport.write(_RESPONSE)


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_EchoProtocol, host, port)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    try:
        import uvloop

        uvloop.run(serve(args.host, args.port))
    except ImportError:
        asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()

"""uvicorn's HTTP protocol with a deadline to read each request, for clients that stall.

uvicorn times a connection out only between requests (keep-alive, after a response): a client
that sends half a request line and stops holds its connection, and a file descriptor, for as
long as it likes. Here every request must arrive whole, headers and body, within
``read_timeout_s`` of its first byte (or of the connection, for one that sends nothing); a
late one is answered 408 and its connection closed. The number of connections is bounded by
uvicorn's own ``limit_concurrency`` (503 above it).
"""

from __future__ import annotations

import asyncio

_TIMEOUT_BODY = b'{"detail": "the request did not arrive in time"}'
TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(_TIMEOUT_BODY), _TIMEOUT_BODY)
)


class ReadDeadline:
    """Mixin for a uvicorn HTTP protocol class (httptools or h11): the read deadline."""

    read_timeout_s: float = 15.0
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._deadline = self.loop.call_later(self.read_timeout_s, self._too_slow)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        cycle = self.cycle
        if cycle is not None and not cycle.more_body and not cycle.response_complete:
            self._cancel_deadline()  # the request is in: the app answers within limits.timeout_s
        elif self._deadline is None:  # the first bytes of the next request on this connection
            self._deadline = self.loop.call_later(self.read_timeout_s, self._too_slow)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete or not self.cycle.response_started:
            self.transport.write(TIMEOUT_RESPONSE)
        self.transport.close()


def protocol(read_timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's fastest installed HTTP protocol (httptools, else h11) with the read deadline."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol as base
    return type("DeadlineProtocol", (ReadDeadline, base), {"read_timeout_s": read_timeout_s})

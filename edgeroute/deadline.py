"""uvicorn's HTTP protocol with a deadline to read each request, for clients that stall.

uvicorn times a connection out only between requests (keep-alive, after a response): a client
that sends half a request line and stops holds its connection, and a file descriptor, for as
long as it likes. Here every request must arrive whole, headers and body, within
``read_timeout_s`` of its first byte (or of the connection, for one that sends nothing); a
late one is answered 408 and its connection closed. The number of connections is bounded by
uvicorn's own ``limit_concurrency`` (503 above it), and the connections of one client address
by ``max_per_client``: past it a new connection is answered 429 and closed at once, so that one
client holding idle connections, and opening new ones as they close, cannot take them all.
"""

from __future__ import annotations

import asyncio
from collections import Counter

_TIMEOUT_BODY = b'{"detail": "the request did not arrive in time"}'
TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(_TIMEOUT_BODY), _TIMEOUT_BODY)
)


_BUSY_BODY = b'{"detail": "too many connections from this address"}'
BUSY_RESPONSE = (
    b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"retry-after: 1\r\ncontent-length: %d\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY)
)


class ReadDeadline:
    """Mixin for a uvicorn HTTP protocol class (httptools or h11): the read deadline, and the
    connections of each client address counted in ``clients`` (shared by the server's)."""

    read_timeout_s: float = 15.0
    max_per_client: int = 256
    clients: Counter[str]
    _deadline: asyncio.TimerHandle | None = None
    _client: str | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        address = (transport.get_extra_info("peername") or ("",))[0]
        if self.clients[address] >= self.max_per_client:
            transport.write(BUSY_RESPONSE)
            transport.close()
            return
        self._client = address
        self.clients[address] += 1
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
        if self._client is not None:
            self.clients[self._client] -= 1
            if not self.clients[self._client]:
                del self.clients[self._client]
            self._client = None
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


def protocol(read_timeout_s: float, max_per_client: int) -> type[asyncio.Protocol]:
    """uvicorn's fastest installed HTTP protocol (httptools, else h11) with the read deadline
    and at most ``max_per_client`` connections from one address."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol as base
    settings = {"read_timeout_s": read_timeout_s, "max_per_client": max_per_client, "clients": Counter()}
    return type("DeadlineProtocol", (ReadDeadline, base), settings)

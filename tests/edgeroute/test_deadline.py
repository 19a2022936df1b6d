"""The HTTP protocol's guards against clients that hold connections: per-address limit."""

from __future__ import annotations

import socket

import httpx

from tests.services import serve_process

BODY = b'{"text": "where is my parcel"}'
CLASSIFY = (
    b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
)


def _connect(port: int, source: str) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=15, source_address=(source, 0))


def test_one_address_holding_its_connections_leaves_the_others_served(tiny_bundle, tmp_path):
    service, url = serve_process(tiny_bundle, tmp_path, "limits.max_connections_per_client=5")
    port = int(url.rsplit(":", 1)[1])
    try:
        held = [_connect(port, "127.0.0.1") for _ in range(5)]  # idle, as an attacker holds them
        one_more = _connect(port, "127.0.0.1")
        answer = one_more.recv(4096)
        assert answer.startswith(b"HTTP/1.1 429 Too Many Requests") and b"retry-after: 1" in answer
        assert one_more.recv(4096) == b"", "closed at once"
        # Another address is served meanwhile (the loopback range is one machine's).
        other = _connect(port, "127.0.0.2")
        other.sendall(CLASSIFY)
        assert other.recv(4096).startswith(b"HTTP/1.1 200 OK")
        other.close()
        for connection in [*held, one_more]:
            connection.close()
        # Its connections closed, the first address is served again.
        again = httpx.post(f"{url}/v1/classify", json={"text": "where is my parcel"})
        assert again.status_code == 200
    finally:
        service.stop()

"""The re-exec bridge's heads and turns (its serving is tests/integration/test_bridge.py)."""

from __future__ import annotations

import pytest

from pikud.bridge import Head, Snapshot, response_head
from pikud.proxy.routing import Target

REQUEST = (b"POST /_/shop/cart?x=1 HTTP/1.1\r\nHost: Shop.Example:8080\r\n"
           b"Connection: keep-alive\r\nKeep-Alive: 5\r\nX-Forwarded-For: 6.6.6.6\r\n"
           b"X-Forwarded-Prefix: /evil\r\n"
           b"Transfer-Encoding: chunked\r\nCookie: a=1\r\n\r\n")


def lines(head: bytes) -> list[str]:
    return head.decode("latin-1").split("\r\n")


def test_the_upstream_head_is_the_routers_with_connection_close() -> None:
    head = Head.parse(REQUEST)
    sent = lines(head.upstream(Target("shop", "/cart?x=1", "/_/shop"), "10.0.0.7", 8080))
    assert sent[0] == "POST /cart?x=1 HTTP/1.1"
    assert sent[-2:] == ["", ""] and "Connection: close" in sent
    assert {"Host: Shop.Example:8080", "Transfer-Encoding: chunked", "Cookie: a=1",
            "X-Forwarded-For: 10.0.0.7", "X-Forwarded-Proto: http",
            "X-Forwarded-Host: shop.example", "X-Forwarded-Port: 8080",
            "X-Forwarded-Prefix: /_/shop"} <= set(sent)
    assert not [line for line in sent if line.startswith(("Keep-Alive", "Connection: keep"))
                or line in ("X-Forwarded-For: 6.6.6.6", "X-Forwarded-Prefix: /evil")]
    assert any(line.startswith("X-Request-Start: ") for line in sent)


def test_an_upgrade_stays_an_upgrade() -> None:
    head = Head.parse(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n"
                      b"Upgrade: websocket\r\n\r\n")
    sent = lines(head.upstream(Target("a", "/ws"), "127.0.0.1", 80))
    assert "Upgrade: websocket" in sent and "Connection: Upgrade" in sent
    assert "Connection: close" not in sent
    assert not [line for line in sent if line.startswith("X-Forwarded-Prefix")]


@pytest.mark.parametrize("head", [b"GET /\r\n\r\n", b"GET / HTTP/1.1 x\r\n\r\n",
                                  b"GET / HTTP/1.1\r\nno colon\r\n\r\n"])
def test_a_malformed_head_is_refused(head: bytes) -> None:
    with pytest.raises(ValueError):
        Head.parse(head)


@pytest.mark.parametrize("head, prefix, expected", [
    (b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: 5\r\nContent-Length: 2\r\n\r\n",
     "", ["HTTP/1.1 200 OK", "Content-Length: 2", "Connection: close"]),
    (b"HTTP/1.1 302 Found\r\nLocation: /login\r\n\r\n", "/_/shop",
     ["HTTP/1.1 302 Found", "Location: /_/shop/login", "Connection: close"]),
    (b"HTTP/1.1 302 Found\r\nLocation: /_/shop/x\r\n\r\n", "/_/shop",
     ["HTTP/1.1 302 Found", "Location: /_/shop/x", "Connection: close"]),
    (b"HTTP/1.1 302 Found\r\nLocation: //elsewhere/\r\n\r\n", "/_/shop",
     ["HTTP/1.1 302 Found", "Location: //elsewhere/", "Connection: close"]),
    (b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
     "", ["HTTP/1.1 101 Switching Protocols", "Connection: Upgrade", "Upgrade: websocket"]),
])
def test_the_response_head_says_close(head: bytes, prefix: str, expected: list[str]) -> None:
    assert lines(response_head(head, prefix)) == [*expected, "", ""]


def test_upstreams_are_taken_in_turn() -> None:
    snap = Snapshot.from_json({"hosts": {}, "port": 80, "static": {},
                               "upstreams": {"a": ["1", "2", "3"], "b": []}})
    assert [snap.upstreams_of("a") for _ in range(4)] == [
        ["1", "2", "3"], ["2", "3", "1"], ["3", "1", "2"], ["1", "2", "3"]]
    assert snap.upstreams_of("b") == [] and snap.upstreams_of("nobody") == []

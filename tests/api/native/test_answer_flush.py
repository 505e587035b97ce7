"""When answers of writes completed by the node's Ready loop leave: at once when nothing else
is in flight on the connection (a lone sequential client does not wait for the end of the
loop turn), else together in one write at the end of the turn."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from quorum.api.local import LocalBackend
from quorum.api.native import messages as m
from quorum.api.native.server import serve_native
from quorum.client.connection import open_connection
from quorum.state.commands import PutRequest, PutResponse, RangeRequest

from .test_direct_writes import _CallbackBackend, _wait_parked
from .test_server import RawConn, run


class _CountingTransport:
    """Wraps a connection's transport to count its writes."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.inner.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_lone_answer_leaves_at_once_answers_with_others_in_flight_together() -> None:
    async def body() -> None:
        backend = _CallbackBackend()
        server = await serve_native(backend, "127.0.0.1", 0)
        conn = await RawConn.open(server)
        conn.send(*(m.Request(i, PutRequest(b"k%d" % i, b"v")) for i in range(1, 51)))
        await _wait_parked(backend, 50)
        (served,) = server.connections
        counting = _CountingTransport(served._transport)
        served._transport = counting  # type: ignore[assignment]
        parked, backend.parked = backend.parked, []
        for i, (*_, waiter) in enumerate(parked[:-1], start=1):
            waiter.resolve(PutResponse(i))  # as the Ready loop does: in one turn
        assert counting.writes == 0  # others still in flight: gathered for the turn's end
        parked[-1][3].resolve(PutResponse(50))
        assert counting.writes == 1  # the last one: nothing left in flight, all leave now
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert counting.writes == 1  # the scheduled flush found nothing more
        assert [a.id for a in await conn.answers(50)] == list(range(1, 51))
        conn.send(m.Request(51, PutRequest(b"k", b"v")))
        await _wait_parked(backend, 1)
        backend.parked[0][3].resolve(PutResponse(51))  # a lone write: at once
        assert counting.writes == 2
        assert [a.id for a in await conn.answers(1)] == [51]
        await server.close()

    run(body())


def test_client_and_server_sockets_have_tcp_nodelay() -> None:
    """Nagle's algorithm is off on both ends (asyncio sets TCP_NODELAY on TCP sockets; the
    client and the server rely on it): a lone request or answer leaves at once."""
    async def body() -> None:
        server = await serve_native(LocalBackend(), "127.0.0.1", 0)
        client = await open_connection(server.endpoint, timeout_s=5)
        await client.request(m.Request(1, RangeRequest(b"k")))
        (served,) = server.connections
        assert client._transport is not None and served._transport is not None
        for transport in (client._transport, served._transport):
            sock = transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        client.close()
        await server.close()

    run(body())

"""Nagle's algorithm is off on both ends of a peer link (asyncio and uvloop set TCP_NODELAY
on TCP sockets): a small append or ack must not wait for the previous segment's ACK."""

from __future__ import annotations

import socket

from .harness import Node, app, cluster, eventually, run


def test_peer_links_have_tcp_nodelay_on_both_ends(loop_name: str) -> None:
    async def scenario() -> None:
        a, b = Node(1), Node(2)
        await cluster(a, b)
        a.transport.send([app(1, 2, 1)])
        await eventually(lambda: len(b.received) == 1, "the link is up")
        writer = a.transport._links[2]._writer
        assert writer is not None
        sockets = [writer.get_extra_info("socket")]
        sockets += [c._transport.get_extra_info("socket")  # type: ignore[union-attr]
                    for c in b.transport._inbound.connections]
        assert len(sockets) == 2
        for sock in sockets:
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        await a.transport.close()
        await b.transport.close()

    run(scenario(), loop_name)

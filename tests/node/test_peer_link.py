"""PeerLink wiring: the transport's peer-closed hint reaches the core as leader_lost."""

from __future__ import annotations

from typing import Any

from quorum.node.peers import PeerLink
from quorum.raft.types import Message, MessageType
from quorum.transport.tcp import PeerTransport

from .test_core import Net


class _Server:
    """What PeerLink uses of a RaftServer."""

    def __init__(self, core: Any) -> None:
        self.core = core
        self.wakes = 0

    def wake(self) -> None:
        self.wakes += 1


def _transport() -> PeerTransport:
    return PeerTransport(7, 2, ("127.0.0.1", 0), {}, lambda _m: None, lambda _p: None,
                         _no_chunks)


async def _no_chunks(_peer: int, _chunk: Any) -> None:
    return None


def test_a_closed_stream_from_the_leader_ends_the_followers_lease() -> None:
    net = Net(3)
    leader = net.elect()
    follower = next(i for i in net.cores if i != leader)
    other = next(i for i in net.cores if i not in (leader, follower))
    core = net.cores[follower]
    server = _Server(core)
    link = PeerLink(server)  # type: ignore[arg-type]
    transport = _transport()
    link.transport = transport
    hook = transport.on_peer_closed
    assert hook is not None and hook == link.on_peer_closed
    assert core.rn.raft.in_lease()
    hook(other)  # not the leader: nothing changes
    core.drain()
    assert core.rn.raft.in_lease()
    hook(leader)
    assert server.wakes == 2
    core.drain()
    assert not core.rn.raft.in_lease()
    assert core.rn.raft.lead == leader  # still its follower until the election


def test_a_transport_fault_drops_the_messages_and_never_reaches_the_ready_loop(
        caplog: Any) -> None:
    """The Ready loop stops the node on any exception (storage failures must stop it); a
    fault in the peer transport must not: Raft resends lost messages."""
    net = Net(3)
    leader = net.elect()
    server = _Server(net.cores[leader])

    class Broken:
        on_peer_closed = None

        def send(self, messages: Any) -> None:
            raise RuntimeError("the handler is closed")

        def flush(self) -> None:
            raise AssertionError("not reached")

    link = PeerLink(server)  # type: ignore[arg-type]
    link._transport = Broken()  # type: ignore[assignment]
    follower = next(i for i in net.cores if i != leader)
    link.send([Message(MessageType.HEARTBEAT, to=follower, from_=leader, term=1)])  # no raise
    assert "sending 1 messages failed; dropped" in caplog.text

"""PeerLink wiring: the transport's peer-closed hint reaches the core as leader_lost."""

from __future__ import annotations

from typing import Any

from quorum.node.peers import PeerLink
from quorum.node.server import FORWARDER_WINDOW_S, RaftServer
from quorum.raft.types import Entry, Message, MessageType
from quorum.transport.tcp import PeerTransport

from .test_core import Net


class _Server:
    """What PeerLink uses of a RaftServer."""

    def __init__(self, core: Any) -> None:
        self.core = core
        self.wakes = 0
        self.forwarders: set[int] = set()

    def wake(self) -> None:
        self.wakes += 1

    def forwarded_recently(self, peer: int) -> bool:
        return peer in self.forwarders


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


class _Recorder:
    """A transport that records each send (with its ``lazy`` flag) and each flush."""

    on_peer_closed = None

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[MessageType], bool]] = []

    def send(self, messages: list[Message], *, lazy: bool = False) -> None:
        self.calls.append(("send", [m.type for m in messages], lazy))

    def flush(self) -> None:
        self.calls.append(("flush", [], False))


def _link_with_recorder() -> tuple[PeerLink, _Recorder, _Server]:
    net = Net(3)
    server = _Server(net.cores[net.elect()])
    link = PeerLink(server)  # type: ignore[arg-type]
    recorder = _Recorder()
    link._transport = recorder  # type: ignore[assignment]
    return link, recorder, server


def test_commit_notices_are_sent_lazily_and_everything_else_at_once() -> None:
    """An append without entries (a commit notice) waits for the next write to its peer;
    appends with entries, acks, heartbeats and read answers are written at once, and a
    batch that mixes both is written at once too (a notice never delays what follows it)."""
    link, rec, server = _link_with_recorder()
    entry = Entry(term=1, index=2, data=b"x")
    notice = [Message(MessageType.APP, to=2, from_=1, term=1, index=2, commit=2),
              Message(MessageType.APP, to=3, from_=1, term=1, index=2, commit=2)]
    link.send(notice)
    assert rec.calls == [("send", [MessageType.APP, MessageType.APP], True)]
    for urgent in (
        [Message(MessageType.APP, to=2, from_=1, term=1, index=1, entries=(entry,))],
        [Message(MessageType.APP_RESP, to=2, from_=1, term=1, index=2)],
        [Message(MessageType.HEARTBEAT, to=2, from_=1, term=1)],
        [Message(MessageType.READ_INDEX_RESP, to=2, from_=1, term=1, index=2)],
        [notice[0], Message(MessageType.HEARTBEAT, to=3, from_=1, term=1)],
    ):
        rec.calls.clear()
        link.send(urgent)
        assert rec.calls == [("send", [m.type for m in urgent], False), ("flush", [], False)]

    # A follower that forwards writes answers them only when it learns the commit: its
    # notices leave at once (and so does a batch that includes one of them).
    server.forwarders.add(3)
    rec.calls.clear()
    link.send(notice)
    assert rec.calls == [("send", [MessageType.APP, MessageType.APP], False), ("flush", [], False)]
    rec.calls.clear()
    link.send(notice[:1])  # to 2, which forwards nothing: lazy again
    assert rec.calls == [("send", [MessageType.APP], True)]


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_the_server_remembers_which_peers_forwarded_proposals_for_a_while() -> None:
    net = Net(3)
    leader = net.elect()
    clock = _Clock()
    server = RaftServer(net.cores[leader], clock=clock)
    others = [i for i in net.cores if i != leader]
    server.receive([Message(MessageType.APP_RESP, to=leader, from_=others[0], term=1),
                    Message(MessageType.PROP, to=leader, from_=others[1], term=1,
                            entries=(Entry(term=0, index=0, data=b"x"),))])
    assert server.forwarded_recently(others[1])
    assert not server.forwarded_recently(others[0])  # only proposals count
    clock.now += FORWARDER_WINDOW_S / 2
    assert server.forwarded_recently(others[1])
    clock.now += FORWARDER_WINDOW_S
    assert not server.forwarded_recently(others[1])
    server._persister.close()

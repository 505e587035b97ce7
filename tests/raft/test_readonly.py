"""ReadOnly bookkeeping: in-order release once a context is acknowledged."""

from __future__ import annotations

from quorum.raft.readonly import ReadOnly
from quorum.raft.types import Entry, Message, MessageType


def req(ctx: bytes) -> Message:
    return Message(type=MessageType.READ_INDEX, entries=(Entry(term=0, index=0, data=ctx),))


def test_release_in_order_up_to_the_acked_context() -> None:
    ro = ReadOnly()
    assert ro.add_request(5, req(b"a"), 1)
    assert ro.add_request(6, req(b"b"), 1)
    assert ro.add_request(7, req(b"c"), 1)
    assert not ro.add_request(9, req(b"a"), 1)  # duplicate context ignored
    assert ro.recv_ack(2, b"b") == {1, 2}
    assert ro.recv_ack(2, b"zzz") is None
    released = ro.advance(b"b")
    assert [(s.request.entries[0].data, s.index) for s in released] == [(b"a", 5), (b"b", 6)]
    assert ro.last_pending_context() == b"c" and ro.count() == 1
    assert ro.advance(b"b") == []

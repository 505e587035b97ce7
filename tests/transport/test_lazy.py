"""Lazy sends: messages nothing waits for travel with the next write to their peer."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from quorum.errors import ConfigError
from quorum.raft.types import Message, MessageType
from quorum.transport.tcp import TransportConfig

from .harness import FAST, Node, app, cluster, eventually, run

# Long enough that no test below reaches it unless it waits for it on purpose.
HOLD = dataclasses.replace(FAST, lazy_flush_s=30.0)


def notice(frm: int, to: int, commit: int) -> Message:
    """An append without entries: a commit notice."""
    return Message(MessageType.APP, to=to, from_=frm, term=1, index=commit, commit=commit)


async def _connected(a: Node, b: Node) -> None:
    a.transport.send([app(a.member_id, b.member_id, 1)])
    await eventually(lambda: len(b.received) == 1, "the link is up")


async def _turns(n: int = 20) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def test_lazy_messages_wait_and_leave_first_with_the_next_write(loop_name: str) -> None:
    async def scenario() -> None:
        a, b = Node(1, config=HOLD), Node(2)
        await cluster(a, b)
        await _connected(a, b)
        stats = a.transport.link_stats()[2]
        frames = stats.sent_frames
        a.transport.send([notice(1, 2, 1)], lazy=True)
        a.transport.send([notice(1, 2, 2)], lazy=True)
        await _turns()
        assert stats.sent_messages == 1 and len(b.received) == 1  # still queued
        a.transport.send([app(1, 2, 2)])
        await eventually(lambda: len(b.received) == 4, "delivered with the append")
        assert [m.commit for m in b.received[1:3]] == [1, 2]  # queued first, leave first
        assert b.received[3].entries[0].index == 2
        assert stats.sent_frames == frames + 1  # one write for all three
        await a.transport.close()
        await b.transport.close()

    run(scenario(), loop_name)


def test_flush_takes_lazy_messages_along(loop_name: str) -> None:
    async def scenario() -> None:
        a, b = Node(1, config=HOLD), Node(2)
        await cluster(a, b)
        await _connected(a, b)
        a.transport.send([notice(1, 2, 1)], lazy=True)
        a.transport.flush()
        assert a.transport.link_stats()[2].sent_messages == 2  # written before yielding
        await eventually(lambda: len(b.received) == 2, "delivered")
        await a.transport.close()
        await b.transport.close()

    run(scenario(), loop_name)


def test_lazy_messages_alone_leave_after_lazy_flush_s(loop_name: str) -> None:
    async def scenario() -> None:
        a, b = Node(1, config=dataclasses.replace(FAST, lazy_flush_s=0.2)), Node(2)
        await cluster(a, b)
        await _connected(a, b)
        a.transport.send([notice(1, 2, 1)], lazy=True)
        await _turns()
        assert len(b.received) == 1  # not at the end of the turn, as a plain send would
        await eventually(lambda: len(b.received) == 2, "the lazy timer flushed it")
        assert b.received[1].commit == 1
        await a.transport.close()
        await b.transport.close()

    run(scenario(), loop_name)


def test_lazy_flush_s_zero_sends_lazy_messages_like_any_other(loop_name: str) -> None:
    async def scenario() -> None:
        a, b = Node(1, config=dataclasses.replace(FAST, lazy_flush_s=0.0)), Node(2)
        await cluster(a, b)
        await _connected(a, b)
        stats = a.transport.link_stats()[2]
        a.transport.send([notice(1, 2, 1)], lazy=True)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert stats.sent_messages == 2  # written at the end of the turn
        await eventually(lambda: len(b.received) == 2, "delivered")
        await a.transport.close()
        await b.transport.close()

    run(scenario(), loop_name)


def test_lazy_messages_queued_while_connecting_leave_once_connected(loop_name: str) -> None:
    async def scenario() -> None:
        a, b = Node(1, config=HOLD), Node(2)
        await cluster(a, b)  # the link is still connecting
        a.transport.send([notice(1, 2, 1)], lazy=True)
        await eventually(lambda: len(b.received) == 1, "flushed by the link on connect")
        await a.transport.close()
        await b.transport.close()

    run(scenario(), loop_name)


def test_close_with_a_lazy_timer_armed_leaves_nothing_behind(loop_name: str) -> None:
    async def scenario() -> None:
        a, b = Node(1, config=dataclasses.replace(FAST, lazy_flush_s=0.05)), Node(2)
        await cluster(a, b)
        await _connected(a, b)
        a.transport.send([notice(1, 2, 1)], lazy=True)
        await a.transport.close()
        await asyncio.sleep(0.1)  # the cancelled timer must not fire into a closed link
        assert len(b.received) == 1
        await b.transport.close()

    run(scenario(), loop_name)


def test_negative_lazy_flush_s_is_refused() -> None:
    with pytest.raises(ConfigError, match="lazy_flush_s"):
        TransportConfig(lazy_flush_s=-0.001).validate()

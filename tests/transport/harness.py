"""Loopback helpers: transports that record what they receive, and a raw socket client."""

from __future__ import annotations

import asyncio
import io
import random
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest

from quorum.raft.types import Entry, Message, MessageType
from quorum.transport.codec import (
    PROTOCOL_VERSION,
    Frame,
    FrameDecoder,
    FrameEncoder,
    Hello,
    SnapshotChunk,
    StreamKind,
)
from quorum.transport.tcp import Address, PeerTransport, TransportConfig

LOOPBACK = "127.0.0.1"
WATCHDOG_S = 20.0  # only guards against hangs; no test asserts on elapsed time

FAST = TransportConfig(backoff_initial_s=0.01, backoff_max_s=0.05, connect_timeout_s=2.0)


LOOPS = ["asyncio", "uvloop"]  # production runs uvloop when installed; tests cover both


def run(coro: Coroutine[Any, Any, None], loop: str = "asyncio") -> None:
    factory = None
    if loop == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(_guarded(coro))


async def _guarded(coro: Coroutine[Any, Any, None]) -> None:
    """Run a scenario; if it hangs, fail with the stack of every task (for diagnosis)."""
    task = asyncio.ensure_future(coro)
    done, _ = await asyncio.wait([task], timeout=60)
    if task in done:
        task.result()
        return
    stacks = io.StringIO()
    for other in asyncio.all_tasks():
        if other is not asyncio.current_task():
            other.print_stack(limit=6, file=stacks)
    task.cancel()
    raise AssertionError(f"scenario hung; tasks:\n{stacks.getvalue()}")


async def eventually(predicate: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WATCHDOG_S
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.005)


class Node:
    """A PeerTransport plus the record of everything its callbacks saw."""

    def __init__(self, member_id: int, cluster_id: int = 7,
                 config: TransportConfig = FAST, port: int = 0,
                 on_messages: Callable[[list[Message]], None] | None = None,
                 **kwargs: Any) -> None:
        self.member_id = member_id
        self.received: list[Message] = []
        self.unreachable: list[int] = []
        self.chunks: list[tuple[int, SnapshotChunk]] = []
        self.chunk_handler: Callable[[int, SnapshotChunk], Awaitable[None]] | None = None
        self.transport = PeerTransport(
            cluster_id, member_id, (LOOPBACK, port), {}, on_messages or self.received.extend,
            self.unreachable.append, self._on_chunk, config, rng=random.Random(member_id),
            **kwargs,
        )

    async def _on_chunk(self, peer: int, chunk: SnapshotChunk) -> None:
        if self.chunk_handler is not None:
            await self.chunk_handler(peer, chunk)  # the test decides what to keep
        else:
            self.chunks.append((peer, chunk))

    @property
    def address(self) -> Address:
        return self.transport.address

    def from_peer(self, peer: int) -> list[Message]:
        return [m for m in self.received if m.from_ == peer]


async def cluster(*nodes: Node) -> None:
    """Start the nodes and give each the addresses of all the others."""
    for node in nodes:
        await node.transport.start()
    book = {node.member_id: node.address for node in nodes}
    for node in nodes:
        node.transport.update_peers(book)


def app(frm: int, to: int, index: int, payload: int = 100) -> Message:
    entry = Entry(term=1, index=index, data=b"e" * payload)
    return Message(MessageType.APP, to=to, from_=frm, term=1, index=index - 1, entries=(entry,))


async def raw_handshake(
    address: Address, *, cluster_id: int = 7, from_id: int = 9, to_id: int = 1,
    kind: StreamKind = StreamKind.MESSAGES, version: int = PROTOCOL_VERSION,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, Frame]:
    reader, writer = await asyncio.open_connection(*address)
    writer.write(FrameEncoder().encode(Hello(cluster_id, from_id, to_id, version, kind)))
    decoder = FrameDecoder()
    while True:
        data = await reader.read(65536)
        assert data, "server closed before answering HELLO"
        frames = decoder.feed(data)
        if frames:
            return reader, writer, frames[0]


async def read_until_eof(reader: asyncio.StreamReader) -> bytes:
    """Everything the server still sends; returns once it closes (the watchdog bounds it)."""
    return await asyncio.wait_for(reader.read(), WATCHDOG_S)

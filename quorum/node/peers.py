"""The glue between a running node and its peer transport (server process and embedded mode).

``PeerLink`` sends a Ready's messages (snapshots streamed in chunks on their own connection,
everything else batched on the peer's link), reports snapshot outcomes and unreachable peers
back to the core, and reassembles inbound snapshot streams.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import msgspec

from quorum.node.config import split_addr
from quorum.node.envelope import MemberInfo
from quorum.node.server import RaftServer
from quorum.raft.types import Message, MessageType, Snapshot
from quorum.transport.codec import SnapshotChunk
from quorum.transport.tcp import PeerTransport

log = logging.getLogger("quorum.node")

SNAPSHOT_CHUNK_BYTES = 1 << 20


def peer_addresses(members: Mapping[int, MemberInfo]) -> dict[int, tuple[str, int]]:
    return {m.id: split_addr(m.peer_url) for m in members.values() if m.peer_url}


def _is_commit_notice(msg: Message) -> bool:
    """An append without entries: it only tells a follower the leader's commit index (or
    probes a follower already up to date). Usually nothing waits for it: a write sent to
    the leader is answered once the leader commits, and a follower's linearizable read is
    released by the heartbeat round of its ReadIndex, which leaves at once and takes every
    message queued before it along. So it is sent lazily (PeerTransport.send): with the
    next append to that follower, usually the next write's, or within ``lazy_flush_s``.
    Sent at once, each notice costs every follower a wake-up, a Ready and an ack, and the
    leader a write per follower and a step per ack, all in the way of the next write
    (measured in docs/benchmarks.md, "Running cluster"). The exception is a follower that
    forwards writes (RaftServer.forwarded_recently): it answers them only once it learns
    they committed, so its notices leave at once."""
    return msg.type == MessageType.APP and not msg.entries


class PeerLink:
    """Connects one RaftServer to one PeerTransport. Build it, then set ``transport``."""

    def __init__(self, server: RaftServer) -> None:
        self.server = server
        self._transport: PeerTransport | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        # inbound snapshot streams: (peer, snapshot id) -> (SNAP message, chunks so far)
        self._inbound: dict[tuple[int, int], tuple[Message, list[bytes]]] = {}

    @property
    def transport(self) -> PeerTransport | None:
        return self._transport

    @transport.setter
    def transport(self, transport: PeerTransport | None) -> None:
        self._transport = transport
        if transport is not None:
            transport.on_peer_closed = self.on_peer_closed

    def on_peer_closed(self, peer: int) -> None:
        """The peer closed its message stream to us; if it is our leader, it probably died
        (a SIGKILL closes its sockets at once): see NodeCore.leader_lost."""
        self.server.core.leader_lost(peer)
        self.server.wake()

    def send(self, messages: list[Message]) -> None:
        assert self.transport is not None
        plain = [m for m in messages if m.type != MessageType.SNAP]
        if plain:
            try:
                if all(_is_commit_notice(m) and not self.server.forwarded_recently(m.to)
                       for m in plain):
                    self.transport.send(plain, lazy=True)
                else:
                    self.transport.send(plain)
                    # Written now, not at the next loop turn: the Ready loop calls this once
                    # for a leader's appends (before its fsync) and once for what waited for
                    # the fsync (append acks, votes) -- each is on some write's critical
                    # path, and the loop may go on applying a large batch before it yields.
                    self.transport.flush()
            except Exception:
                # The Ready loop stops the node on any exception it sees (a storage failure
                # must). A transport fault must not: Raft tolerates lost messages (they are
                # resent), so they are dropped here, loudly.
                log.exception("node %d: sending %d messages failed; dropped",
                              self.server.core.id, len(plain))
        if len(plain) != len(messages):
            for m in messages:
                if m.type == MessageType.SNAP:
                    self._spawn(self._send_snapshot(m))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_snapshot(self, msg: Message) -> None:
        """Stream the snapshot; every send ends with report_snapshot (the core waits for it
        before it sends that follower anything but heartbeats)."""
        assert self.transport is not None
        snap = msg.snapshot or Snapshot()
        data = snap.data
        head = msgspec.structs.replace(msg, snapshot=Snapshot(snap.metadata, b""))

        async def chunks() -> AsyncIterator[bytes]:
            for off in range(0, max(len(data), 1), SNAPSHOT_CHUNK_BYTES):
                yield data[off : off + SNAPSHOT_CHUNK_BYTES]

        ok = True
        try:
            await self.transport.send_snapshot(msg.to, head, chunks())
        except Exception as exc:  # the leader retries after report_snapshot(ok=False)
            log.warning("node %d: snapshot to %d failed: %s", self.server.core.id, msg.to, exc)
            ok = False
        self.server.core.report_snapshot(msg.to, ok)
        self.server.wake()

    async def on_snapshot_chunk(self, peer: int, chunk: SnapshotChunk) -> None:
        key = (peer, chunk.snapshot_id)
        if chunk.message is not None:
            # A new stream from this peer: whatever it left unfinished is abandoned.
            for stale in [k for k in self._inbound if k[0] == peer]:
                del self._inbound[stale]
            self._inbound[key] = (chunk.message, [])
        entry = self._inbound.get(key)
        if entry is None:
            raise ValueError("snapshot chunk without its first chunk")
        entry[1].append(chunk.data)
        if chunk.last:
            msg, parts = self._inbound.pop(key)
            meta = (msg.snapshot or Snapshot()).metadata
            snap = Snapshot(meta, b"".join(parts))
            self.server.receive([msgspec.structs.replace(msg, snapshot=snap)])

    def on_unreachable(self, peer: int) -> None:
        self.server.core.report_unreachable(peer)
        self.server.wake()

    def update_peers(self, members: Mapping[int, MemberInfo]) -> None:
        if self.transport is not None:
            self.transport.update_peers(peer_addresses(members))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._inbound.clear()

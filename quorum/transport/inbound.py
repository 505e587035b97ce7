"""The listening side of the peer transport: one asyncio Protocol per inbound connection.

Bytes go straight from ``data_received`` into the frame decoder and decoded batches straight to
the runtime's ``on_messages``: no stream buffer, no task wake-up per read. Only snapshot
streams, whose callback is a coroutine, use a task (one per connection, not per chunk), and
they pause reading while it runs, so TCP flow control holds the sender back.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

from quorum.errors import BadFrame, FrameError, TransportError
from quorum.raft.types import Message
from quorum.transport.codec import (
    PROTOCOL_VERSION,
    Frame,
    FrameDecoder,
    FrameEncoder,
    Hello,
    HelloAck,
    MessageBatch,
    Ping,
    Pong,
    Reject,
    SnapshotAck,
    SnapshotChunk,
    StreamKind,
    check_inbound_messages,
    check_snapshot_message,
)
from quorum.transport.config import TransportConfig

log = logging.getLogger("quorum.transport")

OnMessages = Callable[[list[Message]], None]
OnSnapshotChunk = Callable[[int, SnapshotChunk], Awaitable[None]]


class InboundServer:
    """Everything a node's listener needs: handshake rules, delivery, live connections."""

    def __init__(
        self,
        cluster_id: int,
        member_id: int,
        config: TransportConfig,
        encoder: FrameEncoder,
        on_messages: OnMessages,
        on_snapshot_chunk: OnSnapshotChunk,
    ) -> None:
        self.cluster_id = cluster_id
        self.member_id = member_id
        self.config = config
        self.encoder = encoder
        self.on_messages = on_messages
        self.on_snapshot_chunk = on_snapshot_chunk
        self.connections: set[InboundConnection] = set()
        # The live MESSAGES connection of each peer (see InboundConnection._start_messages).
        self.message_streams: dict[int, InboundConnection] = {}
        self.received_messages = 0
        self.rejected_connections = 0
        # Called with a peer's id when its live message stream is closed by the peer (or the
        # network), not by us: e.g. the peer process died. A failure detector hint only.
        self.on_peer_closed: Callable[[int], None] | None = None

    def protocol(self) -> InboundConnection:
        return InboundConnection(self)

    def refusal(self, hello: Hello) -> str:
        """Why a HELLO is refused, or "" to accept it."""
        if hello.protocol_version != PROTOCOL_VERSION:
            return f"protocol version {hello.protocol_version} unsupported"
        if hello.cluster_id != self.cluster_id:
            return f"cluster id {hello.cluster_id} is not {self.cluster_id}"
        if hello.to_id != self.member_id:
            return f"this is member {self.member_id}, not {hello.to_id}"
        if hello.from_id == self.member_id:
            return f"member {hello.from_id} cannot connect to itself"
        return ""

    def deliver(self, from_id: int, messages: list[Message]) -> None:
        check_inbound_messages(messages, from_id, self.member_id)
        self.received_messages += len(messages)
        self.on_messages(messages)

    async def close(self) -> None:
        """Close every inbound connection and wait for their snapshot tasks."""
        tasks = [task for conn in list(self.connections) if (task := conn.abort()) is not None]
        await asyncio.gather(*tasks, return_exceptions=True)


class InboundConnection(asyncio.Protocol):
    """One inbound connection: HELLO first, then MESSAGES or SNAPSHOT frames per its kind.

    Any malformed input closes this connection only, with the reason logged.
    """

    def __init__(self, server: InboundServer) -> None:
        self._server = server
        self._decoder = FrameDecoder(server.config.max_frame_bytes)
        self._transport: asyncio.Transport | None = None
        self._peer: Any = None
        self._kind: StreamKind | None = None  # None until the handshake is done
        self._from_id = 0
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._snapshot: _SnapshotReceiver | None = None
        self._chunks: collections.deque[SnapshotChunk] = collections.deque()
        self._chunk_task: asyncio.Task[None] | None = None

    # --- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's does not subclass asyncio.Transport: no isinstance).
        self._transport = cast(asyncio.Transport, transport)
        self._peer = transport.get_extra_info("peername")
        self._server.connections.add(self)
        loop = asyncio.get_running_loop()
        timeout_s = self._server.config.handshake_timeout_s
        self._timer = loop.call_later(
            timeout_s, self._close, f"dropping {self._peer}: no HELLO within {timeout_s} s",
            logging.INFO,
        )

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        try:
            for frame in self._decoder.feed(data):
                if self._closed:
                    return  # rejected, superseded or failed earlier in this read
                self._on_frame(frame)
        except FrameError as exc:
            self._close(f"closing connection from {self._peer}: {exc}", logging.WARNING)
        except Exception:
            # A runtime callback raised: a bug above us. Drop this connection, keep serving.
            log.exception("closing connection from %s: callback failed", self._peer)
            self._close("", logging.DEBUG)

    def eof_received(self) -> bool:
        if self._decoder.buffered_bytes and not self._closed:
            self._close(
                f"closing connection from {self._peer}: truncated frame: EOF with "
                f"{self._decoder.buffered_bytes} bytes pending",
                logging.WARNING,
            )
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        closed_by_peer = not self._closed and self._kind == StreamKind.MESSAGES
        live = closed_by_peer and not self._superseded()
        self._closed = True
        self._forget()
        hook = self._server.on_peer_closed
        if live and hook is not None:
            try:
                hook(self._from_id)
            except Exception:
                log.exception("on_peer_closed(%d) raised", self._from_id)

    # --- frames ---------------------------------------------------------------------------

    def _on_frame(self, frame: Frame) -> None:
        if self._kind is None:
            self._on_hello(frame)
        elif isinstance(frame, Ping):
            self._write(Pong(frame.nonce))
        elif self._kind == StreamKind.MESSAGES:
            if self._superseded():
                # A newer stream of the same peer took over: what is still buffered here is
                # older than anything on the new one; delivering it would reorder.
                self._close("", logging.DEBUG)
            elif isinstance(frame, MessageBatch):
                self._server.deliver(self._from_id, frame.messages)
            else:
                raise BadFrame(f"unexpected {type(frame).__name__} on a message stream")
        elif isinstance(frame, SnapshotChunk):
            self._queue_chunk(frame)
        else:
            raise BadFrame(f"unexpected {type(frame).__name__} on a snapshot stream")

    def _on_hello(self, frame: Frame) -> None:
        if not isinstance(frame, Hello):
            raise BadFrame(f"expected HELLO, got {type(frame).__name__}")
        reason = self._server.refusal(frame)
        if reason:
            self._server.rejected_connections += 1
            self._write(Reject(reason))
            self._close(f"rejected connection from {self._peer}: {reason}", logging.WARNING)
            return
        if self._timer is not None:
            self._timer.cancel()
        self._write(HelloAck(self._server.member_id))
        self._from_id, self._kind = frame.from_id, frame.kind
        if frame.kind == StreamKind.MESSAGES:
            self._take_over()
        else:
            self._snapshot = _SnapshotReceiver(self._server, frame.from_id, self._write)

    # --- one live message stream per peer ---------------------------------------------------

    def _take_over(self) -> None:
        """Become the peer's live message stream and close the older one.

        Invariant: delivery order = send order across reconnects. The peer dials again only
        after giving up on its old link, so everything the old connection still holds was
        sent before anything on this one.
        """
        streams = self._server.message_streams
        older = streams.get(self._from_id)
        streams[self._from_id] = self
        if older is not None:
            older._close("", logging.DEBUG)

    def _superseded(self) -> bool:
        return self._server.message_streams.get(self._from_id) is not self

    # --- snapshot streams -----------------------------------------------------------------

    def _queue_chunk(self, chunk: SnapshotChunk) -> None:
        # Reading pauses while chunks wait for the runtime: memory stays at one read's worth.
        self._chunks.append(chunk)
        if self._chunk_task is None and self._transport is not None:
            self._transport.pause_reading()
            self._chunk_task = asyncio.get_running_loop().create_task(self._feed_chunks())

    async def _feed_chunks(self) -> None:
        assert self._snapshot is not None
        try:
            while self._chunks and not self._closed:
                await self._snapshot.accept(self._chunks.popleft())
        except FrameError as exc:
            self._close(f"closing connection from {self._peer}: {exc}", logging.WARNING)
        except TransportError as exc:  # the runtime refused the snapshot (already logged)
            self._close(f"closing connection from {self._peer}: {exc}", logging.INFO)
        self._chunk_task = None
        if not self._closed and self._transport is not None:
            self._transport.resume_reading()

    # --- helpers --------------------------------------------------------------------------

    def _write(self, frame: Frame) -> None:
        # (uvloop raises on a write to a transport that closed under us)
        if self._transport is not None and not self._closed and not self._transport.is_closing():
            self._transport.write(self._server.encoder.encode(frame))

    def _close(self, reason: str, level: int) -> None:
        if self._closed:
            return
        if reason:
            log.log(level, "%s", reason)
        self._closed = True
        self._forget()
        if self._transport is not None:
            self._transport.close()  # flushes what was written (a REJECT, an ACK) first

    def abort(self) -> asyncio.Task[None] | None:
        """Close now (transport shutting down); return the snapshot task to wait for."""
        task = self._chunk_task
        if task is not None:
            task.cancel()
        self._close("", logging.DEBUG)
        return task

    def _forget(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._server.message_streams.get(self._from_id) is self:
            del self._server.message_streams[self._from_id]
        self._server.connections.discard(self)


class _SnapshotReceiver:
    """Per-connection checks of an inbound snapshot stream; holds offsets, never data."""

    def __init__(
        self, server: InboundServer, from_id: int, write: Callable[[Frame], None]
    ) -> None:
        self._server = server
        self._from_id = from_id
        self._write = write
        self._snapshot_id: int | None = None
        self._next_offset = 0

    async def accept(self, chunk: SnapshotChunk) -> None:
        """Check the chunk's place in the stream and hand it to the runtime.

        Raises BadFrame for a chunk out of order, TransportError if the runtime refused it
        (after answering SNAPSHOT_ACK(ok=False)).
        """
        self._check_order(chunk)
        self._next_offset = chunk.offset + len(chunk.data)
        try:
            await self._server.on_snapshot_chunk(self._from_id, chunk)
        except Exception as exc:
            log.warning("snapshot %d from %d refused by the runtime: %r", chunk.snapshot_id,
                        self._from_id, exc)
            self._write(SnapshotAck(chunk.snapshot_id, False, f"receiver failed: {exc!r}"))
            raise TransportError(f"snapshot {chunk.snapshot_id} refused: {exc!r}") from exc
        if chunk.last:
            self._snapshot_id = None
            self._write(SnapshotAck(chunk.snapshot_id, True, ""))

    def _check_order(self, chunk: SnapshotChunk) -> None:
        if self._snapshot_id is None:
            if chunk.offset != 0:
                raise BadFrame(f"snapshot {chunk.snapshot_id} starts at offset {chunk.offset}")
            check_snapshot_message(chunk.message, self._from_id, self._server.member_id)
            self._snapshot_id = chunk.snapshot_id
        elif chunk.snapshot_id != self._snapshot_id or chunk.offset != self._next_offset:
            raise BadFrame(
                f"snapshot chunk {chunk.snapshot_id}@{chunk.offset} out of order "
                f"(expected {self._snapshot_id}@{self._next_offset})"
            )

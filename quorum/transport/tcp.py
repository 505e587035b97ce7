"""asyncio TCP links between Raft peers.

One :class:`PeerTransport` per node. It runs a server for inbound connections and keeps one
outbound link per peer. Connections are one-way for Raft traffic: a node writes its messages
on its own outbound link and reads the peer's messages from the peer's inbound connection.
Snapshots travel on a connection of their own, so a multi-MiB stream never delays heartbeats.

Every connection starts with HELLO (cluster id, from, to, version) answered by HELLO_ACK or
REJECT(reason). A connection that sends anything malformed is closed with a logged reason;
nothing else is affected. Nothing is logged per message.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import random
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Final

import msgspec

from quorum.errors import (
    BadFrame,
    ConfigError,
    FrameTooLarge,
    HandshakeRejected,
    SnapshotSendFailed,
    TransportError,
    UsageError,
)
from quorum.raft.types import Message, MessageType
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
)
from quorum.transport.config import Backoff, TransportConfig
from quorum.transport.inbound import InboundServer, OnMessages, OnSnapshotChunk

__all__ = [
    "Address",
    "Backoff",  # re-exported from quorum.transport.config
    "LinkStats",
    "OnMessages",
    "OnSnapshotChunk",
    "OnUnreachable",
    "PeerTransport",
    "TransportConfig",  # re-exported from quorum.transport.config
]

log = logging.getLogger("quorum.transport")

Address = tuple[str, int]
OnUnreachable = Callable[[int], None]

# Errors that mean "this connection is unusable". Anything else is a bug: a link logs it with
# its traceback and reconnects (its task must never end: see _Link._run).
_CONNECTION_ERRORS: Final = (OSError, TimeoutError, EOFError, TransportError)


class _FrameReader:
    """Frames from a stream, with typed errors: EOF mid-frame is a truncated frame."""

    def __init__(self, reader: asyncio.StreamReader, config: TransportConfig) -> None:
        self._reader = reader
        self._decoder = FrameDecoder(config.max_frame_bytes)
        self._chunk = config.read_chunk_bytes
        self._leftover: list[Frame] = []

    async def read_frames(self) -> list[Frame]:
        """The next non-empty list of frames, or [] on a clean EOF at a frame boundary."""
        if self._leftover:
            frames, self._leftover = self._leftover, []
            return frames
        while True:
            data = await self._reader.read(self._chunk)
            if not data:
                if self._decoder.buffered_bytes:
                    raise BadFrame(
                        f"truncated frame: EOF with {self._decoder.buffered_bytes} bytes pending"
                    )
                return []
            frames = self._decoder.feed(data)
            if frames:
                return frames

    async def read_one(self) -> Frame:
        """The next frame; raises EOFError if the stream ends first."""
        frames = await self.read_frames()
        if not frames:
            raise EOFError("connection closed by peer")
        self._leftover = frames[1:]
        return frames[0]


@dataclasses.dataclass
class LinkStats:
    """Counters of one outbound link (cheap integers, read by benchmarks and status)."""

    sent_messages: int = 0
    sent_frames: int = 0
    sent_bytes: int = 0
    dropped_messages: int = 0
    connects: int = 0
    connect_failures: int = 0
    pongs_received: int = 0


class _Link:
    """The outbound link to one peer: a bounded queue, flushed once per event-loop turn.

    ``enqueue`` schedules one ``_flush`` callback per loop turn (``call_soon``, no task wake-up
    per batch), which encodes everything queued and writes it at once. Only when the socket
    is backed up does the link's task take over: it awaits ``drain()`` and flushes again.
    States: connecting (messages queue), connected (messages queue and are written each turn),
    backing off after a failure (messages are dropped and the peer reported unreachable).
    Invariant: messages leave in the order they were queued; a failure drops the queue instead
    of reordering it. Lost messages are Raft's normal case (retries, heartbeats).
    """

    def __init__(self, owner: PeerTransport, peer_id: int, address: Address) -> None:
        self.owner = owner
        self.peer_id = peer_id
        self.address = address
        self.stats = LinkStats()
        self._pending: list[Message] = []
        self._wakeup = asyncio.Event()
        self._accepting = True  # False while backing off after a failure
        self._broken: str | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._flush_scheduled = False
        # armed while only lazy messages are queued: they leave by then at the latest
        self._lazy_timer: asyncio.TimerHandle | None = None
        self._stopped = False
        self._failures_in_row = 0
        self._failure_kind = ""  # the kind of the outage's last failure (see _fail)
        self._last_pong = 0.0
        self._loop = asyncio.get_running_loop()
        self.task = self._loop.create_task(self._run())

    def enqueue(self, messages: list[Message], lazy: bool = False) -> bool:
        """Queue messages; False if some were dropped (backing off or the queue is full).
        ``lazy``: see PeerTransport.send."""
        room = self.owner.config.max_queued_messages - len(self._pending) if self._accepting else 0
        kept = messages if room >= len(messages) else messages[:max(room, 0)]
        if kept:
            self._pending += kept  # (a prefix keeps the order of what we keep)
            if lazy and self.owner.config.lazy_flush_s > 0:
                self._arm_lazy_timer()
            else:
                self._schedule_flush()
        if len(kept) == len(messages):
            return True
        self.stats.dropped_messages += len(messages) - max(room, 0)
        return False

    def _arm_lazy_timer(self) -> None:
        # Without a writer the link task flushes the queue once connected.
        if self._lazy_timer is None and self._writer is not None:
            self._lazy_timer = self._loop.call_later(
                self.owner.config.lazy_flush_s, self._lazy_due)

    def _lazy_due(self) -> None:
        self._lazy_timer = None
        self._flush()

    def stop(self) -> None:
        # Cancelling alone is not enough on Python 3.11: asyncio.wait_for can swallow a
        # cancellation that races with its inner future completing, so the task also checks
        # the flag at every step.
        self._stopped = True
        self._cancel_lazy_timer()
        self._wakeup.set()
        self.task.cancel()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _schedule_flush(self) -> None:
        # One flush per loop turn however many send() calls the turn makes. While connecting
        # there is no writer: the link task flushes once the handshake is done.
        if not self._flush_scheduled and self._writer is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def flush_now(self) -> None:
        """Flush at once if anything is queued (the scheduled flush then finds nothing)."""
        if self._pending:
            self._flush()

    def _cancel_lazy_timer(self) -> None:
        if self._lazy_timer is not None:
            self._lazy_timer.cancel()
            self._lazy_timer = None

    def _flush(self) -> None:
        """Encode everything queued once and write it, unless the socket is backed up."""
        self._flush_scheduled = False
        self._cancel_lazy_timer()  # lazy messages queued so far leave with this write
        writer = self._writer
        if writer is None or not self._pending or self._broken is not None:
            return
        if writer.transport.is_closing():
            # Closed under us (the peer reset it) before the link's reader noticed: writing
            # would raise (uvloop: RuntimeError) into the caller, the node's Ready loop.
            self._broken = "connection closed"
            self._wakeup.set()  # the link task ends this connection and reconnects
            return
        if writer.transport.get_write_buffer_size() >= self.owner.config.write_buffer_high_bytes:
            self._wakeup.set()  # back-pressure: the link task awaits drain(), then flushes
            return
        batch, self._pending = self._pending, []
        frames, encoded = self.owner.encode_batch(self.peer_id, batch)
        data = b"".join(frames)
        try:
            writer.write(data)
        except (RuntimeError, *_CONNECTION_ERRORS) as exc:  # a send path never raises
            self._broken = f"write failed: {exc!r}"
            self._wakeup.set()
            self.stats.dropped_messages += len(batch)
            return
        self.stats.sent_messages += encoded
        self.stats.dropped_messages += len(batch) - encoded
        self.stats.sent_frames += len(frames)
        self.stats.sent_bytes += len(data)

    async def _run(self) -> None:
        backoff = Backoff(self.owner.config, self.owner.rng)
        while not self._stopped:
            try:
                self._accepting = True
                reader, writer = await self.owner.dial(self.peer_id, self.address)
            except _CONNECTION_ERRORS as exc:
                if self._stopped:
                    return
                self.stats.connect_failures += 1
                self._fail(f"cannot connect to {self.address}: {exc!r}", type(exc).__name__)
                await asyncio.sleep(backoff.next_delay_s())
                continue
            except Exception as exc:
                # A bug, but this task must not end on it: a dead link task leaves the link
                # accepting messages that are never written, with nothing logged, and the
                # node cut off from the peer until it restarts (an election can stall).
                log.exception("link %d->%d: unexpected error while connecting",
                              self.owner.member_id, self.peer_id)
                if self._stopped:
                    return
                self.stats.connect_failures += 1
                self._fail(f"cannot connect to {self.address}: {exc!r}")
                await asyncio.sleep(backoff.next_delay_s())
                continue
            if self._stopped:
                writer.close()
                return
            backoff.reset()
            self._failures_in_row = 0
            self._failure_kind = ""
            self.stats.connects += 1
            log.info("link %d->%d connected to %s", self.owner.member_id, self.peer_id,
                     self.address)
            reason = await self._serve(reader, writer)
            if self._stopped:
                return
            self._fail(reason)
            await asyncio.sleep(backoff.next_delay_s())

    def _fail(self, reason: str, kind: str = "") -> None:
        """Drop what is queued, refuse new messages until the next attempt, and report.
        ``kind`` names the failure (the exception's class for a failed connect)."""
        self._accepting = False
        self.stats.dropped_messages += len(self._pending)
        self._pending = []
        self._failures_in_row += 1
        # Warn once per outage, and again when the failure changes kind (a peer that was
        # refusing connections now starts and fails the TLS check: the operator must see
        # that); repeated attempts failing the same way go to debug.
        changed = bool(kind) and kind != self._failure_kind
        self._failure_kind = kind or self._failure_kind
        level = logging.WARNING if self._failures_in_row == 1 or changed else logging.DEBUG
        log.log(level, "link %d->%d down: %s", self.owner.member_id, self.peer_id, reason)
        self.owner.report_unreachable(self.peer_id)

    async def _serve(self, frames: _FrameReader, writer: asyncio.StreamWriter) -> str:
        """Write until the connection breaks; return why it broke."""
        loop = asyncio.get_running_loop()
        self._writer, self._broken, self._last_pong = writer, None, loop.time()
        watcher = loop.create_task(self._watch(frames))
        pinger = loop.create_task(self._keepalive(writer))
        try:
            await self._write_loop(writer)
        except _CONNECTION_ERRORS as exc:
            self._broken = self._broken or f"write failed: {exc!r}"
        except Exception as exc:  # a bug: logged, and the link reconnects (see _run)
            log.exception("link %d->%d: unexpected error while writing",
                          self.owner.member_id, self.peer_id)
            self._broken = self._broken or f"write failed: {exc!r}"
        finally:
            watcher.cancel()
            pinger.cancel()
            writer.close()
            self._writer = None
        return self._broken or "closed"

    async def _write_loop(self, writer: asyncio.StreamWriter) -> None:
        # The hot path is _flush; this loop only handles what it cannot: what was queued
        # while connecting, a backed-up socket, and the connection breaking.
        self._wakeup.clear()
        self._flush()
        while not self._stopped:
            await self._wakeup.wait()
            self._wakeup.clear()
            if self._broken is not None or self._stopped:
                return
            await writer.drain()
            self._flush()

    async def _watch(self, frames: _FrameReader) -> None:
        """Notice a peer closing or breaking the connection even while we have nothing to send.

        The server sends nothing after HELLO_ACK except PONGs, so any other frame is an error.
        """
        try:
            while True:
                got = await frames.read_frames()
                if not got:
                    raise EOFError("connection closed by peer")
                if any(not isinstance(f, Pong) for f in got):
                    raise BadFrame("unexpected frame on an outbound link")
                self._last_pong = asyncio.get_running_loop().time()
                self.stats.pongs_received += len(got)
        except _CONNECTION_ERRORS as exc:
            self._broken = f"{exc!r}"
            self._wakeup.set()

    async def _keepalive(self, writer: asyncio.StreamWriter) -> None:
        """PING the peer; declare the connection broken when PONGs stop (see TransportConfig)."""
        cfg, loop = self.owner.config, asyncio.get_running_loop()
        for nonce in itertools.count():
            await asyncio.sleep(cfg.ping_interval_s)
            silent_s = loop.time() - self._last_pong
            if silent_s > cfg.ping_interval_s + cfg.ping_timeout_s:
                self._broken = f"no PONG for {silent_s:.1f} s"
                self._wakeup.set()
                return
            if writer.transport.is_closing():  # the reader reports why; writing would raise
                return
            writer.write(self.owner.ping_frame(nonce))


class PeerTransport:
    """Peer messaging for one node: a server for inbound links, one outbound link per peer.

    Callbacks (all called on the event loop):

    - ``on_messages(messages)``: a batch from one peer, in that peer's send order. Messages are
      checked at the gateway: typed decode, sender and receiver ids match the connection, no
      local-only types.
    - ``on_unreachable(peer_id)``: messages to the peer were dropped or its link failed; the
      runtime calls ``report_unreachable`` on the core.
    - ``on_snapshot_chunk(peer_id, chunk)``: awaited once per chunk of an inbound snapshot, in
      order; the first chunk carries the SNAP message. Reading pauses while it runs, so memory
      stays bounded by one chunk per stream (TCP back-pressure stops the sender). If it raises,
      the sender's :meth:`send_snapshot` fails.

    Usage: ``await start()``, then ``send``/``send_snapshot``/``update_peers``; ``await
    close()`` at the end (the object is not reusable after that). ``rng`` draws the backoff
    jitter; pass a seeded one for reproducible runs. ``server_ssl``: the listening TLS context
    (plain TCP when None); ``client_ssl``: the outbound one, or a callable asked for the
    current one at each new connection (certificates reloaded while running).
    """

    def __init__(
        self,
        cluster_id: int,
        member_id: int,
        listen: Address,
        peers: Mapping[int, Address],
        on_messages: OnMessages,
        on_unreachable: OnUnreachable,
        on_snapshot_chunk: OnSnapshotChunk,
        config: TransportConfig | None = None,
        *,
        rng: random.Random | None = None,
        server_ssl: ssl.SSLContext | None = None,
        client_ssl: ssl.SSLContext | Callable[[], ssl.SSLContext] | None = None,
    ) -> None:
        self.config = config or TransportConfig()
        self.config.validate()
        if member_id <= 0:
            raise ConfigError("member_id must be a positive node id")
        self.cluster_id = cluster_id
        self.member_id = member_id
        self.rng = rng or random.Random()
        self._listen = listen
        self._peers = dict(peers)
        self._on_unreachable = on_unreachable
        self._server_ssl = server_ssl
        self._client_ssl = client_ssl
        self._encoder = FrameEncoder(self.config.max_frame_bytes)
        self._links: dict[int, _Link] = {}
        self._server: asyncio.Server | None = None
        self._inbound = InboundServer(
            cluster_id, member_id, self.config, self._encoder, on_messages, on_snapshot_chunk
        )
        self._stopping: set[asyncio.Task[None]] = set()
        self._snapshot_writers: set[asyncio.StreamWriter] = set()
        self._snapshot_ids = itertools.count(1)
        self._closed = False

    # --- life cycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the server and start the outbound links. Raises OSError if binding fails."""
        host, port = self._listen
        self._server = await asyncio.get_running_loop().create_server(
            self._inbound.protocol, host, port, ssl=self._server_ssl
        )
        self.update_peers(self._peers)

    @property
    def on_peer_closed(self) -> Callable[[int], None] | None:
        """Called (on the loop) with a peer's id when the peer, not we, closed its live
        message stream: typically the peer process died. Set it before or after start()."""
        return self._inbound.on_peer_closed

    @on_peer_closed.setter
    def on_peer_closed(self, hook: Callable[[int], None] | None) -> None:
        self._inbound.on_peer_closed = hook

    @property
    def received_messages(self) -> int:
        """Messages delivered to ``on_messages`` so far."""
        return self._inbound.received_messages

    @property
    def rejected_connections(self) -> int:
        """Inbound handshakes refused so far (wrong cluster, wrong member, bad version)."""
        return self._inbound.rejected_connections

    @property
    def address(self) -> Address:
        """The bound address (useful with port 0)."""
        if self._server is None:
            raise TransportError("transport not started")
        host, port = self._server.sockets[0].getsockname()[:2]
        return (host, port)

    async def close(self) -> None:
        """Stop serving, drop every link and pending message, and wait for the tasks to end."""
        if self._closed:
            return
        self._closed = True
        if self._server is not None:
            self._server.close()
        for link in self._links.values():
            link.stop()
            self._stopping.add(link.task)
        self._links.clear()
        for writer in self._snapshot_writers:
            writer.close()
        for task in self._stopping:
            task.cancel()
        await asyncio.gather(*self._stopping, self._inbound.close(), return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def update_peers(self, peers: Mapping[int, Address]) -> None:
        """Replace the peer address book (membership change): links to removed or moved peers
        are dropped, links to new peers start. Our own id is ignored."""
        self._peers = {pid: addr for pid, addr in peers.items() if pid != self.member_id}
        if self._closed or self._server is None:
            return  # not started (start() creates the links) or already closed
        for pid, link in list(self._links.items()):
            if self._peers.get(pid) != link.address:
                link.stop()
                self._stopping.add(link.task)
                link.task.add_done_callback(self._stopping.discard)
                del self._links[pid]
        for pid, addr in self._peers.items():
            if pid not in self._links:
                self._links[pid] = _Link(self, pid, addr)

    # --- sending --------------------------------------------------------------------------

    def send(self, messages: list[Message], *, lazy: bool = False) -> None:
        """Queue messages for their destinations (``msg.to``); never blocks, never raises.

        Messages to unknown peers, to peers whose link is backing off, or beyond a full queue
        are dropped and the peer reported unreachable (once per peer per call).

        ``lazy``: nothing waits for these messages, so they need not cost a write of their
        own: they stay queued until the next write to their peer (the next non-lazy send's
        flush, in order behind what was queued before them) or ``config.lazy_flush_s``
        at the latest. Without ``lazy`` a link writes at the end of the loop turn, or at
        :meth:`flush`.
        """
        by_peer: dict[int, list[Message]] = {}
        for msg in messages:
            group = by_peer.get(msg.to)
            if group is None:
                by_peer[msg.to] = [msg]
            else:
                group.append(msg)
        for peer_id, group in by_peer.items():
            link = self._links.get(peer_id)
            if link is None or not link.enqueue(group, lazy):
                self.report_unreachable(peer_id)

    def flush(self) -> None:
        """Write what is queued now instead of at the next loop turn (for messages on a
        latency-critical path, such as append acks right after the fsync they promise).
        Links that are connecting or backed up keep their queue, as ``send`` would."""
        for link in self._links.values():
            link.flush_now()

    def encode_batch(self, peer_id: int, batch: list[Message]) -> tuple[list[bytes], int]:
        """Encode a batch into frames; return them and how many messages they hold.

        A message too large for any frame is dropped alone (and the peer reported), so the
        size limit holds on the sending side too.
        """
        try:
            return self._encoder.encode_messages(batch), len(batch)
        except FrameTooLarge:
            pass
        kept = [m for m in batch if self._fits(m)]
        log.warning("dropped %d message(s) to %d larger than max_frame_bytes=%d",
                    len(batch) - len(kept), peer_id, self.config.max_frame_bytes)
        self.report_unreachable(peer_id)
        return (self._encoder.encode_messages(kept) if kept else []), len(kept)

    def ping_frame(self, nonce: int) -> bytes:
        return self._encoder.encode(Ping(nonce))

    def _fits(self, msg: Message) -> bool:
        try:
            self._encoder.encode(MessageBatch([msg]))
        except FrameTooLarge:
            return False
        return True

    def report_unreachable(self, peer_id: int) -> None:
        try:
            self._on_unreachable(peer_id)
        except Exception:
            log.exception("on_unreachable(%d) raised", peer_id)

    def link_stats(self) -> dict[int, LinkStats]:
        return {pid: link.stats for pid, link in self._links.items()}

    # --- dialing --------------------------------------------------------------------------

    def _client_context(self) -> ssl.SSLContext | None:
        """The outbound TLS context for a new connection: ``client_ssl`` may be a callable
        giving the current one (certificates reloaded while running); a connection keeps
        the context it was opened with."""
        if self._client_ssl is None or isinstance(self._client_ssl, ssl.SSLContext):
            return self._client_ssl
        return self._client_ssl()

    async def dial(
        self, peer_id: int, address: Address, kind: StreamKind = StreamKind.MESSAGES
    ) -> tuple[_FrameReader, asyncio.StreamWriter]:
        """Connect to a peer and complete the handshake. Raises OSError, TimeoutError,
        :class:`HandshakeRejected` or :class:`FrameError`; nothing is left open on failure."""
        host, port = address
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=self._client_context(),
                                    limit=self.config.read_chunk_bytes),
            self.config.connect_timeout_s,
        )
        try:
            if writer.transport.is_closing():
                # The peer reset the connection between its accept and our first write (a
                # peer being killed): uvloop raises RuntimeError on any write from now on.
                raise ConnectionResetError("connection closed before the handshake")
            writer.transport.set_write_buffer_limits(high=self.config.write_buffer_high_bytes)
            hello = Hello(self.cluster_id, self.member_id, peer_id, PROTOCOL_VERSION, kind)
            writer.write(self._encoder.encode(hello))
            frames = _FrameReader(reader, self.config)
            reply = await asyncio.wait_for(frames.read_one(), self.config.handshake_timeout_s)
            self._check_hello_reply(peer_id, reply)
        except BaseException:
            writer.close()
            raise
        return frames, writer

    @staticmethod
    def _check_hello_reply(peer_id: int, reply: Frame) -> None:
        if isinstance(reply, Reject):
            raise HandshakeRejected(reply.reason)
        if not isinstance(reply, HelloAck):
            raise BadFrame(f"expected HELLO_ACK, got {type(reply).__name__}")
        if reply.member_id != peer_id:
            raise HandshakeRejected(f"reached member {reply.member_id}, wanted {peer_id}")

    # --- snapshots ------------------------------------------------------------------------

    async def send_snapshot(
        self, peer_id: int, message: Message, chunks: AsyncIterator[bytes]
    ) -> None:
        """Stream a snapshot to a peer on a dedicated connection and wait for its verdict.

        ``message`` is the core's SNAP message to ``peer_id``; only its metadata travels (its
        ``snapshot.data`` is left out: the data comes from ``chunks``). Returns when the
        receiver accepted every chunk; raises :class:`SnapshotSendFailed` otherwise, and
        :class:`UsageError` for a message that is not a SNAP to ``peer_id``. Either way the
        runtime then calls ``report_snapshot(peer, ok)``. The transport stays usable.
        """
        message = self._snapshot_header(peer_id, message)
        address = self._peers.get(peer_id)
        if address is None or self._closed:
            raise SnapshotSendFailed(f"no address for peer {peer_id}")
        snapshot_id = next(self._snapshot_ids)
        try:
            frames, writer = await self.dial(peer_id, address, StreamKind.SNAPSHOT)
        except _CONNECTION_ERRORS as exc:
            raise SnapshotSendFailed(f"cannot connect to {peer_id}: {exc!r}") from exc
        if self._closed:  # close() ran while we were dialing
            writer.close()
            raise SnapshotSendFailed("transport closed")
        self._snapshot_writers.add(writer)
        try:
            await self._stream_chunks(writer, snapshot_id, message, chunks)
            ack = await asyncio.wait_for(frames.read_one(), self.config.snapshot_ack_timeout_s)
        except _CONNECTION_ERRORS as exc:
            raise SnapshotSendFailed(f"snapshot to {peer_id} failed: {exc!r}") from exc
        finally:
            self._snapshot_writers.discard(writer)
            writer.close()
        if not isinstance(ack, SnapshotAck) or ack.snapshot_id != snapshot_id:
            raise SnapshotSendFailed(f"unexpected reply to snapshot {snapshot_id}: {ack!r}")
        if not ack.ok:
            raise SnapshotSendFailed(f"peer {peer_id} refused the snapshot: {ack.reason}")

    def _snapshot_header(self, peer_id: int, message: Message) -> Message:
        if message.type != MessageType.SNAP or message.snapshot is None:
            raise UsageError(f"send_snapshot needs a SNAP message, got {message.type.name}")
        if message.to != peer_id or message.from_ != self.member_id:
            raise UsageError(f"SNAP from {message.from_} to {message.to} sent to {peer_id}")
        if not message.snapshot.data:
            return message
        # The data would be sent twice (and could exceed a frame): the chunks carry it.
        bare = msgspec.structs.replace(message.snapshot, data=b"")
        return msgspec.structs.replace(message, snapshot=bare)

    async def _stream_chunks(
        self,
        writer: asyncio.StreamWriter,
        snapshot_id: int,
        message: Message,
        chunks: AsyncIterator[bytes],
    ) -> None:
        # Hold one piece back so the final frame can carry last=True.
        step, offset = self.config.snapshot_chunk_bytes, 0
        held: bytes | None = None
        async for data in chunks:
            for start in range(0, len(data), step):
                if held is not None:
                    await self._write_chunk(writer, snapshot_id, offset, held, False, message)
                    offset += len(held)
                held = data[start : start + step]
        await self._write_chunk(writer, snapshot_id, offset, held or b"", True, message)

    async def _write_chunk(
        self,
        writer: asyncio.StreamWriter,
        snapshot_id: int,
        offset: int,
        data: bytes,
        last: bool,
        message: Message,
    ) -> None:
        chunk = SnapshotChunk(snapshot_id, offset, data, last, message if offset == 0 else None)
        writer.write(self._encoder.encode(chunk))
        await writer.drain()  # back-pressure: at most one chunk beyond the socket buffers

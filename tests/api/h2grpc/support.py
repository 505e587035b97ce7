"""Helpers for the tests of quorum's own gRPC server (quorum.api.h2grpc): a small test
servicer built on the generated etcd messages, a server fixture on 127.0.0.1:0, and a raw
HTTP/2 client (asyncio streams + hyperframe for parsing, hpack for header blocks) that sends
what a well-behaved client never would.

The raw client parses the server's frames with hyperframe, not with quorum's own wire.py, so
a framing bug on the server is not mirrored by the test's reading of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import hpack
from hyperframe.frame import (
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    RstStreamFrame,
)

from quorum.api.etcd.gen import etcd_rpc_pb2 as pb
from quorum.api.etcd.gen import etcd_rpc_pb2_grpc as rpc
from quorum.api.h2grpc import GrpcServer

STEP_S = 10.0  # generous bound on one awaited step: a hang fails the test, never a timing check
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SNAPSHOT_CHUNK = 64 * 1024
OPEN_WINDOW = 1 << 30

KV_PUT = "/etcdserverpb.KV/Put"
KV_RANGE = "/etcdserverpb.KV/Range"
WATCH = "/etcdserverpb.Watch/Watch"
SNAPSHOT = "/etcdserverpb.Maintenance/Snapshot"


# --- the test servicer --------------------------------------------------------------------


@dataclass
class Probe:
    """What the handlers saw: calls started, handlers cancelled, metadata received."""

    calls: list[str] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    metadata: list[tuple[tuple[str, str | bytes], ...]] = field(default_factory=list)
    done: list[tuple[bool, bool]] = field(default_factory=list)  # done callbacks' view


def blob(index: int, size: int) -> bytes:
    """Deterministic, index-dependent content, so a lost, repeated or reordered chunk shows."""
    seed = struct.pack(">I", index)
    return (seed * (size // 4 + 1))[:size]


class KVServicer:
    """Put echoes its request; Range's key selects a behaviour:

    ``abort``: abort with FAILED_PRECONDITION and the text in range_end (UTF-8);
    ``raise``: raise an unexpected exception; ``sleep``: wait to be cancelled;
    ``slow``: wait for ``probe.release``; ``meta``: answer the invocation metadata;
    ``setcode``: set NOT_FOUND and the text in range_end with set_code/set_details;
    ``big``: one value of ``limit`` bytes; keys starting ``md-`` exercise the context's
    metadata and state methods (see ``_context_case``). Txn and the others are not served."""

    def __init__(self, probe: Probe) -> None:
        self.probe = probe

    async def Put(self, request: pb.PutRequest, context: Any) -> pb.PutResponse:
        self.probe.calls.append("Put")
        return pb.PutResponse(
            header=pb.ResponseHeader(revision=len(request.value)),
            prev_kv=_kv(request.key, request.value),
        )

    async def Range(self, request: pb.RangeRequest, context: Any) -> pb.RangeResponse:
        self.probe.calls.append("Range")
        key = request.key
        if key == b"abort":
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                request.range_end.decode("utf-8"))
        if key == b"raise":
            raise ValueError("planted failure")
        if key in (b"sleep", b"slow"):
            self.probe.started.set()
            try:
                if key == b"sleep":
                    await asyncio.sleep(3600)
                else:
                    await self.probe.release.wait()
            except asyncio.CancelledError:
                self.probe.cancelled.set()
                raise
        if key == b"setcode":  # grpc.aio's other way to fail a call: a code, no exception
            context.set_code(grpc.StatusCode.NOT_FOUND)
            context.set_details(request.range_end.decode("utf-8"))
            return pb.RangeResponse()
        if key == b"meta":
            md = tuple(context.invocation_metadata())
            self.probe.metadata.append(md)
            return pb.RangeResponse(kvs=[
                _kv(k.encode(), v if isinstance(v, bytes) else v.encode()) for k, v in md])
        if key == b"big":
            return pb.RangeResponse(kvs=[_kv(b"big", blob(0, request.limit))])
        if key.startswith(b"md-"):
            return await _context_case(key.decode(), context, self.probe)
        return pb.RangeResponse(count=1, kvs=[_kv(key, key)])


INITIAL = (("x-init", "a"), ("x-init-bin", bytes(range(256))))
TRAILING = (("x-trail", "t v"), ("x-trail-bin", b"\xff\x00"))


async def _context_case(key: str, context: Any, probe: Probe) -> pb.RangeResponse:
    """grpc.aio ServicerContext behaviours, the same on both servers (test_differential):
    the answer's kvs report what the handler saw."""
    seen: list[tuple[str, str]] = []
    if key == "md-both":  # headers now, trailers with the status
        await context.send_initial_metadata(INITIAL)
        context.set_trailing_metadata(TRAILING)
        seen.append(("trailing_metadata", repr(context.trailing_metadata())))
    elif key == "md-twice":
        await context.send_initial_metadata(INITIAL)
        try:
            await context.send_initial_metadata((("x-again", "b"),))
        except Exception as exc:
            seen.append(("second", f"{type(exc).__name__}: {exc}"))
    elif key == "md-abort-own":  # abort's own trailing metadata replaces the set ones
        context.set_trailing_metadata(TRAILING)
        await context.abort(grpc.StatusCode.NOT_FOUND, "gone", (("x-abort", "own"),))
    elif key == "md-abort-set":
        context.set_trailing_metadata(TRAILING)
        await context.abort(grpc.StatusCode.NOT_FOUND, "gone")
    elif key == "md-setcode":
        context.set_trailing_metadata(TRAILING)
        context.set_code(grpc.StatusCode.OUT_OF_RANGE)
        context.set_details("past the end")
        seen.append(("code", str(context.code())))
        seen.append(("details", context.details()))
    elif key == "md-raise":
        context.set_trailing_metadata(TRAILING)
        raise ValueError("failed with trailers")
    elif key == "md-headers-then-abort":
        await context.send_initial_metadata(INITIAL)
        await context.abort(grpc.StatusCode.INTERNAL, "after headers")
    elif key == "md-bad-initial":
        await context.send_initial_metadata((("X-Upper", "a"),))
    elif key == "md-bad-trailing":
        context.set_trailing_metadata((("x-a", "a\nb"),))
    elif key == "md-state":
        remaining = context.time_remaining()
        seen += [
            ("code", str(context.code())), ("details", context.details()),
            ("trailing_metadata", repr(context.trailing_metadata())),
            ("cancelled", str(context.cancelled())), ("done", str(context.done())),
            ("peer", context.peer().rsplit(":", 1)[0]),
            ("deadline", "none" if remaining is None else str(0 < remaining <= 31)),
        ]
    elif key == "md-auth":
        seen += [(k, repr(sorted(v))) for k, v in sorted(context.auth_context().items())]
        seen.append(("peer_identities", repr(context.peer_identities())))
        seen.append(("peer_identity_key", repr(context.peer_identity_key())))
    elif key == "md-sleep":  # until cancelled: what the handler and its callback saw
        context.add_done_callback(
            lambda ctx: probe.done.append((ctx.cancelled(), ctx.done())))
        probe.started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            probe.done.append((context.cancelled(), context.done()))
            raise
    elif key == "md-done-callback":
        context.add_done_callback(
            lambda ctx: probe.done.append((ctx.cancelled(), ctx.done())))
    return pb.RangeResponse(count=len(seen), kvs=[_kv(k.encode(), v.encode()) for k, v in seen])


class WatchServicer:
    """Bidirectional echo: one answer per request, watch_id = the request's start_revision.
    With metadata ``x-hold: 1`` it reads nothing until ``probe.release`` is set; with
    ``x-md: 1`` it sends INITIAL metadata first and TRAILING with its status; a request
    with key ``abort`` aborts the call, one with key ``raise`` raises."""

    def __init__(self, probe: Probe) -> None:
        self.probe = probe

    async def Watch(self, requests: Any, context: Any) -> AsyncIterator[pb.WatchResponse]:
        self.probe.calls.append("Watch")
        self.probe.started.set()
        try:
            if ("x-hold", "1") in context.invocation_metadata():
                await self.probe.release.wait()  # reads nothing until released
            if ("x-md", "1") in context.invocation_metadata():
                await context.send_initial_metadata(INITIAL)
                context.set_trailing_metadata(TRAILING)
            async for req in requests:
                create = req.create_request
                if create.key == b"abort":
                    await context.abort(grpc.StatusCode.OUT_OF_RANGE, "stream aborted")
                if create.key == b"raise":
                    raise ValueError("stream failed")
                yield pb.WatchResponse(
                    watch_id=create.start_revision, created=True,
                    cancel_reason=create.key.decode("latin-1"),
                )
        except asyncio.CancelledError:
            self.probe.cancelled.set()
            raise


class LeaseServicer:
    """LeaseKeepAlive written grpc.aio's other way: a coroutine that reads requests with
    ``context.read()`` until ``grpc.aio.EOF`` and answers each with ``context.write()``
    (ID echoed, TTL = the number of requests read so far)."""

    def __init__(self, probe: Probe) -> None:
        self.probe = probe

    async def LeaseKeepAlive(self, requests: Any, context: Any) -> None:
        self.probe.calls.append("LeaseKeepAlive")
        n = 0
        while True:
            req = await context.read()
            if req is grpc.aio.EOF:
                break
            n += 1
            if req.ID < 0:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "negative lease id")
            await context.write(pb.LeaseKeepAliveResponse(ID=req.ID, TTL=n))


class MaintenanceServicer:
    """Snapshot streams ``chunks`` blobs of SNAPSHOT_CHUNK bytes (server streaming)."""

    def __init__(self, probe: Probe, chunks: int) -> None:
        self.probe = probe
        self.chunks = chunks

    async def Snapshot(self, request: pb.SnapshotRequest,
                       context: Any) -> AsyncIterator[pb.SnapshotResponse]:
        self.probe.calls.append("Snapshot")
        self.probe.started.set()
        try:
            for i in range(self.chunks):
                yield pb.SnapshotResponse(
                    remaining_bytes=(self.chunks - i - 1) * SNAPSHOT_CHUNK,
                    blob=blob(i, SNAPSHOT_CHUNK),
                )
        except (asyncio.CancelledError, GeneratorExit):
            self.probe.cancelled.set()  # stopped before its last chunk
            raise


def _kv(key: bytes, value: bytes) -> Any:
    from quorum.api.etcd.gen import etcd_kv_pb2 as kvpb

    return kvpb.KeyValue(key=key, value=value)


# --- a server under test -------------------------------------------------------------------


@dataclass
class Served:
    server: GrpcServer
    port: int
    probe: Probe

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


def build_server(probe: Probe, snapshot_chunks: int = 128, **options: Any) -> GrpcServer:
    server = GrpcServer(**options)
    services = pb.DESCRIPTOR.services_by_name
    server.add_service(services["KV"], KVServicer(probe))
    server.add_service(services["Watch"], WatchServicer(probe))
    server.add_service(services["Maintenance"], MaintenanceServicer(probe, snapshot_chunks))
    server.add_service(services["Lease"], LeaseServicer(probe))
    return server


@contextlib.asynccontextmanager
async def serving(snapshot_chunks: int = 128, **options: Any) -> AsyncIterator[Served]:
    probe = Probe()
    server = build_server(probe, snapshot_chunks, **options)
    port = await server.start("127.0.0.1", 0)
    try:
        yield Served(server, port, probe)
    finally:
        await server.stop(None)


def run(body: Callable[[], Awaitable[None]]) -> None:
    """Run one async test body on a fresh event loop, bounded so a hang fails instead."""

    async def main() -> None:
        await asyncio.wait_for(body(), 60)

    asyncio.run(main())


@contextlib.asynccontextmanager
async def channel(target: str, *options: tuple[str, Any]) -> AsyncIterator[grpc.aio.Channel]:
    ch = grpc.aio.insecure_channel(target, options=list(options))
    try:
        yield ch
    finally:
        await ch.close()


async def still_serving(target: str) -> None:
    """A normal grpcio call on a new connection is answered."""
    async with channel(target) as ch:
        got = await asyncio.wait_for(
            rpc.KVStub(ch).Put(pb.PutRequest(key=b"alive", value=b"yes")), STEP_S)
    assert got.prev_kv.key == b"alive"
    assert got.prev_kv.value == b"yes"


# --- a raw HTTP/2 client ---------------------------------------------------------------------


def raw_frame(ftype: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """An HTTP/2 frame built by hand (RFC 9113 §4.1), so it may break any rule."""
    n = len(payload)
    return struct.pack(">BHBBL", n >> 16, n & 0xFFFF, ftype, flags, stream_id) + payload


def grpc_msg(payload: bytes, compressed: bool = False) -> bytes:
    return bytes([1 if compressed else 0]) + struct.pack(">I", len(payload)) + payload


def request_headers(path: str, **extra: str) -> list[tuple[str, str]]:
    headers = [
        (":method", "POST"), (":scheme", "http"), (":path", path),
        (":authority", "127.0.0.1"), ("content-type", "application/grpc"), ("te", "trailers"),
    ]
    return headers + list(extra.items())


class RawClient:
    """One TCP connection speaking hand-made HTTP/2. ``read_frame`` parses the server's
    frames with hyperframe; ``encoder`` keeps the client's HPACK state."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.frames: list[Frame] = []  # every frame read, in order
        self.unread: list[Frame] = []  # read but not yet taken by ``until``

    @classmethod
    async def connect(cls, port: int, preface: bool = True) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        if preface:
            # The client never reads its windows down, so it opens them wide at once: a
            # response is never held back by flow control unless a test asks for it.
            client.send(PREFACE + raw_frame(0x4, 0, 0, struct.pack(">HL", 0x4, OPEN_WINDOW))
                        + raw_frame(0x8, 0, 0, struct.pack(">L", OPEN_WINDOW)))
        return client

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    def headers(self, stream_id: int, headers: list[tuple[str, str]], end_stream: bool = False,
                flags: int = 0x4) -> None:
        """One HEADERS frame (END_HEADERS by default) with an HPACK-encoded block."""
        flags |= 0x1 if end_stream else 0
        self.send(raw_frame(0x1, flags, stream_id, self.encoder.encode(headers)))

    def data(self, stream_id: int, payload: bytes, end_stream: bool = False) -> None:
        self.send(raw_frame(0x0, 0x1 if end_stream else 0, stream_id, payload))

    def call(self, stream_id: int, path: str, body: bytes) -> None:
        """A complete unary request: HEADERS, one DATA with END_STREAM."""
        self.headers(stream_id, request_headers(path))
        self.data(stream_id, body, end_stream=True)

    async def read_frame(self) -> Frame | None:
        """The next frame, or None at end of stream."""
        try:
            head = await asyncio.wait_for(self.reader.readexactly(9), STEP_S)
        except asyncio.IncompleteReadError:
            return None
        except ConnectionResetError:
            return None
        frame, length = Frame.parse_frame_header(memoryview(head))
        body = await asyncio.wait_for(self.reader.readexactly(length), STEP_S)
        frame.parse_body(memoryview(body))
        self.frames.append(frame)
        return frame

    async def until(self, match: Callable[[Frame], bool]) -> Frame:
        """The first frame not yet taken that matches, reading more as needed (fails at end
        of stream). Frames passed over stay for later calls (another stream's answer)."""
        for i, frame in enumerate(self.unread):
            if match(frame):
                return self.unread.pop(i)
        while True:
            frame = await self.read_frame()
            assert frame is not None, f"connection closed; frames: {self.frames}"
            if match(frame):
                return frame
            self.unread.append(frame)

    async def goaway(self) -> GoAwayFrame:
        """The server's GOAWAY, after which it must close the connection."""
        frame = await self.until(lambda f: isinstance(f, GoAwayFrame))
        assert isinstance(frame, GoAwayFrame)
        while await self.read_frame() is not None:
            pass
        return frame

    async def response(self, stream_id: int) -> Response:
        """Headers, messages and trailers of one stream, until END_STREAM or RST_STREAM."""
        resp = Response()
        data = bytearray()
        while True:
            frame = await self.until(lambda f: f.stream_id == stream_id)
            if isinstance(frame, RstStreamFrame):
                resp.reset = frame.error_code
                break
            if isinstance(frame, HeadersFrame):
                block = [(bytes(k), bytes(v)) for k, v in self.decoder.decode(frame.data, raw=True)]
                if resp.headers is None and not {b"grpc-status"} & {k for k, _ in block}:
                    resp.headers = block
                else:
                    resp.trailers = block
            elif isinstance(frame, DataFrame):
                data += frame.data
            if "END_STREAM" in frame.flags:
                break
        resp.messages = split_messages(bytes(data))
        return resp

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


@dataclass
class Response:
    headers: list[tuple[bytes, bytes]] | None = None
    trailers: list[tuple[bytes, bytes]] | None = None
    messages: list[bytes] = field(default_factory=list)
    reset: int | None = None

    def trailer(self, name: bytes) -> bytes | None:
        for k, v in self.trailers or []:
            if k == name:
                return v
        return None

    @property
    def status(self) -> int | None:
        value = self.trailer(b"grpc-status")
        return None if value is None else int(value)


def split_messages(data: bytes) -> list[bytes]:
    """gRPC length-prefixed messages (uncompressed) of a response body."""
    out = []
    pos = 0
    while pos < len(data):
        assert data[pos] == 0, "response message marked compressed"
        size = struct.unpack_from(">I", data, pos + 1)[0]
        out.append(data[pos + 5:pos + 5 + size])
        pos += 5 + size
    assert pos == len(data), "response ends inside a message"
    return out


@contextlib.asynccontextmanager
async def raw_client(port: int, preface: bool = True) -> AsyncIterator[RawClient]:
    client = await RawClient.connect(port, preface)
    try:
        yield client
    finally:
        await client.close()


# --- an h2 (python-hyper) client ---------------------------------------------------------


class H2Client:
    """The ``h2`` library's client state machine over one asyncio connection: an HTTP/2
    implementation independent of both the server and grpcio."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 settings: dict[int, int] | None) -> None:
        import h2.config
        import h2.connection

        self.reader = reader
        self.writer = writer
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.conn = h2.connection.H2Connection(config)
        self.conn.initiate_connection()
        if settings:
            self.conn.update_settings(settings)
        self.pending: list[Any] = []  # events not yet looked at by ``until``
        self.seen: list[Any] = []  # events ``until`` went past, in order
        self.flush()

    @classmethod
    async def connect(cls, port: int, settings: dict[int, int] | None = None) -> H2Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer, settings)

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.writer.write(data)

    async def until(self, match: Callable[[Any], bool]) -> Any:
        """Feed the server's bytes to h2 until an event matches; returns that event."""
        while True:
            while self.pending:
                event = self.pending.pop(0)
                self.seen.append(event)
                if match(event):
                    return event
            data = await asyncio.wait_for(self.reader.read(65536), STEP_S)
            assert data, "connection closed"
            self.pending = list(self.conn.receive_data(data))
            self.flush()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()

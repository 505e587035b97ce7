"""One HTTP/2 connection carrying gRPC calls (an asyncio Protocol).

Reading: ``data_received`` splits frames straight out of one buffer and handles them inline;
a unary request is parsed and its handler task started as soon as its last DATA frame is in.
Writing: frames are queued and written with one ``transport.write`` per event-loop turn, so a
burst of answers costs one system call.

Flow control (RFC 9113 §5.2). Receiving: the connection window is credited back as data
arrives (a gRPC server's usual policy), a stream's window as its bytes are consumed: a unary
request's bytes at once (one message, bounded by the size limit), a streaming request's when
the handler reads the message, so a client cannot queue more than one window of unread
messages. Sending: DATA never exceeds the client's connection and stream windows; a sender
with no window waits for the client's WINDOW_UPDATE.

Every protocol violation closes the connection with GOAWAY and a logged reason; a bad call
ends that call with a gRPC status; neither reaches other connections.

Resource bounds beyond the frame and window sizes. A new connection must complete its
preface (the magic and a SETTINGS frame, or a first HTTP/1 request) within
``handshake_timeout``; a connection with no open call and no new one for ``idle_timeout`` is
closed (GOAWAY NO_ERROR first). Frames that cost work but move no call forward (empty DATA
or CONTINUATION, PRIORITY, SETTINGS, unknown types, and the client errors that make the
server reset a stream) draw on a token bucket per connection; a client that empties it is
cut off with ENHANCE_YOUR_CALM (the CVE-2019-9518 class of floods, and "MadeYouReset").
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, cast

import hpack

from quorum.api.h2grpc import wire as w
from quorum.api.h2grpc.fields import RequestHead, parse_request, trailers_problem
from quorum.api.h2grpc.http1 import Http1Session, looks_like_http1
from quorum.api.h2grpc.status import (
    DEADLINE_EXCEEDED,
    INTERNAL,
    RESOURCE_EXHAUSTED,
    UNIMPLEMENTED,
    AbortError,
)

if TYPE_CHECKING:
    from quorum.api.h2grpc.server import GrpcServer, Method

log = logging.getLogger(__name__)

_HIGH_BYTES = bytes(range(0x80, 0x100))
_HEADER_CACHE_SIZE = 64
_MAX_HEADER_BLOCK = 64 * 1024
_LINGER_S = 1.0  # how long a failed connection waits for the client to read its GOAWAY
# entries in one SETTINGS frame: a legitimate one has a handful; nghttp2 allows 32
_MAX_SETTINGS = 64


class ConnectionError_(Exception):
    """A connection-level protocol error: GOAWAY with ``code``, then close."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class Stream:
    """One call. ``inbox`` holds the messages of a streaming request not yet read."""

    __slots__ = (
        "buf",
        "callbacks",
        "cancelled",
        "compressed_ok",
        "deadline",
        "discard",
        "done",
        "headers_sent",
        "id",
        "inbox",
        "length_left",
        "metadata",
        "method",
        "recv_closed",
        "recv_window",
        "send_window",
        "task",
        "timed_out",
        "trailing",
        "unacked",
        "waiter",
    )

    def __init__(self, stream_id: int, method: Method | None, send_window: int,
                 recv_window: int = w.DEFAULT_WINDOW) -> None:
        self.id = stream_id
        self.method = method
        self.buf = bytearray()
        self.recv_closed = False
        self.recv_window = recv_window  # what the client may still send on this stream
        self.send_window = send_window
        self.headers_sent = False
        self.done = False  # trailers sent or stream reset: nothing more is written
        self.task: asyncio.Task[None] | None = None
        self.inbox: deque[bytes | None] = deque()
        self.waiter: asyncio.Future[None] | None = None  # a reader waiting on inbox
        self.metadata: tuple[tuple[str, str | bytes], ...] = ()
        self.deadline: asyncio.TimerHandle | None = None
        self.timed_out = False
        self.unacked = 0  # bytes consumed but not yet credited back to the client
        self.discard = False  # answered already (bad call): later DATA is dropped
        self.compressed_ok = False
        self.cancelled = False  # reset by the client, its deadline or the connection's end
        self.length_left = -1  # request bytes its content-length still announces (-1: none)
        self.trailing = b""  # the handler's trailing metadata, as header block fields
        self.callbacks: list[Callable[[], None]] | None = None  # Context.add_done_callback

    def ended(self) -> None:
        """The call is over: run the done callbacks (once)."""
        callbacks, self.callbacks = self.callbacks, None
        for callback in callbacks or ():
            try:
                callback()
            except Exception:
                log.exception("grpc done callback failed")

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


def _aio() -> Any:
    """grpc.aio, imported when first needed: handlers written for it catch its UsageError
    and compare with its EOF, so those are the objects to raise and return."""
    from grpc import aio  # type: ignore[import-untyped]

    return aio


class Context:
    """The servicer-facing call context: grpc.aio.ServicerContext's methods, so servicers
    written for grpc.aio run unchanged."""

    __slots__ = ("_code", "_conn", "_details", "_requests", "_stream", "_trailing")

    def __init__(self, conn: H2Connection, stream: Stream) -> None:
        self._conn = conn
        self._stream = stream
        self._code: Any = None
        self._details = ""
        self._trailing: tuple[tuple[str, str | bytes], ...] = ()
        self._requests: _RequestIterator | None = None  # of a client-streaming call

    async def read(self) -> Any:
        """The next request message of a client-streaming call, or ``grpc.aio.EOF`` once
        the client half-closed (grpc.aio's alternative to the request iterator)."""
        aio = _aio()
        if self._requests is None:
            raise aio.UsageError("read() is for client-streaming calls")
        try:
            return await self._requests.__anext__()
        except StopAsyncIteration:
            return aio.EOF

    async def write(self, message: Any) -> None:
        """Send one response message of a server-streaming call (grpc.aio's alternative to
        an async generator: the handler is then a coroutine that returns None)."""
        method = self._stream.method
        if method is None or not method.server_streaming:
            raise _aio().UsageError("write() is for server-streaming calls")
        await self._conn.send_message(self._stream, message.SerializeToString())

    async def abort(self, code: Any, details: str = "",
                    trailing_metadata: Sequence[tuple[str, str | bytes]] = ()) -> NoReturn:
        """End the call with ``code``; ``trailing_metadata``, if given, replaces what
        set_trailing_metadata set (as in grpc.aio)."""
        if trailing_metadata:
            self.set_trailing_metadata(trailing_metadata)
        raise AbortError(code, details)

    async def abort_with_status(self, status: Any) -> NoReturn:
        """``abort`` with a ``grpc.Status`` (code, details, trailing_metadata)."""
        await self.abort(status.code, status.details, status.trailing_metadata or ())

    def set_code(self, code: Any) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def code(self) -> Any:
        return self._code

    def details(self) -> str:
        return self._details

    async def send_initial_metadata(self, metadata: Sequence[tuple[str, str | bytes]]) -> None:
        """Send the response headers now, with ``metadata``; at most once per call, and
        only before the first message (grpc.aio raises UsageError too)."""
        stream = self._stream
        if stream.headers_sent:
            raise _aio().UsageError("Send initial metadata failed: already sent")
        block = metadata_block(metadata)
        if block is None:
            raise AbortError(INTERNAL, "Invalid metadata")
        if not stream.done:
            self._conn.send_headers(stream, block)

    def set_trailing_metadata(self, metadata: Sequence[tuple[str, str | bytes]]) -> None:
        """Fields sent with the call's status (the last call wins). Invalid keys or values
        end the call with INTERNAL "Invalid metadata" when the status is sent, as in
        grpc.aio."""
        self._trailing = tuple(metadata)
        block = metadata_block(self._trailing)
        self._stream.trailing = _INVALID if block is None else block

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._trailing

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._stream.metadata

    def peer(self) -> str:
        return self._conn.peer

    def cancelled(self) -> bool:
        """True once the client reset the call, its deadline passed or its connection
        ended. (grpc.aio 1.85 answers False even then, inside or after the handler.)"""
        return self._stream.cancelled

    def done(self) -> bool:
        """True once the call ended: status sent, or cancelled (a deadline's status may
        still be on its way)."""
        return self._stream.done or self._stream.cancelled

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        """``callback(context)`` when the call ends (at once if it has)."""
        stream = self._stream
        if stream.done:
            callback(self)
            return
        if stream.callbacks is None:
            stream.callbacks = []
        stream.callbacks.append(lambda: callback(self))

    def time_remaining(self) -> float | None:
        handle = self._stream.deadline
        if handle is None:
            return None
        return max(0.0, handle.when() - asyncio.get_running_loop().time())

    def set_compression(self, compression: Any) -> None:
        """Accepted; answers are sent uncompressed (compressing them is optional)."""

    def disable_next_message_compression(self) -> None:
        """Accepted; no message is compressed anyway."""

    def auth_context(self) -> dict[str, list[bytes]]:
        """grpc's auth context: security level, transport type, and under mutual TLS the
        client certificate's names (grpc's keys)."""
        return self._conn.auth_context()

    def peer_identities(self) -> list[bytes] | None:
        key = self.peer_identity_key()
        return None if key is None else self.auth_context()[key]

    def peer_identity_key(self) -> str | None:
        """As grpc: the certificate's alternative names if it has any, else its common
        name; None without a client certificate."""
        auth = self.auth_context()
        for key in ("x509_subject_alternative_name", "x509_common_name"):
            if key in auth:
                return key
        return None


# grpc's metadata rules: keys of lowercase letters, digits, "-", "_", "." (not "grpc-",
# which is reserved), printable ASCII text values; "-bin" values are bytes, sent in base64
_MD_KEY = re.compile(r"[0-9a-z_.\-]+\Z")
_MD_VALUE = re.compile(r"[\x20-\x7e]*\Z")
_INVALID = b"\xff"  # a Stream.trailing marker: the handler's trailing metadata is invalid


def metadata_block(metadata: Sequence[tuple[str, str | bytes]]) -> bytes | None:
    """The header fields for ``metadata`` (literal, not indexed), or None if a key or a
    value is not valid gRPC metadata."""
    out = []
    for key, value in metadata:
        if not isinstance(key, str) or not _MD_KEY.match(key) or key.startswith("grpc-"):
            return None
        if key.endswith("-bin"):
            raw = value if isinstance(value, bytes) else value.encode("utf-8")
            data = base64.b64encode(raw).rstrip(b"=")
        elif isinstance(value, str) and _MD_VALUE.match(value):
            data = value.encode("ascii")
        else:
            return None
        out.append(w.literal(key.encode("ascii"), data))
    return b"".join(out)


class _RequestIterator:
    """The request messages of a client-streaming call, in order, until the client half-closes."""

    def __init__(self, conn: H2Connection, stream: Stream, parse: Callable[[bytes], Any]) -> None:
        self._conn = conn
        self._stream = stream
        self._parse = parse

    def __aiter__(self) -> _RequestIterator:
        return self

    async def __anext__(self) -> Any:
        stream = self._stream
        while not stream.inbox:
            stream.waiter = self._conn.loop.create_future()
            await stream.waiter
            stream.waiter = None
        raw = stream.inbox.popleft()
        if raw is None:
            stream.inbox.append(None)  # stays at the end for any later read
            raise StopAsyncIteration
        self._conn.credit(stream, len(raw) + 5)
        try:
            return self._parse(raw)
        except Exception as exc:
            raise AbortError(INTERNAL, "grpc: error unmarshalling request") from exc


class H2Connection(asyncio.Protocol):
    def __init__(self, server: GrpcServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.closed = False
        self._buf = bytearray()
        self._magic = False  # the preface's magic has arrived (our SETTINGS are sent)
        self._preface = False  # ... and the header of the SETTINGS frame that must follow
        self._decoder = hpack.Decoder()
        self._decoder.max_header_list_size = server.max_header_list_size
        self._header_cache: dict[bytes, list[tuple[bytes, bytes]]] = {}
        self._request_cache: dict[bytes, RequestHead] = {}  # parses of cached blocks
        self._continuation: tuple[int, int, bytearray] | None = None
        self.streams: dict[int, Stream] = {}
        self._last_stream = 0
        self._out: list[bytes] = []
        self._flush_scheduled = False
        # what the client allows us to send
        self._send_window = w.DEFAULT_WINDOW
        self._peer_initial_window = w.DEFAULT_WINDOW
        self._peer_max_frame = w.DEFAULT_MAX_FRAME
        self._send_waiters: list[asyncio.Future[None]] = []
        self._write_paused = False
        # what we allow the client to send
        # a connection window starts at 65,535 whatever the settings (RFC 9113 §6.9.2)
        self._recv_window = max(server.connection_window, w.DEFAULT_WINDOW)
        self._conn_unacked = 0
        self._goaway_sent = False
        self._http1: Http1Session | None = None  # set if the client speaks HTTP/1.x
        self._settings_seen = False  # the client's preface SETTINGS frame arrived
        self._opened_at = 0.0
        # the handshake and idle timer (one per connection, never re-armed per call)
        self._timer: asyncio.TimerHandle | None = None
        self._idle_mark = -1  # the activity count at the previous idle check
        self._busy_before = True  # whether a call was open at the previous idle check
        # the no-progress token bucket: full at first, refilled at server.flood_rate per s
        self._tokens = float(server.flood_burst)
        self._tokens_at = self.loop.time()
        self._handlers: tuple[Callable[[int, int, bytes], None], ...] = (
            self._on_data, self._on_headers, self._on_priority, self._on_rst_stream,
            self._on_settings, self._on_push_promise, self._on_ping, self._on_goaway,
            self._on_window_update, self._on_continuation,
        )

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) == 4:  # grpc's form of an IPv6 peer
            self.peer = f"ipv6:[{peer[0]}]:{peer[1]}"
        elif isinstance(peer, tuple):
            self.peer = f"ipv4:{peer[0]}:{peer[1]}"
        else:
            self.peer = f"unix:{peer}" if peer else "unknown"
        self.server.connections.add(self)
        self._opened_at = self.loop.time()
        periods = [t for t in (self.server.handshake_timeout, self.server.idle_timeout) if t]
        if periods:
            first = min(periods)
            self._timer = self.loop.call_later(first, self._on_timer)
        # Our SETTINGS wait for the client's preface (RFC 9113 §3.4 allows it): an HTTP/1
        # client on this port must not read binary frames before its answer.

    def auth_context(self) -> dict[str, list[bytes]]:
        """grpc's auth context: the security level and transport type and, under mutual
        TLS, the client certificate's common and alternative names."""
        if self.transport is None or self.transport.get_extra_info("sslcontext") is None:
            return {"security_level": [b"TSI_SECURITY_NONE"],
                    "transport_security_type": [b"insecure"]}
        out: dict[str, list[bytes]] = {"security_level": [b"TSI_PRIVACY_AND_INTEGRITY"],
                                       "transport_security_type": [b"ssl"]}
        cert = self.transport.get_extra_info("peercert") or {}
        names = [value.encode() for rdn in cert.get("subject", ()) for key, value in rdn
                 if key == "commonName"]
        if names:
            out["x509_common_name"] = names
        alt = [value.encode() for kind, value in cert.get("subjectAltName", ())
               if kind in ("DNS", "IP Address")]
        if alt:
            out["x509_subject_alternative_name"] = alt
        return out

    def _send_preface(self) -> None:
        s = self.server
        self._write(w.settings_frame({
            w.SETTINGS_MAX_CONCURRENT_STREAMS: s.max_concurrent_streams,
            w.SETTINGS_INITIAL_WINDOW_SIZE: s.stream_window,
            w.SETTINGS_MAX_FRAME_SIZE: s.max_frame_size,
            w.SETTINGS_MAX_HEADER_LIST_SIZE: s.max_header_list_size,
        }))
        if s.connection_window > w.DEFAULT_WINDOW:
            self._write(w.window_update(0, s.connection_window - w.DEFAULT_WINDOW))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.server.connections.discard(self)
        if self._http1 is not None:
            self._http1.close()
        for stream in list(self.streams.values()):
            self._reset(stream)
        self.streams.clear()
        self._wake_senders()

    def pause_writing(self) -> None:
        # The client is not reading: stop reading it too. Every frame it sends may owe an
        # answer (PING ACK, SETTINGS ACK, a call's headers and trailers), so reading on would
        # queue answers in memory without bound.
        self._write_paused = True
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()
        self._wake_senders()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        if self._http1 is not None:
            self._http1.feed(data)
            return
        buf = self._buf
        buf += data
        if not self._preface and looks_like_http1(buf):
            self._http1 = Http1Session(self, self.server.http1_handler)
            self._http1.feed(buf)
            buf.clear()
            return
        try:
            pos = self._read_preface(buf) if not self._preface else 0
            pos = self._read_frames(buf, pos)
            if pos:
                del buf[:pos]
            if self._conn_unacked >= self.server.connection_window // 4:
                self._write(w.window_update(0, self._conn_unacked))
                self._recv_window += self._conn_unacked
                self._conn_unacked = 0
        except ConnectionError_ as exc:
            self._fail(exc.code, str(exc))
        except Exception:  # a bug here must cost this connection only, never the server
            log.exception("grpc connection %s: internal error", self.peer)
            self._fail(w.INTERNAL_ERROR, "internal error")
        self._flush()

    # --- framing -----------------------------------------------------------------------------

    def _read_preface(self, buf: bytearray) -> int:
        n = len(w.PREFACE)
        if not self._magic:
            if len(buf) < n:
                if not w.PREFACE.startswith(bytes(buf)):
                    raise ConnectionError_(w.PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                return 0
            if bytes(buf[:n]) != w.PREFACE:
                raise ConnectionError_(w.PROTOCOL_ERROR, "not an HTTP/2 connection preface")
            self._magic = True
            self._send_preface()
        if len(buf) < n + 9:
            return 0  # wait for the first frame's header
        # RFC 9113 §3.4: the magic is followed by a SETTINGS frame (not an acknowledgement)
        if buf[n + 3] != w.SETTINGS or buf[n + 4] & w.ACK:
            raise ConnectionError_(w.PROTOCOL_ERROR, "the preface is not followed by SETTINGS")
        self._preface = True
        return n

    def _read_frames(self, buf: bytearray, pos: int) -> int:
        if not self._preface:
            return pos
        unpack = w.FRAME_HEADER.unpack_from
        handlers = self._handlers
        limit = self.server.max_frame_size
        end_buf = len(buf)
        while end_buf - pos >= 9 and not self.closed:
            hi, lo, ftype, flags, sid = unpack(buf, pos)
            length = (hi << 16) | lo
            if length > limit:
                raise ConnectionError_(w.FRAME_SIZE_ERROR, f"frame of {length} bytes")
            end = pos + 9 + length
            if end > end_buf:
                break
            payload = bytes(buf[pos + 9:end])
            pos = end
            if self._continuation is not None and ftype != w.CONTINUATION:
                raise ConnectionError_(w.PROTOCOL_ERROR, "expected CONTINUATION")
            if ftype < 10:
                handlers[ftype](flags, sid & 0x7FFFFFFF, payload)
            else:  # unknown frame types are ignored (RFC 9113 §4.1), within the budget
                self._no_progress("unknown frames")
        return pos

    # --- frame handlers ---------------------------------------------------------------------

    def _on_data(self, flags: int, sid: int, payload: bytes) -> None:
        if sid == 0:
            raise ConnectionError_(w.PROTOCOL_ERROR, "DATA on stream 0")
        n = len(payload)
        if not n and not flags & w.END_STREAM:
            self._no_progress("empty DATA frames")
        self._recv_window -= n
        if self._recv_window < 0:
            raise ConnectionError_(w.FLOW_CONTROL_ERROR, "connection window exceeded")
        self._conn_unacked += n
        stream = self.streams.get(sid)
        if stream is None:
            if self._idle(sid):
                raise ConnectionError_(w.PROTOCOL_ERROR, "DATA on an idle stream")
            return  # a stream we already answered or reset: its data is dropped
        if stream.recv_closed:
            self._stream_error(stream, w.STREAM_CLOSED)
            return
        stream.recv_window -= n
        if stream.recv_window < 0:
            # More than the stream window granted (RFC 9113 §6.9.1): a stream error, so
            # unread messages of a streaming call never pile up past one window.
            self._stream_error(stream, w.FLOW_CONTROL_ERROR)
            return
        if flags & w.PADDED:
            payload = _strip_padding(payload)
            stream.unacked += n - len(payload)
        if stream.length_left >= 0:
            stream.length_left -= len(payload)
            if stream.length_left < 0:  # RFC 9113 §8.1.1: more than its content-length
                self._stream_error(stream, w.PROTOCOL_ERROR)
                return
        if not stream.discard:
            stream.buf += payload
            self._take_messages(stream)
        else:
            stream.unacked += len(payload)
        if flags & w.END_STREAM:
            self._end_of_request(stream)
        elif stream.unacked >= self.server.stream_window // 4:
            self._ack_stream(stream)

    def _on_headers(self, flags: int, sid: int, payload: bytes) -> None:
        if sid == 0:
            raise ConnectionError_(w.PROTOCOL_ERROR, "HEADERS on stream 0")
        if flags & w.PADDED:
            payload = _strip_padding(payload)
        if flags & w.PRIORITY_FLAG:
            payload = payload[5:]
        if not payload and not flags & w.END_HEADERS:
            self._no_progress("empty HEADERS frames")
        if flags & w.END_HEADERS:
            self._headers_complete(sid, flags, payload)
        else:
            self._continuation = (sid, flags, bytearray(payload))

    def _on_continuation(self, flags: int, sid: int, payload: bytes) -> None:
        cont = self._continuation
        if cont is None or cont[0] != sid:
            raise ConnectionError_(w.PROTOCOL_ERROR, "unexpected CONTINUATION")
        if not payload and not flags & w.END_HEADERS:
            self._no_progress("empty CONTINUATION frames")
        block = cont[2]
        block += payload
        if len(block) > _MAX_HEADER_BLOCK:
            raise ConnectionError_(w.ENHANCE_YOUR_CALM, "header block too large")
        if flags & w.END_HEADERS:
            self._continuation = None
            self._headers_complete(sid, cont[1], bytes(block))

    def _on_priority(self, flags: int, sid: int, payload: bytes) -> None:
        if sid == 0:
            raise ConnectionError_(w.PROTOCOL_ERROR, "PRIORITY on stream 0")
        if len(payload) != 5:
            raise ConnectionError_(w.FRAME_SIZE_ERROR, "PRIORITY frame of wrong size")
        # RFC 9113 §5.3.2 deprecates priority signals: nothing to do, so within the budget
        self._no_progress("PRIORITY frames")

    def _on_rst_stream(self, flags: int, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ConnectionError_(w.FRAME_SIZE_ERROR, "RST_STREAM frame of wrong size")
        if sid == 0:
            raise ConnectionError_(w.PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if self._idle(sid):  # RFC 9113 §6.4
            raise ConnectionError_(w.PROTOCOL_ERROR, "RST_STREAM on an idle stream")
        stream = self.streams.get(sid)
        if stream is not None:
            self._reset(stream)

    def _idle(self, sid: int) -> bool:
        """A stream the client never opened (RFC 9113 §5.1): the server opens none itself."""
        return sid % 2 == 0 or sid > self._last_stream

    def _on_settings(self, flags: int, sid: int, payload: bytes) -> None:
        if sid != 0:
            raise ConnectionError_(w.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & w.ACK:
            if payload:
                raise ConnectionError_(w.FRAME_SIZE_ERROR, "SETTINGS ack with a payload")
            return
        if len(payload) % 6:
            raise ConnectionError_(w.FRAME_SIZE_ERROR, "SETTINGS frame of wrong size")
        if len(payload) > 6 * _MAX_SETTINGS:
            raise ConnectionError_(w.ENHANCE_YOUR_CALM, "too many entries in one SETTINGS")
        self._settings_seen = True
        # each one costs an acknowledgement: a client sends one or two per connection
        self._no_progress("SETTINGS frames")
        for key, value in w.parse_settings(payload):
            self._apply_setting(key, value)
        self._write(w.frame(w.SETTINGS, w.ACK, 0))

    def _apply_setting(self, key: int, value: int) -> None:
        if key == w.SETTINGS_INITIAL_WINDOW_SIZE:
            if value > w.MAX_WINDOW:
                raise ConnectionError_(w.FLOW_CONTROL_ERROR, "initial window too large")
            delta = value - self._peer_initial_window
            self._peer_initial_window = value
            for stream in self.streams.values():
                stream.send_window += delta
                if stream.send_window > w.MAX_WINDOW:  # RFC 9113 §6.9.2
                    raise ConnectionError_(w.FLOW_CONTROL_ERROR, "stream window overflow")
            if delta > 0:
                self._wake_senders()
        elif key == w.SETTINGS_MAX_FRAME_SIZE:
            if not w.DEFAULT_MAX_FRAME <= value <= w.MAX_FRAME_LIMIT:
                raise ConnectionError_(w.PROTOCOL_ERROR, "bad SETTINGS_MAX_FRAME_SIZE")
            self._peer_max_frame = value
        elif key == w.SETTINGS_ENABLE_PUSH and value > 1:
            raise ConnectionError_(w.PROTOCOL_ERROR, "bad SETTINGS_ENABLE_PUSH")
        # header table size: responses use no table; others need no action

    def _on_push_promise(self, flags: int, sid: int, payload: bytes) -> None:
        raise ConnectionError_(w.PROTOCOL_ERROR, "PUSH_PROMISE from a client")

    def _on_ping(self, flags: int, sid: int, payload: bytes) -> None:
        if sid != 0:
            raise ConnectionError_(w.PROTOCOL_ERROR, "PING on a stream")
        if len(payload) != 8:
            raise ConnectionError_(w.FRAME_SIZE_ERROR, "PING frame of wrong size")
        if not flags & w.ACK:
            self._write(w.frame(w.PING, w.ACK, 0, payload))

    def _on_goaway(self, flags: int, sid: int, payload: bytes) -> None:
        # The client starts no new call; the ones in flight finish, then it closes.
        if sid != 0:
            raise ConnectionError_(w.PROTOCOL_ERROR, "GOAWAY on a stream")
        if len(payload) < 8:
            raise ConnectionError_(w.FRAME_SIZE_ERROR, "GOAWAY frame too short")

    def _on_window_update(self, flags: int, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ConnectionError_(w.FRAME_SIZE_ERROR, "WINDOW_UPDATE frame of wrong size")
        increment = w.read_u32(payload) & 0x7FFFFFFF
        if sid == 0:
            if increment == 0:
                raise ConnectionError_(w.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self._send_window += increment
            if self._send_window > w.MAX_WINDOW:
                raise ConnectionError_(w.FLOW_CONTROL_ERROR, "connection window overflow")
        else:
            stream = self.streams.get(sid)
            if stream is None:
                if self._idle(sid):  # RFC 9113 §5.1
                    raise ConnectionError_(w.PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream")
                return
            if increment == 0 or stream.send_window + increment > w.MAX_WINDOW:
                # RFC 9113 §6.9: an increment of 0 is a PROTOCOL_ERROR, an overflow §6.9.1's
                code = w.PROTOCOL_ERROR if increment == 0 else w.FLOW_CONTROL_ERROR
                self._stream_error(stream, code)
                return
            stream.send_window += increment
        self._wake_senders()

    def _stream_error(self, stream: Stream, code: int) -> None:
        """RST_STREAM for a client's mistake on one stream; its handler is cancelled. Each
        costs the client a token: a client that makes the server reset streams it opened
        cheaply ("MadeYouReset", CVE-2025-8671) is a rapid reset by other means."""
        self._write(w.rst_stream(stream.id, code))
        self._reset(stream)
        self._no_progress("stream errors")

    def _no_progress(self, what: str) -> None:
        """Spend one token of the connection's bucket on a frame that moves no call forward;
        an empty bucket is a flood (ENHANCE_YOUR_CALM, as nghttp2 and Go's server answer
        CVE-2019-9518's). Only such frames pay, so a busy well-behaved client never does."""
        s = self.server
        now = self.loop.time()
        tokens = min(float(s.flood_burst), self._tokens + (now - self._tokens_at) * s.flood_rate)
        self._tokens_at = now
        if tokens < 1.0:
            raise ConnectionError_(w.ENHANCE_YOUR_CALM, f"flood of {what}")
        self._tokens = tokens - 1.0

    # --- timers ----------------------------------------------------------------------------

    def _on_timer(self) -> None:
        """First the handshake deadline, then the idle checks every ``idle_timeout``."""
        self._timer = None
        if self.closed:
            return
        http1 = self._http1
        if not (self._settings_seen or (http1 is not None and http1.requests)):
            limit = self.server.handshake_timeout
            left = self._opened_at + limit - self.loop.time() if limit is not None else 0.0
            if left > 0.001:  # the idle period was the shorter: wait for the handshake's
                self._timer = self.loop.call_later(left, self._on_timer)
                return
            # a slowloris: nothing, or a byte now and then, never a whole preface
            log.info("grpc connection %s closed: no complete preface in time", self.peer)
            self.abort()
            return
        timeout = self.server.idle_timeout
        if timeout is None:
            return
        # Activity is a call started since the previous check (new stream ids only grow;
        # HTTP/1 counts its requests); PINGs are not activity, as in grpc-go's
        # MaxConnectionIdle, or keepalive pings would hold an unused connection forever.
        # Closing needs no call open at this check and the previous one and no new call in
        # between, so the connection was idle for between one and two periods.
        mark = http1.requests if http1 is not None else self._last_stream
        busy = bool(self.streams) if http1 is None else http1.busy
        if not busy and not self._busy_before and mark == self._idle_mark:
            log.info("grpc connection %s closed: idle", self.peer)
            if http1 is not None:
                self.close_transport()
            else:
                self.goaway()  # GOAWAY NO_ERROR: the client reconnects for its next call
            return
        self._idle_mark = mark
        self._busy_before = busy
        self._timer = self.loop.call_later(timeout, self._on_timer)

    # --- calls -----------------------------------------------------------------------------

    def _decode_headers(self, block: bytes) -> list[tuple[bytes, bytes]]:
        """HPACK-decode ``block``. A block of one-byte indexed fields only changes no table
        state, so its decoding is cached until a block that may change the table arrives
        (which shifts every dynamic index, so the cache is dropped)."""
        cached = self._header_cache.get(block)
        if cached is not None:
            return cached
        try:
            headers = cast("list[tuple[bytes, bytes]]", self._decoder.decode(block, raw=True))
        except Exception as exc:
            raise ConnectionError_(w.COMPRESSION_ERROR, f"header block: {exc}") from exc
        if block.translate(None, _HIGH_BYTES):
            self._header_cache.clear()
            self._request_cache.clear()
        elif len(self._header_cache) < _HEADER_CACHE_SIZE:
            self._header_cache[block] = headers
        return headers

    def _headers_complete(self, sid: int, flags: int, block: bytes) -> None:
        stream = self.streams.get(sid)
        if stream is not None:  # trailers of a request: gRPC sends none, but they are legal
            self._trailers(stream, flags, self._decode_headers(block))
            return
        # A block cached by _decode_headers changes no HPACK state, so its parse is reused
        # without decoding it again; any other block is decoded to keep the table in step.
        head = self._request_cache.get(block)
        if head is None:
            head = parse_request(self._decode_headers(block))
            if block in self._header_cache:
                self._request_cache[block] = head
        if sid % 2 == 0 or sid <= self._last_stream:
            raise ConnectionError_(w.PROTOCOL_ERROR, f"HEADERS on closed or even stream {sid}")
        self._last_stream = sid
        if head.problem is not None:
            # RFC 9113 §8.1.1: a malformed request is a stream error of type PROTOCOL_ERROR
            log.info("grpc connection %s: stream %d refused: %s", self.peer, sid, head.problem)
            self._write(w.rst_stream(sid, w.PROTOCOL_ERROR))
            self._no_progress("malformed requests")
            return
        if self._goaway_sent or len(self.streams) >= self.server.max_concurrent_streams:
            self._no_progress("refused streams")
            self._write(w.rst_stream(sid, w.REFUSED_STREAM))
            return
        self._open_call(sid, flags, head)

    def _trailers(self, stream: Stream, flags: int, headers: list[tuple[bytes, bytes]]) -> None:
        if stream.recv_closed:  # the request had ended (RFC 9113 §5.1, half-closed)
            self._stream_error(stream, w.STREAM_CLOSED)
            return
        if not flags & w.END_STREAM:
            raise ConnectionError_(w.PROTOCOL_ERROR, "second HEADERS without END_STREAM")
        problem = trailers_problem(headers)
        if problem is not None:  # RFC 9113 §8.1: malformed trailers end the stream
            log.info("grpc connection %s: stream %d reset: %s", self.peer, stream.id, problem)
            self._stream_error(stream, w.PROTOCOL_ERROR)
            return
        self._end_of_request(stream)

    def _open_call(self, sid: int, flags: int, head: RequestHead) -> None:
        method = self.server.methods.get(head.path)
        # Until the client acknowledges our SETTINGS it may assume the default stream window.
        stream = Stream(sid, method, self._peer_initial_window,
                        max(self.server.stream_window, w.DEFAULT_WINDOW))
        stream.metadata = head.metadata
        stream.length_left = head.content_length
        self.streams[sid] = stream
        if flags & w.END_STREAM:
            stream.recv_closed = True
        encoding = head.encoding
        if head.method != b"POST" or not head.content_type.startswith(b"application/grpc"):
            self._answer_error(stream, INTERNAL, "not a gRPC request")
        elif method is None:
            self._answer_error(stream, UNIMPLEMENTED,
                               f"unknown method {head.path.decode('latin-1')}")
        elif encoding not in (b"", b"identity", b"gzip", b"deflate"):
            self._answer_error(stream, UNIMPLEMENTED,
                               f"grpc: decompressor for {encoding.decode('latin-1')} not installed")
        else:
            stream.compressed_ok = encoding in (b"gzip", b"deflate")
            if head.timeout:
                self._set_deadline(stream, head.timeout)
            if method.client_streaming and not stream.discard:  # not if refused just above
                self._start(stream, self.server.run_streaming_request(self, stream, Context(self, stream)))
        if stream.recv_closed and not stream.discard:
            self._end_of_request(stream)

    def _set_deadline(self, stream: Stream, value: bytes) -> None:
        seconds = w.parse_timeout(value)
        if seconds is None:
            self._answer_error(stream, INTERNAL, "malformed grpc-timeout")
            return
        stream.deadline = self.loop.call_later(seconds, self._expire, stream)

    def _expire(self, stream: Stream) -> None:
        stream.timed_out = True
        stream.cancelled = True
        stream.trailing = b""  # the status is the deadline's, not the handler's
        if stream.task is not None and not stream.task.done():
            stream.task.cancel()
        elif not stream.done:
            self.finish(stream, DEADLINE_EXCEEDED, "Deadline Exceeded")

    def _take_messages(self, stream: Stream) -> None:
        """Move complete length-prefixed messages from the stream's buffer to its inbox."""
        buf = stream.buf
        limit = self.server.max_receive_message_length
        while len(buf) >= 5:
            size = int.from_bytes(buf[1:5], "big")
            if size > limit:
                self._answer_error(stream, RESOURCE_EXHAUSTED,
                                   f"grpc: received message larger than max ({size} vs. {limit})")
                return
            if len(buf) < 5 + size:
                break
            flag = buf[0]
            raw = bytes(buf[5:5 + size])
            del buf[:5 + size]
            if flag:
                inflated = self._decompress(stream, raw)
                if inflated is None:
                    return
                raw = inflated
            if stream.method is not None and stream.method.client_streaming:
                stream.inbox.append(raw)
                stream.wake()
            else:
                stream.unacked += size + 5
                stream.inbox.append(raw)

    def _decompress(self, stream: Stream, raw: bytes) -> bytes | None:
        if not stream.compressed_ok:
            self._answer_error(stream, INTERNAL,
                               "grpc: compressed flag set with identity or empty encoding")
            return None
        import zlib

        # The size limit applies to the inflated message: inflate at most one byte past it,
        # so a small compressed request cannot expand into gigabytes.
        limit = self.server.max_receive_message_length
        inflater = zlib.decompressobj(47)  # gzip or zlib header, detected
        try:
            out = inflater.decompress(raw, limit + 1)
        except zlib.error:
            out = None
        if out is not None and len(out) > limit:
            self._answer_error(stream, RESOURCE_EXHAUSTED,
                               f"grpc: received message after decompression larger than max "
                               f"(more than {limit})")
            return None
        if out is None or not inflater.eof:  # corrupt, or cut short
            self._answer_error(stream, INTERNAL, "grpc: failed to decompress the request")
            return None
        return out

    def _end_of_request(self, stream: Stream) -> None:
        if stream.length_left > 0:  # RFC 9113 §8.1.1: less than its content-length
            self._stream_error(stream, w.PROTOCOL_ERROR)
            return
        stream.recv_closed = True
        if stream.discard:
            return
        if stream.buf:
            self._answer_error(stream, INTERNAL, "grpc: request ends inside a message")
            return
        method = stream.method
        assert method is not None
        if method.client_streaming:
            stream.inbox.append(None)
            stream.wake()
            return
        if len(stream.inbox) != 1:
            self._answer_error(stream, UNIMPLEMENTED if not stream.inbox else INTERNAL,
                               "grpc: a unary request needs exactly one message")
            return
        raw = stream.inbox.popleft()
        assert raw is not None
        try:
            request = method.parse(raw)
        except Exception:
            self._answer_error(stream, INTERNAL, "grpc: error unmarshalling request")
            return
        ctx = Context(self, stream)
        if method.server_streaming:
            self._start(stream, self.server.run_stream_response(self, stream, method, request, ctx))
        else:
            self._start(stream, self.server.run_unary(self, stream, method, request, ctx))

    def _start(self, stream: Stream, coro: Any) -> None:
        stream.task = self.loop.create_task(coro)

    # --- writing answers -----------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        self._out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._out and self.transport is not None and not self.closed:
            out = self._out
            self._out = []
            self.transport.write(b"".join(out) if len(out) > 1 else out[0])

    def write_raw(self, data: bytes) -> None:
        """Bytes for the HTTP/1 session (no framing)."""
        self._write(data)

    async def drain(self) -> None:
        """Flush, then wait while the transport's buffer is over its high-water mark."""
        self._flush()
        while self._write_paused and not self.closed:
            await self._wait_for_window()
        if self.closed:
            raise ConnectionResetError("connection closed")

    def close_transport(self) -> None:
        self._flush()
        if self.transport is not None:
            self.transport.close()

    def send_unary(self, stream: Stream, payload: bytes) -> bool:
        """Headers, the one answer message and OK trailers, at once if the windows allow
        (the usual case); False if the caller must take the flow-controlled path."""
        if stream.done:
            return True
        if stream.headers_sent or stream.trailing:  # the handler's metadata: general path
            return False
        n = len(payload) + 5
        if n > self._send_window or n > stream.send_window or n > self._peer_max_frame:
            return False
        self._send_window -= n
        stream.send_window -= n
        sid = stream.id
        pack = w.FRAME_HEADER.pack
        self._write(b"".join((
            pack(0, len(w.RESPONSE_HEADERS), w.HEADERS, w.END_HEADERS, sid), w.RESPONSE_HEADERS,
            pack(n >> 16, n & 0xFFFF, w.DATA, 0, sid), b"\x00", (n - 5).to_bytes(4, "big"), payload,
            pack(0, len(w.TRAILERS_OK), w.HEADERS, w.END_HEADERS | w.END_STREAM, sid),
            w.TRAILERS_OK,
        )))
        self._close_stream(stream)
        return True

    async def send_message(self, stream: Stream, payload: bytes) -> None:
        """One message of an answer, within the client's windows (waits for them)."""
        if not stream.headers_sent:
            self._send_headers(stream)
        data = memoryview(w.grpc_message(payload))
        while data:
            if stream.done:
                raise asyncio.CancelledError()
            room = min(self._send_window, stream.send_window, self._peer_max_frame)
            if room <= 0 or self._write_paused:
                await self._wait_for_window()
                continue
            chunk = bytes(data[:room])
            data = data[room:]
            self._send_window -= len(chunk)
            stream.send_window -= len(chunk)
            self._write(w.frame(w.DATA, 0, stream.id, chunk))

    def _send_headers(self, stream: Stream) -> None:
        stream.headers_sent = True
        self._write(w.frame(w.HEADERS, w.END_HEADERS, stream.id, w.RESPONSE_HEADERS))

    def send_headers(self, stream: Stream, metadata: bytes) -> None:
        """The response headers with the handler's metadata fields, ahead of any message."""
        stream.headers_sent = True
        self._write(w.header_frames(stream.id, w.RESPONSE_HEADERS + metadata, False,
                                    self._peer_max_frame))

    async def _wait_for_window(self) -> None:
        fut = self.loop.create_future()
        self._send_waiters.append(fut)
        await fut

    def _wake_senders(self) -> None:
        waiters, self._send_waiters = self._send_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def finish(self, stream: Stream, code: int, message: str = "") -> None:
        """End the call with a status: trailers after an answer's headers, or a trailers-only
        response if nothing was sent yet."""
        if stream.done:
            return
        trailing = stream.trailing
        if trailing == _INVALID:  # set_trailing_metadata was given invalid metadata
            code, message, trailing = INTERNAL, "Invalid metadata", b""
        block = w.status_block(code, message) + trailing
        if not stream.headers_sent:
            block = w.RESPONSE_HEADERS + block
        self._write(w.header_frames(stream.id, block, True, self._peer_max_frame))
        self._close_stream(stream)

    def _answer_error(self, stream: Stream, code: int, message: str) -> None:
        """A call refused before its handler ran; its remaining request data is dropped."""
        stream.discard = True
        stream.buf.clear()
        stream.unacked += sum(len(m) + 5 for m in stream.inbox if m is not None)
        stream.inbox.clear()
        if stream.task is not None and not stream.task.done():
            stream.task.cancel()
        self.finish(stream, code, message)

    def _close_stream(self, stream: Stream) -> None:
        stream.done = True
        if stream.deadline is not None:
            stream.deadline.cancel()
        if not stream.recv_closed:
            # The answer is complete before the request: tell the client to stop sending
            # (RFC 9113 §8.1: RST_STREAM NO_ERROR after a complete response).
            self._write(w.rst_stream(stream.id, w.NO_ERROR))
        self.streams.pop(stream.id, None)
        if stream.callbacks is not None:
            stream.ended()
        self._maybe_close_after_goaway()

    def _reset(self, stream: Stream) -> None:
        """The client cancelled the call (or the connection ended): stop its handler."""
        stream.done = True
        stream.cancelled = True
        if stream.deadline is not None:
            stream.deadline.cancel()
        self.streams.pop(stream.id, None)
        if stream.task is not None and not stream.task.done():
            stream.task.cancel()
        stream.wake()
        if stream.callbacks is not None:
            stream.ended()

    def credit(self, stream: Stream, n: int) -> None:
        """``n`` bytes of the stream were consumed by its handler: let the client send more.

        Credit is batched up to a quarter window, but not held once the handler has read
        everything: the window holds one largest message, not one plus the uncredited bytes,
        so the client may need exactly those bytes to finish its next message."""
        stream.unacked += n
        if ((stream.unacked >= self.server.stream_window // 4 or not stream.inbox)
                and not stream.recv_closed):
            self._ack_stream(stream)

    def _ack_stream(self, stream: Stream) -> None:
        if stream.unacked and not stream.recv_closed and not stream.done:
            self._write(w.window_update(stream.id, stream.unacked))
            stream.recv_window += stream.unacked
        stream.unacked = 0

    # --- closing -----------------------------------------------------------------------------

    def goaway(self) -> None:
        """Refuse new calls (the server is stopping); close once the calls in flight end."""
        if self._goaway_sent or self.closed:
            return
        self._goaway_sent = True
        self._write(w.goaway(self._last_stream, w.NO_ERROR))
        self._flush()
        self._maybe_close_after_goaway()

    def _maybe_close_after_goaway(self) -> None:
        if self._goaway_sent and not self.streams and self.transport is not None:
            self._flush()
            self.transport.close()

    def abort(self) -> None:
        """Close now, cancelling every call."""
        self._flush()
        if self.transport is not None:
            self.transport.close()
        self.connection_lost(None)

    def _fail(self, code: int, reason: str) -> None:
        log.warning("grpc connection %s closed: %s", self.peer, reason)
        self._write(w.goaway(self._last_stream, code, reason.encode()[:256]))
        self._flush()
        self._linger_close()
        self.connection_lost(None)

    def _linger_close(self) -> None:
        """Close after a GOAWAY so the client reads it: closing a socket with unread input
        sends a TCP reset, which may destroy the GOAWAY in flight (RFC 9113 §6.8 asks for
        time to receive it). Our side of the stream ends now; what the client still sends
        is dropped (``closed``) until it closes too, or for at most a second (Go's server
        waits as long)."""
        transport = self.transport
        if transport is None:
            return
        if transport.can_write_eof() and not transport.is_closing():
            transport.write_eof()
            lingering = self.server.lingering
            lingering.add(transport)

            def close() -> None:
                lingering.discard(transport)
                transport.close()

            self.loop.call_later(_LINGER_S, close)
        else:  # TLS: no half-close
            transport.close()


def _strip_padding(payload: bytes) -> bytes:
    if not payload:
        raise ConnectionError_(w.PROTOCOL_ERROR, "padded frame without a pad length")
    pad = payload[0]
    if pad >= len(payload):
        raise ConnectionError_(w.PROTOCOL_ERROR, "padding longer than the frame")
    return payload[1:len(payload) - pad]


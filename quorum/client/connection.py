"""One pipelined connection to a native protocol server.

Requests are encoded once into an output buffer and flushed with a single write per loop
turn, so many concurrent callers share one syscall. Answers are matched to callers by request
id in any order; frames under a watch id are handed to that watch's callback.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable

import msgspec

from quorum.api.native import messages as m
from quorum.api.native.framing import DEFAULT_MAX_FRAME_BYTES, HEADER_BYTES, FrameDecoder
from quorum.errors import (
    ConnectionLost,
    FrameError,
    RequestTimeout,
    RequestTooLarge,
    TlsHandshakeFailed,
)

# a stream callback gets each body under its id, and None once the connection is gone
StreamCallback = Callable[[m.ResponseBody | None], None]

# the request id of the probe that confirms a new TLS session (answered before any other
# request is sent, so it cannot collide with the client's own ids, which start at 1)
PROBE_ID = (1 << 63) - 1


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """``host:port`` (IPv6 as ``[::1]:port``) -> (host, port). Raises ValueError."""
    host, sep, port = endpoint.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"endpoint {endpoint!r} is not host:port")
    return host.strip("[]") or "127.0.0.1", int(port)


class Connection(asyncio.Protocol):
    """Use :func:`open_connection`. After a loss every pending request fails with
    :class:`ConnectionLost` and every stream callback receives ``None``; the object is then
    dead for good (the client opens a new one)."""

    def __init__(self, endpoint: str, max_frame_bytes: int) -> None:
        self.endpoint = endpoint
        self.pending: dict[int, asyncio.Future[m.ResponseBody]] = {}
        self.deadlines: dict[int, float] = {}  # request id -> loop time its caller gives up
        self.streams: dict[int, StreamCallback] = {}
        self.closed = False
        self.retired = False  # the client has failed over away from this connection
        self.member_id = 0  # the server's member id, once the client asked (0: unknown)
        self.hint = 0  # the leader hint of the last answer (Response.leader; 0: none)
        self._close_when_idle = False
        self.last_heard = 0.0  # loop time of the last bytes received
        self.waiting_since = 0.0  # loop time the oldest stretch of pending requests began
        self._decoder = FrameDecoder(max_frame_bytes)
        self._max_frame_bytes = max_frame_bytes
        self._response_decoder = msgspec.msgpack.Decoder(m.Response)
        self._encoder = msgspec.msgpack.Encoder()
        self._transport: asyncio.Transport | None = None
        self._out = bytearray()
        self._flush_scheduled = False
        self._loop = asyncio.get_running_loop()

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: accept any transport.
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.last_heard = self._loop.time()
        try:
            frames = self._decoder.feed(data)
            decode = self._response_decoder.decode
            for body in frames:
                self._route(decode(body))
        except (FrameError, msgspec.DecodeError, ValueError):  # ValueError: bad UTF-8 too
            self.close()  # the stream can no longer be trusted; callers retry elsewhere

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        pending, self.pending = self.pending, {}
        self.deadlines = {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(ConnectionLost(f"connection to {self.endpoint} lost"))
        streams, self.streams = self.streams, {}
        for callback in streams.values():
            callback(None)

    def _route(self, resp: m.Response) -> None:
        fut = self.pending.pop(resp.id, None)
        if fut is not None:
            del self.deadlines[resp.id]
            self.hint = resp.leader
            if not fut.done():
                fut.set_result(resp.body)
            if self._close_when_idle and not self.pending:
                self.close()
            return
        callback = self.streams.get(resp.id)
        if callback is not None:
            callback(resp.body)

    # --- sending ---------------------------------------------------------------------------

    def request(
        self, req: m.Request, deadline: float = float("inf")
    ) -> asyncio.Future[m.ResponseBody]:
        """Send ``req``; the future gets its answer body, ConnectionLost, or RequestTimeout
        from :meth:`expire` once ``deadline`` (loop time) has passed."""
        fut: asyncio.Future[m.ResponseBody] = self._loop.create_future()
        if self.closed:
            fut.set_exception(ConnectionLost(f"connection to {self.endpoint} is closed"))
            return fut
        try:
            self.send(req)
        except RequestTooLarge as exc:
            fut.set_exception(exc)
            return fut
        if not self.pending:
            self.waiting_since = self._loop.time()
        self.pending[req.id] = fut
        self.deadlines[req.id] = deadline
        return fut

    def silent_for(self, now: float) -> float:
        """How long requests have been waiting with not a byte from the server: a server
        that is alive answers *something* (any request) within a moment; a paused, crashed
        or partitioned one keeps the TCP connection open and says nothing."""
        if not self.pending:
            return 0.0
        return now - max(self.waiting_since, self.last_heard)

    def expire(self, now: float) -> None:
        """Fail every request whose deadline passed (a late answer is then dropped). One sweep
        over the pending requests replaces a timer per request on the hot path."""
        late = [req_id for req_id, deadline in self.deadlines.items() if deadline <= now]
        for req_id in late:
            del self.deadlines[req_id]
            fut = self.pending.pop(req_id)
            if not fut.done():
                fut.set_exception(RequestTimeout("no answer before the deadline"))
        if late and self._close_when_idle and not self.pending:
            self.close()

    def open_stream(self, req: m.Request, callback: StreamCallback) -> None:
        """Send ``req`` and route every frame under its id to ``callback``."""
        if self.closed:
            callback(None)
            return
        self.streams[req.id] = callback
        self.send(req)

    def close_stream(self, stream_id: int) -> None:
        self.streams.pop(stream_id, None)

    def send(self, req: m.Request) -> None:
        """Queue ``req`` for the next flush. Raises RequestTooLarge (nothing queued) for a
        frame the server would refuse: sending it would only get the connection closed."""
        out = self._out
        start = len(out)
        out += b"\0\0\0\0"
        self._encoder.encode_into(req, out, start + HEADER_BYTES)
        size = len(out) - start - HEADER_BYTES
        if size > self._max_frame_bytes:
            del out[start:]
            raise RequestTooLarge(f"request of {size} bytes exceeds the {self._max_frame_bytes} frame limit")
        out[start : start + HEADER_BYTES] = size.to_bytes(4, "big")
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self.closed or self._transport is None or not self._out:
            self._out.clear()
            return
        # hand the filled buffer over and start a fresh one: no copy, and the transport may
        # keep a reference to it because it is never written to again
        data, self._out = self._out, bytearray()
        self._transport.write(data)

    def close_when_idle(self) -> None:
        """Close once every pending request has its answer (or timed out); streams are
        cut then. For a connection the client stops sending on but whose requests in flight
        should still complete (no spurious ConnectionLost, no needless retry)."""
        self._close_when_idle = True
        if not self.pending:
            self.close()

    async def start_tls(self, context: ssl.SSLContext, server_name: str) -> None:
        """Upgrade the fresh TCP connection to TLS, checking that the server's certificate
        names ``server_name``, and make sure the server accepted the session. Raises
        TlsHandshakeFailed (the connection is closed then)."""
        plain = self._transport
        assert plain is not None, "start_tls before connection_made"
        try:
            tls = await self._loop.start_tls(plain, self, context, server_hostname=server_name)
        except (OSError, EOFError) as exc:  # ssl.SSLError is an OSError; EOF: a plain server
            plain.abort()
            self.closed = True
            raise TlsHandshakeFailed(
                f"TLS handshake with {self.endpoint} failed: {_tls_reason(exc)}") from None
        self._transport = tls
        await self._confirm_session()

    async def _confirm_session(self) -> None:
        """One round trip before the connection is used. With TLS 1.3 the client's side of
        the handshake completes before the server has checked the client's certificate; a
        server that refuses it (or its absence) then just closes the connection (asyncio
        sends no alert). Without this probe that looks like a server crash after the first
        request, which the client would retry until its deadline; with it, a connection
        closed before its first answer is reported as a refused session, and no request of
        the caller was ever sent on it. Any answer, even an error, means it was accepted."""
        try:
            await self.request(m.Request(PROBE_ID, m.StatusReq()))
        except ConnectionLost:
            raise TlsHandshakeFailed(
                f"{self.endpoint} closed the TLS connection before answering: it refused this "
                "client's certificate (or the lack of one)") from None

    def close(self) -> None:
        """Drop the connection; pending requests fail with ConnectionLost."""
        if self._transport is not None and not self.closed:
            self._transport.abort()
        self.closed = True


async def open_connection(
    endpoint: str, timeout_s: float, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    *, tls: ssl.SSLContext | None = None, server_name: str = "",
) -> Connection:
    """Connect to ``endpoint``; with ``tls``, run the TLS handshake on the new connection
    (the server's certificate must name ``server_name``, by default the endpoint's host).
    Raises OSError or TimeoutError when the endpoint cannot be reached, TlsHandshakeFailed
    when it was reached but no TLS session came about.

    The TCP connection and the handshake are two steps so the two failures stay apart: an
    unreachable member is retried elsewhere, a certificate problem is reported as one."""
    host, port = parse_endpoint(endpoint)
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout_s):
        _, proto = await loop.create_connection(
            lambda: Connection(endpoint, max_frame_bytes), host, port
        )
        if tls is not None:
            try:
                await proto.start_tls(tls, server_name or host)
            except BaseException:  # the deadline, mid-handshake or mid-probe: leak nothing
                proto.close()
                raise
    return proto


def _tls_reason(exc: BaseException) -> str:
    """The most telling words of a TLS failure (OpenSSL's verify message when there is one)."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    if isinstance(exc, ConnectionError | EOFError):
        return (f"the server closed the connection during the handshake ({type(exc).__name__}"
                "; does it serve TLS, and does it accept this client's certificate?)")
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

"""``GrpcServer``: gRPC over HTTP/2 (cleartext or TLS) on asyncio, for servicers written
against grpc.aio's servicer interface.

Methods come from the protobuf service descriptors, so one ``add_service`` call registers
every method of a generated servicer class: unary, server-streaming, client-streaming and
bidirectional. Handlers are the servicer's own coroutines and async generators; the context
passed to them offers grpc.aio's ServicerContext methods (``connection.Context``).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Any

from google.protobuf import message_factory  # type: ignore[import-untyped]
from google.protobuf.descriptor import ServiceDescriptor  # type: ignore[import-untyped]

from quorum.api.conncap import ConnectionCap
from quorum.api.h2grpc.connection import Context, H2Connection, Stream, _RequestIterator
from quorum.api.h2grpc.http1 import Handler
from quorum.api.h2grpc.status import DEADLINE_EXCEEDED, OK, UNKNOWN, AbortError, code_number

log = logging.getLogger(__name__)

MIB = 1024 * 1024
MAX_WINDOW = 2**31 - 1


class Method:
    """One served method: its handler, its request message class (``parse`` decodes one) and
    its kind."""

    __slots__ = ("client_streaming", "handler", "name", "parse", "request_class",
                 "server_streaming")

    def __init__(self, name: str, handler: Callable[..., Any], request_class: Any,
                 client_streaming: bool, server_streaming: bool) -> None:
        self.name = name
        self.handler = handler
        self.request_class = request_class
        self.parse: Callable[[bytes], Any] = request_class.FromString
        self.client_streaming = client_streaming
        self.server_streaming = server_streaming


class GrpcServer:
    """Serves the registered services on one listening socket.

    ``max_receive_message_length`` bounds a request message (larger ones end their call with
    RESOURCE_EXHAUSTED, as grpc does). Flow-control windows are generous so a unary request
    of the largest allowed size needs no window update round trip.

    ``handshake_timeout``: seconds a new connection has to send its whole preface (the HTTP/2
    magic and SETTINGS, or a first HTTP/1 request), so sockets opened and left silent (or
    fed a byte at a time) are closed. ``idle_timeout``: a connection with no call open and
    none started for that long (up to twice that) is closed with GOAWAY; two hours by
    default, generous as grpc-go's MaxConnectionIdle is meant to be (None: never).
    ``flood_burst`` and ``flood_rate``: the per-connection token bucket of frames that
    carry no progress (empty DATA or CONTINUATION, PRIORITY, SETTINGS, unknown types,
    refused streams, malformed requests, stream errors): a client that spends more than ``flood_burst`` plus ``flood_rate`` per second
    loses the connection with ENHANCE_YOUR_CALM.
    """

    def __init__(self, *, max_receive_message_length: int = 4 * MIB,
                 max_concurrent_streams: int = 10_000, stream_window: int = 4 * MIB,
                 connection_window: int = 16 * MIB, max_frame_size: int = 1 * MIB,
                 max_header_list_size: int = 64 * 1024,
                 http1_handler: Handler | None = None,
                 handshake_timeout: float | None = 10.0, idle_timeout: float | None = 7200.0,
                 flood_burst: int = 1000, flood_rate: float = 100.0,
                 max_connections: int = 0, max_connections_per_ip: int = 0) -> None:
        self.methods: dict[bytes, Method] = {}
        # answers connections that speak HTTP/1.x instead of gRPC (404 for all if None)
        self.http1_handler = http1_handler
        self.max_receive_message_length = max_receive_message_length
        self.max_concurrent_streams = max_concurrent_streams
        # Invariant: a stream window holds a whole message of the largest size, so a partly
        # received message never waits for a credit that only its completion would release.
        self.stream_window = min(MAX_WINDOW, max(stream_window, max_receive_message_length + 5))
        self.connection_window = min(MAX_WINDOW, max(connection_window, self.stream_window))
        self.max_frame_size = max_frame_size
        self.max_header_list_size = max_header_list_size
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        self.flood_burst = flood_burst
        self.flood_rate = flood_rate
        self.connections: set[H2Connection] = set()
        # beyond max_connections (0: no cap), or max_connections_per_ip from its address (0:
        # no limit), a new client is closed at once, before any TLS work, and logged
        self.cap = ConnectionCap("etcd", max_connections, self.connections,
                                 per_ip=max_connections_per_ip)
        # failed connections waiting for their client to read the GOAWAY (closed by stop)
        self.lingering: set[asyncio.Transport] = set()
        self._server: asyncio.Server | None = None

    def add_service(self, service: ServiceDescriptor, servicer: object) -> None:
        for m in service.methods:
            handler = getattr(servicer, m.name, None)
            if handler is None:  # not served: calls to it end with UNIMPLEMENTED
                continue
            path = f"/{service.full_name}/{m.name}".encode()
            self.methods[path] = Method(m.name, handler,
                                        message_factory.GetMessageClass(m.input_type),
                                        m.client_streaming, m.server_streaming)

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> int:
        """Listen on ``host:port`` (0 = any free port); returns the bound port."""
        loop = asyncio.get_running_loop()
        # The TLS handshake comes before connection_made (where the preface deadline starts):
        # bound it by the same deadline, not asyncio's default of 60 s. The cap runs it, on
        # a plain listener, so that a refused client is closed before any TLS work.
        tls_deadline = self.handshake_timeout if ssl_context is not None else None
        self._server = await loop.create_server(
            self.cap.factory(lambda: H2Connection(self), tls=ssl_context,
                             tls_timeout=tls_deadline),
            host, port, reuse_address=True,
        )
        sock = self._server.sockets[0]
        return int(sock.getsockname()[1])

    async def stop(self, grace: float | None = None) -> None:
        """Stop listening, refuse new calls, let calls in flight end for up to ``grace``
        seconds, then close every connection."""
        if self._server is not None:
            self._server.close()
        self.cap.cancel_handshakes()
        for conn in list(self.connections):
            conn.goaway()
        if grace:
            deadline = asyncio.get_running_loop().time() + grace
            while any(c.streams for c in self.connections):
                if asyncio.get_running_loop().time() >= deadline:
                    break
                await asyncio.sleep(0.01)
        for conn in list(self.connections):
            conn.abort()
        for transport in list(self.lingering):
            transport.close()
        self.lingering.clear()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    # --- running calls ---------------------------------------------------------------------

    async def run_unary(self, conn: H2Connection, stream: Stream, method: Method, request: Any,
                        ctx: Context) -> None:
        try:
            response = await method.handler(request, ctx)
            if _set_error(conn, stream, ctx):
                return
            payload = response.SerializeToString()
        except BaseException as exc:
            self._end_with(conn, stream, exc)
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            return
        if not conn.send_unary(stream, payload):
            await self._send_slow(conn, stream, payload)

    async def _send_slow(self, conn: H2Connection, stream: Stream, payload: bytes) -> None:
        try:
            await conn.send_message(stream, payload)
        except asyncio.CancelledError:
            self._end_with(conn, stream, asyncio.CancelledError())
            return
        conn.finish(stream, OK)

    async def run_stream_response(self, conn: H2Connection, stream: Stream, method: Method,
                                  request: Any, ctx: Context) -> None:
        await self._stream_out(conn, stream, method.handler(request, ctx), ctx)

    async def run_streaming_request(self, conn: H2Connection, stream: Stream,
                                    ctx: Context) -> None:
        method = stream.method
        assert method is not None
        requests = _RequestIterator(conn, stream, method.parse)
        ctx._requests = requests
        if method.server_streaming:
            await self._stream_out(conn, stream, method.handler(requests, ctx), ctx)
            return
        try:
            response = await method.handler(requests, ctx)
            if _set_error(conn, stream, ctx):
                return
            payload = response.SerializeToString()
            await conn.send_message(stream, payload)
        except BaseException as exc:
            self._end_with(conn, stream, exc)
            return
        conn.finish(stream, OK)

    async def _stream_out(self, conn: H2Connection, stream: Stream, responses: Any,
                          ctx: Context) -> None:
        try:
            if hasattr(responses, "__aiter__"):
                async for response in responses:
                    await conn.send_message(stream, response.SerializeToString())
            else:  # a coroutine that writes its answers with context.write
                await responses
        except BaseException as exc:
            self._end_with(conn, stream, exc)
            return
        finally:
            aclose = getattr(responses, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except BaseException as exc:  # its cleanup failed: the call ends anyway
                    if not isinstance(exc, asyncio.CancelledError):
                        log.warning("grpc stream cleanup failed: %r", exc)
        code = ctx._code
        conn.finish(stream, code_number(code) if code is not None else OK, ctx._details)

    def _end_with(self, conn: H2Connection, stream: Stream, exc: BaseException) -> None:
        """End a call whose handler raised ``exc``."""
        if isinstance(exc, AbortError):
            conn.finish(stream, exc.code, exc.details)
        elif isinstance(exc, asyncio.CancelledError):
            # cancelled by the client's reset (nothing to say), or by its deadline
            if stream.timed_out:
                conn.finish(stream, DEADLINE_EXCEEDED, "Deadline Exceeded")
        else:
            log.error("grpc call %s failed", stream.method.name if stream.method else "?",
                      exc_info=exc)
            conn.finish(stream, UNKNOWN, f"Unexpected {type(exc)}: {exc}")


def _set_error(conn: H2Connection, stream: Stream, ctx: Context) -> bool:
    """End the call if its handler set an error code with set_code and returned instead of
    raising: as with grpc.aio, that code and the details are the call's status, whatever
    the handler returned."""
    code = ctx._code
    if code is None or code_number(code) == OK:
        return False
    conn.finish(stream, code_number(code), ctx._details)
    return True

"""HTTP/1.1 on the gRPC port: a connection whose first bytes are an HTTP/1 request line
instead of the HTTP/2 preface is served by a plain request handler (etcd serves its JSON
gateway, /health, /version and /metrics next to gRPC on one port the same way).

Requests are read one at a time per connection (keep-alive and pipelining supported, with
bodies by Content-Length only); an answer is either one body or a stream of chunks
(chunked transfer encoding). Malformed or oversized requests get a 4xx answer and the
connection closes; nothing reaches the handler.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from quorum.api.h2grpc.wire import PREFACE

if TYPE_CHECKING:
    from quorum.api.h2grpc.connection import H2Connection

log = logging.getLogger(__name__)

METHODS = (b"GET ", b"POST ", b"PUT ", b"HEAD ", b"DELETE ", b"OPTIONS ", b"PATCH ")
MAX_HEAD = 16 * 1024
MAX_BODY = 4 * 1024 * 1024

_REASONS = {
    200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict", 411: "Length Required",
    412: "Precondition Failed", 413: "Payload Too Large", 429: "Too Many Requests",
    431: "Request Header Fields Too Large", 500: "Internal Server Error",
    501: "Not Implemented", 503: "Service Unavailable", 504: "Gateway Timeout",
}


@dataclass
class Request:
    method: str
    path: str  # without the query string
    query: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    # a streamed answer: its chunks are sent as they come (the body above is ignored)
    stream: AsyncIterator[bytes] | None = None
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Request], Awaitable[Response]]


def looks_like_http1(data: bytes | bytearray) -> bool:
    """True once the first bytes are an HTTP/1 method and cannot be the HTTP/2 preface
    ("P" could be either: undecided, so False until more bytes arrive)."""
    head = bytes(data[:8])
    if PREFACE.startswith(head):
        return False
    return any(m.startswith(head) or head.startswith(m) for m in METHODS)


class Http1Session:
    """Serves one connection that spoke HTTP/1.x first."""

    def __init__(self, conn: H2Connection, handler: Handler | None) -> None:
        self._conn = conn
        self._handler = handler
        self._buf = bytearray()
        self._task: asyncio.Task[None] | None = None
        self._close_after = False
        self.requests = 0  # requests started: the connection's activity count
        # A request after the first must arrive whole within the handshake deadline of its
        # first byte (the first one is held to the connection's own handshake deadline):
        # without it a keep-alive client could hold the connection with a request that never
        # ends, one byte now and then, until the idle timeout (two hours).
        self._head_timer: asyncio.TimerHandle | None = None

    @property
    def busy(self) -> bool:
        """A request is being answered (a streamed answer may last long: not idle)."""
        return self._task is not None

    def feed(self, data: bytes | bytearray) -> None:
        self._buf += data
        if self._task is not None and len(self._buf) > MAX_HEAD + MAX_BODY:
            # More pipelined bytes than the largest request while one is being answered:
            # cut the client off rather than buffer without bound.
            log.warning("http client %s pipelined over %d bytes", self._conn.peer,
                        MAX_HEAD + MAX_BODY)
            self._buf.clear()
            self._conn.close_transport()
            return
        self._next()

    def close(self) -> None:
        self._disarm()
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def _next(self) -> None:
        """Start the next complete request, if any and none is in progress."""
        if self._task is not None or self._close_after:
            return
        parsed = self._parse()
        if parsed is None:
            if self._buf and self.requests:
                self._arm()  # a later request has begun: it must be complete in time
            return
        self._disarm()
        self.requests += 1
        self._task = asyncio.get_running_loop().create_task(self._serve(parsed))

    def _arm(self) -> None:
        limit = self._conn.server.handshake_timeout
        if self._head_timer is None and limit is not None:
            self._head_timer = asyncio.get_running_loop().call_later(limit, self._too_slow)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _too_slow(self) -> None:
        self._head_timer = None
        if self._task is not None or not self._buf:
            return
        log.info("http client %s closed: request not complete in time", self._conn.peer)
        self._buf.clear()
        self._close_after = True
        self._task = asyncio.get_running_loop().create_task(
            self._serve(_error(408, "request not complete in time")))

    def _parse(self) -> Request | Response | None:
        buf = self._buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return _error(431, "request head too large") if len(buf) > MAX_HEAD else None
        if end > MAX_HEAD:
            return _error(431, "request head too large")
        lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return _error(400, "malformed request line")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                return _error(400, "malformed header line")
            headers[name.lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return _error(411, "chunked request bodies are not supported; send Content-Length")
        length_text = headers.get("content-length", "0")
        if not (length_text.isascii() and length_text.isdigit()):  # "²" is a digit to isdigit
            return _error(400, "bad Content-Length")
        length = int(length_text)
        if length > MAX_BODY:
            return _error(413, f"request body over {MAX_BODY} bytes")
        if len(buf) < end + 4 + length:
            return None
        body = bytes(buf[end + 4:end + 4 + length])
        del buf[:end + 4 + length]
        keep = headers.get("connection", "").lower()
        if keep == "close" or (parts[2] == "HTTP/1.0" and keep != "keep-alive"):
            self._close_after = True
        path, _, query = parts[1].partition("?")
        return Request(parts[0], path, query, headers, body)

    async def _serve(self, parsed: Request | Response) -> None:
        try:
            if isinstance(parsed, Response):  # the request was refused while parsing
                self._close_after = True
                response = parsed
            elif self._handler is None:
                response = _error(404, "this port serves gRPC only")
            else:
                try:
                    response = await self._handler(parsed)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("http request %s %s failed", parsed.method, parsed.path)
                    response = _error(500, "internal error")
            await self._write(response)
        except asyncio.CancelledError:
            return
        finally:
            self._task = None
        if self._close_after:
            self._conn.close_transport()
        else:
            self._next()

    async def _write(self, response: Response) -> None:
        conn = self._conn
        head = [f"HTTP/1.1 {response.status} {_REASONS.get(response.status, 'Status')}",
                f"Content-Type: {response.content_type}"]
        head += [f"{k}: {v}" for k, v in response.headers.items()]
        if self._close_after:
            head.append("Connection: close")
        if response.stream is None:
            head.append(f"Content-Length: {len(response.body)}")
            conn.write_raw(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + response.body)
            return
        head.append("Transfer-Encoding: chunked")
        conn.write_raw(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        stream = response.stream
        try:
            async for chunk in stream:
                if chunk:
                    conn.write_raw(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    await conn.drain()
        finally:  # also when the client went away: the producer's cleanup runs now
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
        conn.write_raw(b"0\r\n\r\n")


def _error(status: int, message: str) -> Response:
    return Response(status, (message + "\n").encode(), "text/plain; charset=utf-8")

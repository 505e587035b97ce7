"""The native protocol server: asyncio, one Protocol object per connection.

Throughput choices (docs/client.md): frames are parsed straight from ``data_received``
without stream readers; each request is run eagerly and, only if it has to wait, continues
as its own task, so a slow write never blocks the reads queued behind it (answers go out in
completion order, matched by id); answers are encoded once, straight into one output
buffer, and flushed with a single ``write`` per loop turn. No per-request logging: only
connection-level events are logged.

Bad input (a frame that is too large, does not decode, or is cut off at EOF) closes that one
connection with a logged reason; every other connection keeps being served.

TLS (``serve_native(..., tls=context)``): each accepted connection first goes through a
``_TlsGate`` that runs the handshake and only then hands the encrypted transport to a
``_Connection``. A client that does not speak TLS, presents no certificate or an untrusted
one, or stalls, is closed with the handshake's reason in the log (asyncio's own ssl server
drops such connections without a word at the default log level).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, Protocol

import msgspec

from quorum.api.backend import Watch
from quorum.api.conncap import ConnectionCap
from quorum.api.native import messages as m
from quorum.api.native.dispatch import BackendDispatcher, watch_body
from quorum.api.native.errors import error_body
from quorum.api.native.framing import DEFAULT_MAX_FRAME_BYTES, HEADER_BYTES, FrameDecoder
from quorum.api.resume import resume
from quorum.errors import FrameError, FrameTooLarge, WatchNotFound

log = logging.getLogger("quorum.api.native")

DEFAULT_MAX_INFLIGHT = 4096  # per connection; reading pauses above it (back-pressure)
TLS_HANDSHAKE_TIMEOUT_S = 10.0  # a connection that has not finished its handshake by then goes


class Dispatcher(Protocol):
    """Turns one request body into one answer body (see ``quorum.api.native.dispatch``)."""

    def handle(
        self, body: m.RequestBody, session: int, seq: int, serializable: bool = False
    ) -> Awaitable[m.ResponseBody]:
        """Serve a unary request; raises a :class:`QuorumError` subclass on typed failures."""
        ...

    async def open_watch(self, req: m.WatchCreateReq) -> tuple[Watch, int]:
        """Create a backend watcher; return it and the first revision it delivers. Raises a
        StateError for an invalid request."""
        ...

    def revision(self) -> int:
        """The current applied revision (no I/O)."""
        ...

    def leader_hint(self) -> int:
        """The leader's member id if another node leads, else 0 (no I/O; see Response)."""
        ...

    @property
    def batches_reads(self) -> bool:
        """True if linearizable ranges may share one ``read_barrier`` (then served with
        ``serializable=True``); False: each goes through ``handle`` on its own."""
        ...

    async def read_barrier(self, reads: int) -> None:
        """One ReadIndex barrier for ``reads`` linearizable reads that arrived before it."""
        ...

    def snapshot_chunks(self, chunk_bytes: int) -> AsyncIterator[bytes]:
        """The state's snapshot in pieces of at most ``chunk_bytes``."""
        ...


class _Connection(asyncio.Protocol):
    """One client connection. Invariant: every decoded request gets exactly one answer
    (or, for a watch, a stream under its id) unless the connection closes first."""

    def __init__(self, server: NativeServer) -> None:
        self._server = server
        self._dispatcher = server.dispatcher
        self._decoder = FrameDecoder(server.max_frame_bytes)
        self._request_decoder = server.request_decoder
        self._encoder = server.encoder
        self._transport: asyncio.Transport | None = None
        self._out = bytearray()
        self._flush_scheduled = False
        self._inflight: set[asyncio.Task[None] | _Waiting | _WriteWaiter] = set()
        self._watches: dict[int, asyncio.Task[None]] = {}  # watch id -> its pump task
        self._watchers: dict[int, Watch] = {}  # watch id -> backend watcher, once created
        self._reading_paused = False
        self._writing_paused = False
        self._can_write = asyncio.Event()  # cleared while the transport's buffer is full
        self._can_write.set()
        self._closed = False
        self._peer = "?"
        self._batch_reads = self._dispatcher.batches_reads
        # writes answered from a callback waiter when the dispatcher offers it (a Raft node)
        self._direct_writes = getattr(self._dispatcher, "submits_writes", False)

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: accept any transport.
        self._transport = transport  # type: ignore[assignment]
        self._peer = str(transport.get_extra_info("peername"))
        self._server.connections.add(self)
        if self._server.closing:  # the handshake ended after close() began
            self.drop()

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        try:
            frames = self._decoder.feed(data)
        except FrameError as exc:
            self.abort(f"bad frame: {exc}")
            return
        decode = self._request_decoder.decode
        batch = self._batch_reads
        direct = self._direct_writes
        reads: list[m.Request] = []
        for body in frames:
            try:
                req = decode(body)
            except Exception as exc:  # DecodeError, and e.g. UnicodeDecodeError on bad tags
                self.abort(f"undecodable request: {type(exc).__name__}: {exc}")
                return
            kind = type(req.body)
            if batch and kind is m.RangeRequest and not req.serializable:
                reads.append(req)
            elif direct and kind in _DIRECT_WRITES:
                self._submit_write(req)
            else:
                self._start(req)
        if reads:
            self._track(self._serve_reads(reads), True)
        self._maybe_pause_reading()

    def eof_received(self) -> bool | None:
        if self._decoder.pending_bytes():
            log.warning("native client %s: truncated frame at EOF; closing", self._peer)
        return None  # close our side once pending answers are flushed

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._server.connections.discard(self)
        for task in [*self._inflight, *self._watches.values()]:
            task.cancel()  # (a _Waiting closes its coroutine: no answer can follow)
        self._inflight.clear()
        self._watches.clear()

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._can_write.clear()
        self._maybe_pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._can_write.set()
        self._maybe_resume_reading()

    # --- requests --------------------------------------------------------------------------

    def _start(self, req: m.Request) -> None:
        body = req.body
        if isinstance(body, m.WatchCreateReq):
            self._start_watch(req.id, body)
        elif isinstance(body, m.WatchCancelReq):
            self._track(self._cancel_watch(req.id, body.watch_id))
        elif isinstance(body, m.WatchProgressReq):
            self._track(self._progress(req.id))
        elif isinstance(body, m.SnapshotReq):
            self._track(self._stream_snapshot(req.id, body.chunk_bytes))
        else:
            self._track(self._serve(req), type(body) in _KV_BODIES)

    def _submit_write(self, req: m.Request) -> None:
        """A write answered by a _WriteWaiter when it is applied (or fails)."""
        waiter = _WriteWaiter(self, req.id)
        self._inflight.add(waiter)
        try:
            self._dispatcher.submit_write(  # type: ignore[attr-defined]
                req.body, req.session, req.seq, waiter)
        except Exception as exc:
            waiter.fail(exc)

    def _answer_write(self, waiter: _WriteWaiter, body: m.ResponseBody) -> None:
        """Runs inside the node's Ready loop (apply): it must not raise."""
        self._inflight.discard(waiter)
        try:
            self.send(m.Response(waiter.req_id, body, self._dispatcher.leader_hint()))
            if not self._inflight:
                # Nothing else in flight on this connection (a lone sequential client): the
                # answer leaves at once instead of at the end of the loop turn, which the
                # Ready loop may reach only after more work. With requests in flight the
                # answers of the turn still share the scheduled write.
                self._write_out()
        except Exception as exc:
            log.error("answering write %d failed", waiter.req_id, exc_info=exc)
            self.abort(f"answer could not be sent: {type(exc).__name__}")
        if self._reading_paused:
            self._maybe_resume_reading()

    def _track(self, coro: Coroutine[Any, Any, None], light: bool = False) -> None:
        """Run ``coro`` eagerly up to its first suspension. A request the backend answers
        without waiting (a local read, every LocalBackend call) then costs no task and no
        loop turn; one that waits continues from where it stopped: a key-value request
        (``light``) driven by its future's callbacks (``_Waiting``: no Task, about a tenth
        of the leader's samples under a put load went into creating one per write), any
        other in a task."""
        try:
            waiting_on = coro.send(None)
        except StopIteration:
            return
        if light and isinstance(waiting_on, asyncio.Future):
            self._inflight.add(_Waiting(self, coro, waiting_on))
        else:
            self._in_task(coro, waiting_on)

    def _in_task(self, coro: Coroutine[Any, Any, None], waiting_on: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(resume(coro, waiting_on))
        self._inflight.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None] | _Waiting) -> None:
        self._inflight.discard(task)
        self._maybe_resume_reading()

    async def _serve(self, req: m.Request) -> None:
        try:
            body = await self._dispatcher.handle(req.body, req.session, req.seq, req.serializable)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            body = error_body(exc)
        # read at answer time: a leader change while the request waited is reported at once
        self.send(m.Response(req.id, body, self._dispatcher.leader_hint()))

    async def _serve_reads(self, reads: list[m.Request]) -> None:
        """Linearizable ranges that arrived in one read from the socket: one ReadIndex
        barrier for all of them, then each is answered from local state (serializable,
        which after the barrier is linearizable; see BackendDispatcher.read_barrier)."""
        dispatcher = self._dispatcher
        try:
            await dispatcher.read_barrier(len(reads))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failed = error_body(exc)
            hint = dispatcher.leader_hint()
            for req in reads:
                self.send(m.Response(req.id, failed, hint))
            return
        hint = dispatcher.leader_hint()
        for req in reads:
            try:
                body = await dispatcher.handle(req.body, 0, 0, True)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                body = error_body(exc)
            self.send(m.Response(req.id, body, hint))

    async def _progress(self, req_id: int) -> None:
        """Ask every watcher of this connection for a progress notice. The notices travel in
        each watcher's own stream, so they stay ordered with its events (bookmarkable)."""
        try:
            for watcher in list(self._watchers.values()):
                await watcher.request_progress()
            body: m.ResponseBody = m.WatchProgressResp(self._dispatcher.revision())
        except Exception as exc:
            body = error_body(exc)
        self.send(m.Response(req_id, body))

    async def _stream_snapshot(self, req_id: int, chunk_bytes: int) -> None:
        """Chunks under the request id, then the final answer; paced by the socket."""
        try:
            revision = self._dispatcher.revision()
            async for chunk in self._dispatcher.snapshot_chunks(chunk_bytes):
                await self._can_write.wait()
                self.send(m.Response(req_id, m.SnapshotChunk(chunk)))
            body: m.ResponseBody = m.SnapshotResp(b"", revision)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            body = error_body(exc)
        self.send(m.Response(req_id, body))

    # --- watches ---------------------------------------------------------------------------

    def _start_watch(self, watch_id: int, req: m.WatchCreateReq) -> None:
        if watch_id in self._watches:
            self.send(m.Response(watch_id, m.ErrorResp("UsageError", "watch id already in use")))
            return
        self._watches[watch_id] = asyncio.ensure_future(self._run_watch(watch_id, req))

    async def _run_watch(self, watch_id: int, req: m.WatchCreateReq) -> None:
        try:
            watcher, start = await self._dispatcher.open_watch(req)
        except Exception as exc:
            self._watches.pop(watch_id, None)
            self.send(m.Response(watch_id, error_body(exc)))
            return
        self._watchers[watch_id] = watcher
        self.send(m.Response(watch_id, m.WatchCreated(start - 1)))
        try:
            async for resp in watcher:
                # a client that does not read must not grow our buffer without bound: stop
                # pulling events (the watch hub keeps or evicts them by its own policy)
                await self._can_write.wait()
                self.send(m.Response(watch_id, watch_body(resp)))
                if resp.canceled:
                    break
        finally:
            self._watches.pop(watch_id, None)
            self._watchers.pop(watch_id, None)
            with contextlib.suppress(Exception):
                await watcher.cancel()

    async def _cancel_watch(self, req_id: int, watch_id: int) -> None:
        """Cancel through the backend: the watcher's stream ends with its canceled answer."""
        watcher = self._watchers.get(watch_id)
        if watcher is None:
            task = self._watches.pop(watch_id, None)
            if task is None:
                self.send(m.Response(req_id, error_body(WatchNotFound())))
                return
            task.cancel()  # still being created: nothing was delivered yet
            self.send(m.Response(watch_id, m.WatchCanceled(reason="canceled")))
        else:
            await watcher.cancel()
        self.send(m.Response(req_id, m.WatchCanceled(self._dispatcher.revision(), "canceled")))

    # --- output ----------------------------------------------------------------------------

    def send(self, resp: m.Response) -> None:
        """Encode ``resp`` once into the output buffer; flush at the end of this loop turn."""
        if self._closed:
            return
        out = self._out
        start = len(out)
        out += b"\0\0\0\0"
        self._encoder.encode_into(resp, out, start + HEADER_BYTES)
        size = len(out) - start - HEADER_BYTES
        if size > self._server.max_frame_bytes:
            # the client would refuse the frame and drop the connection: answer typed instead
            del out[start:]
            limit = self._server.max_frame_bytes
            too_big = FrameTooLarge(
                f"answer of {size} bytes exceeds the {limit} frame limit; use limit or a "
                "narrower range", size, limit,
            )
            self.send(m.Response(resp.id, error_body(too_big)))
            return
        out[start : start + HEADER_BYTES] = size.to_bytes(4, "big")
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        self._write_out()

    def _write_out(self) -> None:
        if self._closed or self._transport is None or not self._out:
            return
        # hand the filled buffer over and start a fresh one: no copy, and the transport may
        # keep a reference to it because it is never written to again
        data, self._out = self._out, bytearray()
        self._transport.write(data)

    def abort(self, reason: str) -> None:
        """Drop this connection at once (bad input); the server keeps serving others."""
        log.warning("native client %s: %s; closing the connection", self._peer, reason)
        self.drop()

    def drop(self) -> None:
        """Close without a word (server shutdown): the client sees a connection loss."""
        self._closed = True
        if self._transport is not None:
            self._transport.abort()

    # --- back-pressure ---------------------------------------------------------------------

    def _maybe_pause_reading(self) -> None:
        over = len(self._inflight) >= self._server.max_inflight or self._writing_paused
        if over and not self._reading_paused and self._transport is not None:
            self._reading_paused = True
            self._transport.pause_reading()

    def _maybe_resume_reading(self) -> None:
        under = len(self._inflight) < self._server.max_inflight // 2 and not self._writing_paused
        if under and self._reading_paused and self._transport is not None and not self._closed:
            self._reading_paused = False
            self._transport.resume_reading()


# Requests whose handlers (Backend.write / Backend.read) only ever wait on futures: they need
# no current task (no asyncio.timeout inside), so _Waiting can drive them.
_KV_BODIES = frozenset(m.WRITE_BODIES) | {m.RangeRequest}


# Writes whose dispatcher handler is BackendDispatcher._write (a TxnRequest may be a read:
# it goes through the dispatcher's _txn) and that the backend may take with a callback.
_DIRECT_WRITES = frozenset({m.PutRequest, m.DeleteRangeRequest})


class _WriteWaiter:
    """NodeCore's Waiter for one write of one connection: the first outcome is answered,
    a later one (or any after ``cancel``, when the connection is gone) is dropped."""

    __slots__ = ("_conn", "req_id")

    def __init__(self, conn: _Connection, req_id: int) -> None:
        self._conn: _Connection | None = conn
        self.req_id = req_id

    def resolve(self, value: Any) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn._answer_write(self, value)

    def fail(self, exc: BaseException) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn._answer_write(self, error_body(exc))

    def cancel(self) -> None:
        self._conn = None


class _Waiting:
    """Drives a request's coroutine that waits on an asyncio future, the way a Task would
    (resume with ``send(None)`` once the future is done; the future's ``__await__`` then
    returns its result or raises its exception), but without creating a Task: one done
    callback per wait. Should the coroutine wait on anything other than a future, it is
    handed to a Task from where it stands. ``cancel`` closes the coroutine (its ``finally``
    blocks run; no answer is sent), as cancelling the Task did."""

    __slots__ = ("_conn", "_coro", "_fut")

    def __init__(
        self, conn: _Connection, coro: Coroutine[Any, Any, None], fut: asyncio.Future[Any]
    ) -> None:
        self._conn = conn
        self._coro = coro
        self._fut: asyncio.Future[Any] | None = fut
        fut._asyncio_future_blocking = False  # what Task does on taking over a yielded future
        fut.add_done_callback(self._step)

    def _step(self, _fut: asyncio.Future[Any]) -> None:
        self._fut = None
        try:
            waiting_on = self._coro.send(None)
        except StopIteration:
            self._conn._done(self)
            return
        except BaseException:
            self._conn._done(self)
            raise
        if isinstance(waiting_on, asyncio.Future):
            self._fut = waiting_on
            waiting_on._asyncio_future_blocking = False
            waiting_on.add_done_callback(self._step)
        else:  # a bare yield or a foreign awaitable: let a Task handle the rest
            self._conn._done(self)
            self._conn._in_task(self._coro, waiting_on)

    def cancel(self) -> None:
        fut, self._fut = self._fut, None
        if fut is not None:
            fut.remove_done_callback(self._step)
        self._coro.close()


class _TlsGate(asyncio.Protocol):
    """The first protocol of a connection to a TLS server: runs the server side of the
    handshake, then gives the encrypted transport to a fresh ``_Connection``. Nothing is
    read as a request before the handshake has succeeded."""

    def __init__(self, server: NativeServer) -> None:
        self._server = server
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # start_tls must see every byte, including a ClientHello that came with the
        # connection. So it runs eagerly, here, up to its first wait: by then it has put its
        # own protocol on the transport. (Pausing the transport and starting the handshake
        # in a task is not enough: uvloop starts reading only after connection_made
        # returns, so a pause here is a no-op and the first bytes would land in this gate.)
        coro = self._handshake(transport)
        try:
            waiting_on = coro.send(None)
        except StopIteration:
            return
        self._task = asyncio.ensure_future(resume(coro, waiting_on))
        self._server.handshakes.add(self._task)
        self._task.add_done_callback(self._server.handshakes.discard)

    def connection_lost(self, exc: Exception | None) -> None:
        pass  # before start_tls took over: the handshake task sees the closed transport

    async def _handshake(self, plain: asyncio.BaseTransport) -> None:
        server = self._server
        assert server.tls is not None
        peer = plain.get_extra_info("peername")
        if plain.is_closing():  # gone before the handshake could start
            return
        conn = _Connection(server)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            tls = await loop.start_tls(
                plain, conn, server.tls, server_side=True,  # type: ignore[arg-type]
                ssl_handshake_timeout=server.tls_handshake_timeout_s)
        except asyncio.CancelledError:
            plain.abort()  # type: ignore[attr-defined]
            raise
        except (OSError, EOFError) as exc:  # ssl.SSLError (and TimeoutError) are OSErrors
            # start_tls has closed the transport. (The handshake timeout surfaces as a
            # ConnectionAbortedError whose only mark is its text: tell it by the clock.)
            late = loop.time() - started >= server.tls_handshake_timeout_s
            # A client that hangs up mid-handshake is most often a TCP health check (connect,
            # close): INFO, or every probe of a load balancer would be a warning. It may also
            # be a client that does not trust this server; that client reports it itself.
            hung_up = not late and isinstance(exc, ConnectionError | EOFError)
            log.log(logging.INFO if hung_up else logging.WARNING,
                    "native client %s: TLS handshake failed (%s); closing the connection",
                    peer, "no handshake in time" if late else _handshake_reason(exc))
            return
        if tls is None:  # the connection went away during the handshake
            return
        conn.connection_made(tls)


def _handshake_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"client certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return f"{exc.reason}"  # e.g. WRONG_VERSION_NUMBER: the client speaks plain TCP
    if isinstance(exc, ConnectionError | EOFError):
        return (f"the client closed the connection during the handshake ({type(exc).__name__}"
                "; does it trust this server's certificate?)")
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class NativeServer:
    """A running native protocol server. ``port`` is the bound port (useful with port 0).
    With ``tls`` (a server-side SSLContext) every connection must speak TLS."""

    def __init__(self, dispatcher: Dispatcher, max_frame_bytes: int, max_inflight: int,
                 tls: ssl.SSLContext | None = None,
                 tls_handshake_timeout_s: float = TLS_HANDSHAKE_TIMEOUT_S,
                 max_connections: int = 0, max_connections_per_ip: int = 0) -> None:
        self.dispatcher = dispatcher
        self.max_frame_bytes = max_frame_bytes
        self.max_inflight = max_inflight
        self.request_decoder = msgspec.msgpack.Decoder(m.Request)
        self.encoder = msgspec.msgpack.Encoder()
        self.connections: set[_Connection] = set()
        self.tls = tls
        self.tls_handshake_timeout_s = tls_handshake_timeout_s
        self.handshakes: set[asyncio.Task[None]] = set()
        # beyond max_connections (0: no cap), or max_connections_per_ip from its address (0:
        # no limit), a new client is closed at once, before any TLS work, and logged
        self.cap = ConnectionCap("native", max_connections, self.connections, self.handshakes,
                                 per_ip=max_connections_per_ip)
        self.closing = False
        self._server: asyncio.AbstractServer | None = None
        self.host = ""
        self.port = 0

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        factory: Callable[[], asyncio.Protocol]
        if self.tls is None:
            factory = lambda: _Connection(self)  # noqa: E731
        else:
            factory = lambda: _TlsGate(self)  # noqa: E731
        self._server = await loop.create_server(self.cap.factory(factory), host, port)
        sock = self._server.sockets[0].getsockname()
        self.host, self.port = sock[0], sock[1]

    @property
    def scheme(self) -> str:
        """How clients reach this server: "https" (TLS) or "http" (plain TCP)."""
        return "http" if self.tls is None else "https"

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    async def close(self) -> None:
        """Stop listening and drop every connection (clients see a connection loss)."""
        self.closing = True
        if self._server is not None:
            self._server.close()
        for task in list(self.handshakes):
            task.cancel()
        for conn in list(self.connections):
            conn.drop()
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> NativeServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def serve_native(
    backend: Any,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    max_inflight: int = DEFAULT_MAX_INFLIGHT,
    dispatcher_factory: Callable[[Any], Dispatcher] | None = None,
    tls: ssl.SSLContext | None = None,
    tls_handshake_timeout_s: float = TLS_HANDSHAKE_TIMEOUT_S,
    max_connections: int = 0,
    max_connections_per_ip: int = 0,
) -> NativeServer:
    """Serve ``backend`` (a ``quorum.api.backend.Backend``) on ``host:port``; returns the
    running server. ``tls``: a server-side SSLContext (see ``server_tls_context``); every
    client must then speak TLS and finish its handshake within ``tls_handshake_timeout_s``.
    ``max_connections`` > 0 caps the open connections, ``max_connections_per_ip`` > 0 those
    from one client address (quorum.api.conncap).
    Raises ``OSError`` if the address cannot be bound."""
    if dispatcher_factory is None:
        dispatcher_factory = BackendDispatcher
    server = NativeServer(dispatcher_factory(backend), max_frame_bytes, max_inflight, tls,
                          tls_handshake_timeout_s, max_connections, max_connections_per_ip)
    await server.start(host, port)
    return server


def server_tls_context(cert_file: str, key_file: str, client_ca_file: str = "") -> ssl.SSLContext:
    """The native port's TLS context: the server presents ``cert_file``; with a
    ``client_ca_file`` every client must present a certificate it signed (mutual TLS).
    Raises OSError / ssl.SSLError for a file that cannot be used."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    if client_ca_file:
        ctx.load_verify_locations(client_ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx

"""``AsyncClient``: the asyncio client of the native protocol.

Failover: the client keeps one *home* connection at a time. When it is lost, goes silent
(requests pending and nothing heard for ``dead_after_s``), or a server answers with a
NotLeader-type error, the client reconnects (to the hinted leader if the error names one,
else to the next endpoint) and retries until the call's deadline.

Leader preference (``prefer_leader=True``; ``quorum bench`` uses it): writes, linearizable
reads and lease keepalives need the leader, and a follower passes them on (Raft forwards the
proposal, ReadIndex asks the leader), which costs a network hop and the follower's CPU. So
the client learns the leader (the home node's status when it connects, then the ``leader``
hint a follower puts on every answer) and sends those requests over a second connection to
it. Everything else (serializable reads, watches, status, maintenance) stays on the home
connection. While no leader connection exists (no leader known, or it cannot be reached)
those requests go home and are forwarded as before; a leader connection that fails or
answers with a retriable error is retired and the next hint names the new leader.

Exactly-once writes: every write runs in a client session of the state machine with a fresh
sequence number, and a retry reuses the pair, so the write is applied once however many
times it is sent (Raft thesis §6.3). The state machine remembers only the *last* outcome of a
session, so a session carries at most one write at a time; the client keeps a pool of
sessions to pipeline writes.

Errors: typed ``quorum.errors`` exceptions the server reported (StateError subclasses,
...); ``RequestTimeout`` when the deadline passes (a write's outcome is then unknown), also
when the request was sent and then no endpoint could be reached again to resend it;
``NoEndpointAvailable`` when no endpoint could be reached before the request was ever sent
(nothing was applied). The client stays usable.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import itertools
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

from quorum.api.native import messages as m
from quorum.api.native.errors import error_from_body
from quorum.api.native.framing import DEFAULT_MAX_FRAME_BYTES
from quorum.client.connection import Connection, open_connection
from quorum.client.tls import ClientTls
from quorum.client.txn import get as _range_op
from quorum.client.watch import Watcher
from quorum.errors import (
    ConnectionLost,
    LeaderChanged,
    NodeStopped,
    NoEndpointAvailable,
    ProposalDropped,
    QuorumError,
    RequestTimeout,
    SessionNotFound,
    TlsHandshakeFailed,
    UsageError,
)
from quorum.state.commands import (
    CompactionRequest,
    Compare,
    DeleteRangeRequest,
    DeleteRangeResponse,
    KeyValue,
    LeaseGrantRequest,
    LeaseGrantResponse,
    LeaseRevokeRequest,
    PutRequest,
    PutResponse,
    RangeRequest,
    RangeResponse,
    RequestOp,
    SessionCloseRequest,
    SessionOpenRequest,
    SessionOpenResponse,
    SortOrder,
    SortTarget,
    TxnRequest,
    TxnResponse,
    prefix_end,
)

T = TypeVar("T")

# (endpoint, connect timeout in seconds, max frame bytes) -> an open Connection
Connector = Callable[[str, float, int], Awaitable[Connection]]

# membership changes have no session: they are never resent once they may have been applied
AT_MOST_ONCE = (m.MemberAddReq, m.MemberRemoveReq, m.MemberUpdateReq, m.MemberPromoteReq)

# requests only the leader can answer without a hop (besides linearizable reads)
LEADER_BODIES = (*m.WRITE_BODIES, m.LeaseKeepAliveReq)

# a failed attempt to reach the same leader is not repeated sooner than this
LEADER_RETRY_S = 0.2

# errors after which the same request may be sent again elsewhere: nothing was applied
# (ProposalDropped), or a write's outcome is unknown but its session makes a retry safe
RETRIABLE = (ProposalDropped, LeaderChanged, NodeStopped, RequestTimeout)


class _Session:
    __slots__ = ("id", "last_seq")

    def __init__(self, session_id: int) -> None:
        self.id = session_id
        self.last_seq = 0


class _SessionPool:
    """Sessions with no write in flight. Invariant: a session is either in ``_free``, handed
    to exactly one waiter, or held by exactly one running write, so its sequence numbers are
    used one at a time, in order. Releasing hands a session straight to the oldest waiter."""

    def __init__(self, client: AsyncClient, max_sessions: int) -> None:
        self._client = client
        self._max = max_sessions
        self._free: list[_Session] = []
        self._count = 0  # sessions opened (or being opened) and not discarded
        self._waiters: collections.deque[asyncio.Future[_Session | None]] = collections.deque()

    async def acquire(self, deadline: float) -> _Session:
        while True:
            if self._free:
                return self._free.pop()
            if self._count < self._max:
                self._count += 1
                try:
                    return _Session(await self._client._open_session(deadline))
                except BaseException:
                    self._count -= 1
                    self._wake(None)  # let a waiter try to open one instead
                    raise
            got = await self._wait(deadline)
            if got is not None:
                return got

    async def _wait(self, deadline: float) -> _Session | None:
        fut: asyncio.Future[_Session | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            async with asyncio.timeout_at(deadline):
                return await fut
        except TimeoutError:
            self._pass_on(fut)
            raise RequestTimeout("no client session became free before the deadline") from None
        except asyncio.CancelledError:
            self._pass_on(fut)
            raise

    def _pass_on(self, fut: asyncio.Future[_Session | None]) -> None:
        """A session handed to a waiter that gave up at the same moment goes to the next."""
        if fut.done() and not fut.cancelled():
            session = fut.result()
            if session is not None:
                self.release(session)

    def _wake(self, session: _Session | None) -> bool:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(session)
                return True
        return False

    def drain(self) -> list[_Session]:
        """Take every idle session out of the pool (the client is closing)."""
        idle, self._free = self._free, []
        self._count -= len(idle)
        return idle

    def release(self, session: _Session, discard: bool = False) -> None:
        if discard:
            self._count -= 1
            self._wake(None)
        elif not self._wake(session):
            self._free.append(session)


class AsyncClient:
    """Client of one quorum cluster. Create it, optionally ``await connect()``, use it, then
    ``await close()`` (or ``async with``). All methods may be called concurrently."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        timeout_s: float = 5.0,
        connect_timeout_s: float = 1.0,
        retry_backoff_s: float = 0.02,
        max_sessions: int = 64,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        connector: Connector = open_connection,
        dead_after_s: float = 1.0,
        prefer_leader: bool = False,
        tls: ClientTls | ssl.SSLContext | None = None,
    ) -> None:
        """``connector`` opens a connection to an endpoint (the seam a simulator or a test
        proxy plugs into); it raises OSError or TimeoutError when it cannot.
        ``dead_after_s``: a connection with requests pending and not a byte received for
        that long is declared dead and the requests move to another endpoint.
        ``prefer_leader``: send writes and linearizable reads straight to the leader (see
        the module docstring). Off by default: a client then talks to one node at a time,
        which is what per-node checks want and what lets quorum verify's clients exercise
        followers (its planted stale-read test needs reads served by followers).
        ``tls``: speak TLS to every endpoint, the given ones and the ones learned later
        (leader discovery, failover): a ClientTls (CA file, client certificate, server name)
        or a ready SSLContext. Endpoints written ``https://host:port`` ask for TLS too (with
        the system's trust store when ``tls`` is not given). Raises ConfigError for TLS
        files that cannot be used."""
        if not endpoints:
            raise UsageError("at least one endpoint is needed")
        self.endpoints: list[str] = [_endpoint_of(e) for e in endpoints]
        self.tls = _tls_context(tls, endpoints)
        if self.tls is not None:
            if connector is not open_connection:
                raise UsageError("tls applies to the built-in connector only: a custom "
                                 "connector sets up its own transport security")
            name = tls.server_name if isinstance(tls, ClientTls) else ""
            connector = functools.partial(open_connection, tls=self.tls, server_name=name)
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.retry_backoff_s = retry_backoff_s
        self.max_frame_bytes = max_frame_bytes
        self._connector = connector
        self.dead_after_s = dead_after_s
        self._ids = itertools.count(1)
        self._conn: Connection | None = None
        self._connecting: asyncio.Future[Connection] | None = None
        self._next_endpoint = 0
        self._sessions = _SessionPool(self, max_sessions)
        self._member_urls: dict[int, str] = {}
        self._closed = False
        self._watchdog: asyncio.Task[None] | None = None
        self.failovers = 0  # how many times a connection was replaced (informational)
        self.prefer_leader = prefer_leader
        self._leader_id = 0  # the leader as last learned (0: unknown)
        self._leader_conn: Connection | None = None  # to the leader when it is not home
        self._leader_task: asyncio.Future[None] | None = None  # opening _leader_conn
        self._discovery: asyncio.Future[None] | None = None  # asking a new home its status
        self._last_tried = 0  # the leader id of the last connection attempt or failure
        self._leader_retry_at = 0.0  # loop time before which _last_tried is not retried
        self._draining: set[Connection] = set()  # retired, answering what is in flight
        self.leader_switches = 0  # leader connections opened (informational)
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- lifecycle -------------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect now instead of on first use (and, preferring the leader, find it and
        connect to it too). Raises NoEndpointAvailable."""
        await self._connection(self._deadline(None))
        for name in ("_discovery", "_leader_task"):  # the second is started by the first
            step = getattr(self, name)
            if step is not None:
                with contextlib.suppress(Exception):  # best effort: home serves meanwhile
                    await asyncio.shield(step)

    async def close(self) -> None:
        """Close the client's sessions (best effort, within about a second: a session not
        closed is evicted by the state machine later) and the connection."""
        if self._closed:
            return
        conn = self._conn
        if conn is not None and not conn.closed:
            await self._close_sessions(conn)
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        for task in (self._discovery, self._leader_task):
            if task is not None:
                task.cancel()
        for other in (self._leader_conn, *self._draining):
            if other is not None:
                other.close()
        self._leader_conn = None
        self._draining.clear()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def _close_sessions(self, conn: Connection) -> None:
        deadline = asyncio.get_running_loop().time() + min(1.0, self.dead_after_s)
        futures = [
            conn.request(m.Request(next(self._ids), SessionCloseRequest(session.id)), deadline)
            for session in self._sessions.drain()
        ]
        if futures:
            self._ensure_watchdog()
            await asyncio.gather(*futures, return_exceptions=True)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def endpoint(self) -> str | None:
        """The endpoint of the home connection, if any."""
        return self._conn.endpoint if self._conn is not None and not self._conn.closed else None

    @property
    def leader_endpoint(self) -> str | None:
        """Where writes and linearizable reads go now: the leader connection's endpoint, or
        the home endpoint when home leads or no leader connection is open."""
        conn = self._leader_conn
        if conn is not None and not conn.closed:
            return conn.endpoint
        return self.endpoint

    def next_id(self) -> int:
        return next(self._ids)

    # --- connections -----------------------------------------------------------------------

    def _deadline(self, timeout_s: float | None) -> float:
        loop = self._loop
        if loop is None:  # bound on first use: the client may be created outside its loop
            loop = self._loop = asyncio.get_running_loop()
        return loop.time() + (self.timeout_s if timeout_s is None else timeout_s)

    async def _connection(self, deadline: float) -> Connection:
        conn = self._conn
        if conn is not None and not conn.closed:
            return conn
        if self._closed:
            raise UsageError("the client is closed")
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect_any(deadline))
            self._connecting.add_done_callback(self._connected)
        return await asyncio.shield(self._connecting)

    def _connected(self, fut: asyncio.Future[Connection]) -> None:
        self._connecting = None
        if not fut.cancelled() and fut.exception() is None:
            self._conn = fut.result()
            if self._closed:  # closed while connecting: do not leak the connection
                self._conn.close()
                self._conn = None
            elif self.prefer_leader:
                self._discovery = asyncio.ensure_future(self._discover(self._conn))

    # --- the leader connection -------------------------------------------------------------

    async def _discover(self, home: Connection) -> None:
        """Ask a new home node who it is and who leads; connect to the leader if another."""
        self._ensure_watchdog()  # the status request's deadline is enforced by its sweep
        loop = asyncio.get_running_loop()
        req = m.Request(next(self._ids), m.StatusReq())
        try:
            resp = await home.request(req, loop.time() + self.connect_timeout_s)
        except QuorumError:
            return  # the home connection's own failover deals with a dead node
        if isinstance(resp, m.StatusResp):
            home.member_id = resp.member_id
            if resp.leader_id:
                self._follow(resp.leader_id)

    def _home_leads(self) -> bool:
        home = self._conn
        return (home is not None and not home.closed and home.member_id != 0
                and home.member_id == self._leader_id)

    def _follow(self, leader_id: int) -> None:
        """A node named ``leader_id`` as the leader: make sure requests for the leader go to
        it. Cheap when nothing changed (the hot path calls it on every forwarded answer)."""
        if leader_id == self._leader_id:
            conn = self._leader_conn
            if (conn is not None and not conn.closed) or self._home_leads():
                return
        if self._leader_task is not None and not self._leader_task.done():
            return  # one attempt at a time; the next hint retries
        now = asyncio.get_running_loop().time()
        if leader_id == self._last_tried and now < self._leader_retry_at:
            return  # it failed a moment ago (e.g. a dead leader not yet replaced)
        self._leader_id = self._last_tried = leader_id
        self._leader_retry_at = now + LEADER_RETRY_S
        self._leader_task = asyncio.ensure_future(self._open_leader(leader_id))

    async def _open_leader(self, leader_id: int) -> None:
        home = self._conn
        if home is not None and not home.closed and home.member_id == leader_id:
            self._retire_leader_conn()  # home leads: one connection serves everything
            return
        url = self._member_urls.get(leader_id)
        if url is None and home is not None and not home.closed:
            loop = asyncio.get_running_loop()
            req = m.Request(next(self._ids), m.MemberListReq())
            try:
                resp = await home.request(req, loop.time() + self.connect_timeout_s)
            except QuorumError:
                return
            if isinstance(resp, m.MemberListResp):
                self._remember_members(resp.members)
            url = self._member_urls.get(leader_id)
        if not url:
            return  # the leader's client address is unknown: keep going through home
        if home is not None and not home.closed and url == home.endpoint:
            home.member_id = leader_id
            self._retire_leader_conn()
            return
        try:
            conn = await self._connector(url, self.connect_timeout_s, self.max_frame_bytes)
        except (OSError, TimeoutError, TlsHandshakeFailed):
            return  # _follow retries on a later hint, after LEADER_RETRY_S
        if self._closed or self._leader_id != leader_id:
            conn.close()
            return
        conn.member_id = leader_id
        self._retire_leader_conn()
        self._leader_conn = conn
        self.leader_switches += 1

    def _retire_leader_conn(self) -> None:
        """Stop sending on the leader connection; what is in flight there still completes."""
        old, self._leader_conn = self._leader_conn, None
        if old is not None and not old.closed:
            old.retired = True
            self._draining.add(old)
            old.close_when_idle()

    def _leave_leader_conn(self, conn: Connection, exc: QuorumError | None) -> None:
        """``conn`` (the leader connection, or one being drained) failed: requests for the
        leader go home until a hint names a leader again. A lost or silent connection is
        aborted; one that answered with an error finishes its other requests first."""
        loop = asyncio.get_running_loop()
        self._last_tried = conn.member_id
        self._leader_retry_at = loop.time() + LEADER_RETRY_S
        if conn is self._leader_conn:
            self._leader_conn = None
            self._leader_id = 0
        conn.retired = True
        if exc is None:
            self._draining.discard(conn)
            conn.close()
        else:
            self._draining.add(conn)
            conn.close_when_idle()
            hinted = int(getattr(exc, "leader_id", 0) or 0)
            if self.prefer_leader and hinted and hinted != conn.member_id:
                self._follow(hinted)

    async def _connect_any(self, deadline: float) -> Connection:
        """Try the endpoints in turn until one connects. Unreachable ones are retried until
        the deadline (a member may be restarting); TLS refusals are not: when every endpoint
        of a round was reached and refused the TLS session, that is a setting to fix, and
        TlsHandshakeFailed says so at once instead of a timeout later."""
        loop = asyncio.get_running_loop()
        last: BaseException | None = None
        tls_error: TlsHandshakeFailed | None = None
        while True:
            refused = 0
            for _ in range(len(self.endpoints)):
                endpoint = self.endpoints[self._next_endpoint % len(self.endpoints)]
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    return await self._connector(
                        endpoint, min(self.connect_timeout_s, remaining), self.max_frame_bytes
                    )
                except TlsHandshakeFailed as exc:
                    last = tls_error = exc
                    refused += 1
                    self._next_endpoint += 1
                except (OSError, TimeoutError) as exc:
                    last = exc
                    self._next_endpoint += 1
            if tls_error is not None and refused == len(self.endpoints):
                raise tls_error
            if loop.time() + self.retry_backoff_s >= deadline:
                if tls_error is not None:
                    raise TlsHandshakeFailed(
                        f"no endpoint of {self.endpoints} reachable; TLS failed: {tls_error}")
                raise NoEndpointAvailable(f"no endpoint of {self.endpoints} reachable: {last}")
            await asyncio.sleep(self.retry_backoff_s)

    def _fail_over(self, conn: Connection, exc: QuorumError | None) -> None:
        """Leave ``conn``: prefer the leader the error hinted, else the next endpoint. Every
        request in flight on ``conn`` comes here; only the first one moves the rotation."""
        if conn is not self._conn and (conn is self._leader_conn or conn in self._draining):
            self._leave_leader_conn(conn, exc)
            return
        if conn.retired:
            return
        conn.retired = True
        hint = getattr(exc, "leader_endpoint", "") or self._member_urls.get(
            int(getattr(exc, "leader_id", 0) or 0), ""
        )
        if hint:
            hint = _endpoint_of(hint)
            if hint not in self.endpoints:
                self.endpoints.append(hint)
            self._next_endpoint = self.endpoints.index(hint)
        elif conn.endpoint in self.endpoints:
            self._next_endpoint = self.endpoints.index(conn.endpoint) + 1
        else:
            self._next_endpoint += 1
        if self._conn is conn:
            self._conn = None
            self.failovers += 1
        conn.close()

    # --- the request loop ------------------------------------------------------------------

    async def call(
        self,
        body: m.RequestBody,
        *,
        timeout_s: float | None = None,
        serializable: bool = False,
    ) -> m.ResponseBody:
        """Send one request until it gets an answer or the deadline passes. Writes run in a
        session (exactly-once retries). Raises the typed error the server reported."""
        deadline = self._deadline(timeout_s)
        if isinstance(body, AT_MOST_ONCE):
            return await self._attempts(body, 0, 0, False, deadline, at_most_once=True)
        if isinstance(body, RangeRequest) or (
            isinstance(body, TxnRequest) and m.txn_is_read_only(body)
        ):
            return await self._attempts(
                body, 0, 0, serializable, deadline, to_leader=not serializable
            )
        if not isinstance(body, m.WRITE_BODIES) or isinstance(
            body, SessionOpenRequest | SessionCloseRequest
        ):
            leader = isinstance(body, LEADER_BODIES)
            return await self._attempts(body, 0, 0, serializable, deadline, to_leader=leader)
        return await self._session_write(body, deadline)

    async def _session_write(self, body: m.RequestBody, deadline: float) -> m.ResponseBody:
        pool = self._sessions
        for first in (True, False):
            # an idle session is taken without a coroutine (the common case under load)
            session = pool._free.pop() if pool._free else await pool.acquire(deadline)
            session.last_seq += 1  # a fresh seq per write; its retries reuse it
            try:
                resp = await self._attempts(
                    body, session.id, session.last_seq, False, deadline, to_leader=True
                )
            except SessionNotFound as exc:
                # evicted or unknown. If this write was sent once, the state machine applied
                # nothing for it and it may run in a new session; if it was sent again after
                # a lost answer, its first copy may have been applied: the outcome is unknown.
                self._sessions.release(session, discard=True)
                if first and getattr(exc, "sends", 1) == 1:
                    continue
                raise
            except BaseException:
                self._sessions.release(session)
                raise
            self._sessions.release(session)
            return resp
        raise AssertionError("unreachable")

    async def _attempts(
        self, body: m.RequestBody, session: int, seq: int, serializable: bool, deadline: float,
        *, at_most_once: bool = False, to_leader: bool = False,
    ) -> m.ResponseBody:
        """Send until answered. ``at_most_once``: the request is not idempotent and has no
        session, so it is resent only when the server said it applied nothing (ProposalDropped);
        after a lost connection or an outcome-unknown error the uncertainty is raised.
        ``to_leader``: the request needs the leader; it goes over the leader connection when
        one is open, and a follower's leader hint on the answer moves the next ones."""
        sends = 0
        while True:
            # the hot path: connected, no coroutine needed to find out
            conn = self._leader_conn if to_leader else None
            if conn is None or conn.closed:
                conn = self._conn
                if conn is None or conn.closed:
                    conn = await self._reconnect_to_resend(deadline, sends)
            if conn is not None:
                if self._watchdog is None:
                    self._ensure_watchdog()
                sends += 1
                req = m.Request(next(self._ids), body, session, seq, serializable)
                try:
                    answer = await conn.request(req, deadline)
                except ConnectionLost:
                    self._fail_over(conn, None)
                    if at_most_once:
                        raise ConnectionLost("connection lost; it may have been applied") from None
                else:
                    if to_leader and conn.hint and self.prefer_leader:
                        self._follow(conn.hint)  # it went through a follower
                    if not isinstance(answer, m.ErrorResp):
                        return answer
                    await self._retry_or_raise(conn, answer, sends, at_most_once, deadline)
            if asyncio.get_running_loop().time() + self.retry_backoff_s >= deadline:
                raise RequestTimeout("no answer before the deadline (retrying after failover)")
            await asyncio.sleep(self.retry_backoff_s)

    async def _reconnect(self, deadline: float) -> Connection | None:
        """A connection, or None when another caller's (shorter) connect attempt gave up
        while ours still has time: the caller backs off and tries again."""
        try:
            return await self._connection(deadline)
        except TlsHandshakeFailed:
            raise  # every endpoint refused the session: waiting changes nothing
        except NoEndpointAvailable:
            if asyncio.get_running_loop().time() + self.retry_backoff_s >= deadline:
                raise
            return None

    async def _reconnect_to_resend(self, deadline: float, sends: int) -> Connection | None:
        """``_reconnect`` for a request sent ``sends`` times already. Once it was sent, a
        failure to reach any endpoint again says nothing about it: the server that got it
        may have applied it (a killed leader may have replicated the entry). So that case is
        a RequestTimeout (outcome unknown), and NoEndpointAvailable keeps meaning that
        nothing was sent."""
        try:
            return await self._reconnect(deadline)
        except NoEndpointAvailable as exc:
            if not sends:
                raise
            raise RequestTimeout(
                f"sent {sends} time(s), then no endpoint was reachable before the deadline "
                f"(a write's outcome is unknown): {exc}") from None

    async def _retry_or_raise(
        self, conn: Connection, answer: m.ErrorResp, sends: int, at_most_once: bool,
        deadline: float,
    ) -> None:
        """Raise the reported error unless the request may be sent again elsewhere; else
        leave ``conn`` for the hinted leader or the next endpoint."""
        exc = error_from_body(answer)
        if not isinstance(exc, RETRIABLE) or (
            at_most_once and not isinstance(exc, ProposalDropped)
        ):
            exc.sends = sends  # type: ignore[attr-defined]
            raise exc
        await self._learn_leader(conn, exc, deadline)
        self._fail_over(conn, exc)

    async def _learn_leader(self, conn: Connection, exc: QuorumError, deadline: float) -> None:
        """A NotLeader naming a leader id we cannot place: ask the member we are talking to
        for the member list (client URLs), so the failover goes straight to the leader."""
        leader_id = int(getattr(exc, "leader_id", 0) or 0)
        hinted = bool(getattr(exc, "leader_endpoint", ""))
        if not leader_id or hinted or conn.closed or leader_id in self._member_urls:
            return
        loop = asyncio.get_running_loop()
        req = m.Request(next(self._ids), m.MemberListReq())
        try:
            resp = await conn.request(req, min(deadline, loop.time() + 1.0))
        except QuorumError:
            return  # best effort: the failover falls back to the next endpoint
        if isinstance(resp, m.MemberListResp):
            self._remember_members(resp.members)

    def _remember_members(self, members: tuple[m.Member, ...]) -> None:
        """Map member ids to client endpoints; new endpoints join the failover rotation."""
        for mem in members:
            if mem.client_urls:
                url = _endpoint_of(mem.client_urls[0])
                self._member_urls[mem.member_id] = url
                if url not in self.endpoints:
                    self.endpoints.append(url)

    def _ensure_watchdog(self) -> None:
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.ensure_future(self._expire_loop())
            self._watchdog.add_done_callback(self._watchdog_done)

    def _watchdog_done(self, task: asyncio.Task[None]) -> None:
        if self._watchdog is task and not self._closed:
            self._watchdog = None  # restarted by the next request

    async def _expire_loop(self) -> None:
        """Time requests out: a sweep every ``tick`` instead of one timer per request. A
        deadline is thus honoured within ``tick`` seconds."""
        loop = asyncio.get_running_loop()
        tick = min(0.05, self.timeout_s / 4)
        while not self._closed:
            await asyncio.sleep(tick)
            now = loop.time()
            self._sweep_leader_side(now)
            conn = self._conn
            if conn is None:
                continue
            conn.expire(now)
            if conn.streams and not conn.pending and now - conn.last_heard > self.dead_after_s:
                self._ping(conn, now)  # watches alone never show a silent server: ask
            if conn.silent_for(now) > self.dead_after_s:
                # pending requests fail with ConnectionLost and retry on another endpoint
                # (writes keep their session seq, so the retry cannot apply twice)
                self._fail_over(conn, None)

    def _sweep_leader_side(self, now: float) -> None:
        """Deadlines and silence detection for the leader connection and retired ones."""
        if self._draining:
            self._draining = {c for c in self._draining if not c.closed}
        for conn in (self._leader_conn, *self._draining):
            if conn is None or conn.closed:
                continue
            conn.expire(now)
            if conn.silent_for(now) > self.dead_after_s:
                self._leave_leader_conn(conn, None)

    def _ping(self, conn: Connection, now: float) -> None:
        """A cheap unary request, so silence detection covers watch-only connections."""
        fut = conn.request(m.Request(next(self._ids), m.StatusReq()), now + self.timeout_s)
        fut.add_done_callback(_ignore_outcome)

    async def _open_session(self, deadline: float) -> int:
        resp = await self._attempts(SessionOpenRequest(), 0, 0, False, deadline, to_leader=True)
        return _expect(resp, SessionOpenResponse).session_id

    # --- key-value -------------------------------------------------------------------------

    async def range(
        self,
        key: bytes,
        range_end: bytes = b"",
        *,
        prefix: bool = False,
        revision: int = 0,
        limit: int = 0,
        sort_order: SortOrder = SortOrder.NONE,
        sort_target: SortTarget = SortTarget.KEY,
        keys_only: bool = False,
        count_only: bool = False,
        serializable: bool = False,
        timeout_s: float | None = None,
    ) -> RangeResponse:
        """Keys in [key, range_end) (``prefix=True``: keys starting with ``key``) at
        ``revision`` (0: current). Linearizable unless ``serializable``."""
        req = _range_op(
            key, range_end, prefix=prefix, revision=revision, limit=limit,
            sort_order=sort_order, sort_target=sort_target, keys_only=keys_only,
            count_only=count_only,
        )
        resp = await self._attempts(
            req, 0, 0, serializable, self._deadline(timeout_s), to_leader=not serializable
        )
        return _expect(resp, RangeResponse)

    async def get(
        self, key: bytes, *, revision: int = 0, serializable: bool = False,
        timeout_s: float | None = None,
    ) -> KeyValue | None:
        """The key's current (or ``revision``'s) version, None if absent."""
        req = RangeRequest(key, b"", 0, revision)
        resp = await self._attempts(
            req, 0, 0, serializable, self._deadline(timeout_s), to_leader=not serializable
        )
        if type(resp) is not RangeResponse:
            resp = _expect(resp, RangeResponse)
        return resp.kvs[0] if resp.kvs else None

    async def get_prefix(self, prefix: bytes, **kwargs: Any) -> RangeResponse:
        return await self.range(prefix, prefix_end(prefix), **kwargs)

    async def put(
        self, key: bytes, value: bytes, *, lease: int = 0, prev_kv: bool = False,
        ignore_value: bool = False, ignore_lease: bool = False, timeout_s: float | None = None,
    ) -> PutResponse:
        req = PutRequest(key, value, lease, prev_kv, ignore_value, ignore_lease)
        resp = await self._session_write(req, self._deadline(timeout_s))
        return _expect(resp, PutResponse)

    async def delete(
        self, key: bytes, range_end: bytes = b"", *, prefix: bool = False,
        prev_kv: bool = False, timeout_s: float | None = None,
    ) -> DeleteRangeResponse:
        if prefix:
            range_end = prefix_end(key)
        req = DeleteRangeRequest(key, range_end, prev_kv)
        resp = await self._session_write(req, self._deadline(timeout_s))
        return _expect(resp, DeleteRangeResponse)

    async def txn(
        self,
        compare: Sequence[Compare] = (),
        success: Sequence[RequestOp] = (),
        failure: Sequence[RequestOp] = (),
        *,
        serializable: bool = False,
        timeout_s: float | None = None,
    ) -> TxnResponse:
        """If every compare holds run ``success``, else ``failure``, atomically (one revision).
        See ``quorum.client.txn`` for builders."""
        req = TxnRequest(tuple(compare), tuple(success), tuple(failure))
        resp = await self.call(req, timeout_s=timeout_s, serializable=serializable)
        return _expect(resp, TxnResponse)

    def transaction(self) -> TxnBuilder:
        """A fluent transaction: ``await c.transaction().compare(...).then(...).else_(...)
        .commit()``."""
        return TxnBuilder(self)

    async def compact(self, revision: int, *, physical: bool = False) -> int:
        """Discard history before ``revision``; returns the store revision."""
        resp = await self.call(CompactionRequest(revision, physical))
        return int(getattr(resp, "revision", 0))

    def watch(
        self,
        key: bytes,
        range_end: bytes = b"",
        *,
        prefix: bool = False,
        start_revision: int = 0,
        prev_kv: bool = False,
        progress_notify: bool = False,
        filter_put: bool = False,
        filter_delete: bool = False,
    ) -> Watcher:
        """A watch iterator (``async for batch in client.watch(...)``). It survives connection
        loss: it re-creates itself from the last delivered revision + 1, so the sequence of
        events has neither gaps nor duplicates. Close it with ``await watcher.cancel()``."""
        if prefix:
            range_end = prefix_end(key)
        req = m.WatchCreateReq(
            key, range_end, start_revision, prev_kv, progress_notify, filter_put, filter_delete
        )
        return Watcher(self, req)

    async def request_progress(self) -> int:
        """Ask every watch of the current connection for a progress notice."""
        resp = await self.call(m.WatchProgressReq())
        return _expect(resp, m.WatchProgressResp).revision

    # --- leases ----------------------------------------------------------------------------

    async def lease_grant(self, ttl_s: int, lease_id: int = 0) -> LeaseGrantResponse:
        return _expect(await self.call(LeaseGrantRequest(ttl_s, lease_id)), LeaseGrantResponse)

    async def lease_revoke(self, lease_id: int) -> None:
        await self.call(LeaseRevokeRequest(lease_id))

    async def lease_keepalive_once(self, lease_id: int) -> int:
        """Renew the lease once; returns its TTL. Raises LeaseNotFound once it expired."""
        resp = await self.call(m.LeaseKeepAliveReq(lease_id))
        return _expect(resp, m.LeaseKeepAliveResp).ttl_s

    async def lease_time_to_live(self, lease_id: int, keys: bool = False) -> m.LeaseTimeToLiveResp:
        resp = await self.call(m.LeaseTimeToLiveReq(lease_id, keys))
        return _expect(resp, m.LeaseTimeToLiveResp)

    async def lease_list(self) -> tuple[int, ...]:
        return _expect(await self.call(m.LeaseListReq()), m.LeaseListResp).lease_ids

    def keep_alive(self, lease_id: int, ttl_s: int) -> LeaseKeeper:
        """Start a background task renewing the lease every ttl/3 seconds (see LeaseKeeper)."""
        return LeaseKeeper(self, lease_id, ttl_s)

    # --- cluster and maintenance -----------------------------------------------------------

    async def member_list(self, linearizable: bool = False) -> tuple[m.Member, ...]:
        resp = _expect(await self.call(m.MemberListReq(linearizable)), m.MemberListResp)
        self._remember_members(resp.members)
        return resp.members

    async def member_add(self, peer_urls: Sequence[str], is_learner: bool = False) -> m.MemberChangeResp:
        return _expect(await self.call(m.MemberAddReq(tuple(peer_urls), is_learner)), m.MemberChangeResp)

    async def member_remove(self, member_id: int) -> m.MemberChangeResp:
        return _expect(await self.call(m.MemberRemoveReq(member_id)), m.MemberChangeResp)

    async def member_update(self, member_id: int, peer_urls: Sequence[str]) -> m.MemberChangeResp:
        req = m.MemberUpdateReq(member_id, tuple(peer_urls))
        return _expect(await self.call(req), m.MemberChangeResp)

    async def member_promote(self, member_id: int) -> m.MemberChangeResp:
        return _expect(await self.call(m.MemberPromoteReq(member_id)), m.MemberChangeResp)

    async def status(self) -> m.StatusResp:
        return _expect(await self.call(m.StatusReq()), m.StatusResp)

    async def move_leader(self, target_id: int) -> None:
        _expect(await self.call(m.MoveLeaderReq(target_id)), m.MoveLeaderResp)

    async def snapshot(self) -> bytes:
        return b"".join([chunk async for chunk in self.snapshot_stream()])

    async def snapshot_stream(self, chunk_bytes: int = 1 << 20) -> AsyncIterator[bytes]:
        """The state's snapshot as a stream of chunks (write them to a file as they come).
        A lost connection raises ConnectionLost: start again (a snapshot is not resumable)."""
        conn = await self._connection(self._deadline(None))
        self._ensure_watchdog()
        queue: asyncio.Queue[m.ResponseBody | None] = asyncio.Queue()
        stream_id = next(self._ids)
        conn.open_stream(m.Request(stream_id, m.SnapshotReq(chunk_bytes)), queue.put_nowait)
        try:
            while True:
                body = await queue.get()
                if isinstance(body, m.SnapshotChunk):
                    yield body.blob
                elif isinstance(body, m.SnapshotResp):
                    return
                elif isinstance(body, m.ErrorResp):
                    raise error_from_body(body)
                else:
                    raise ConnectionLost(f"connection to {conn.endpoint} lost mid-snapshot")
        finally:
            conn.close_stream(stream_id)

    async def hash_kv(self, revision: int = 0) -> m.HashKVResp:
        return _expect(await self.call(m.HashKVReq(revision)), m.HashKVResp)

    async def hash(self) -> int:
        return _expect(await self.call(m.HashReq()), m.HashResp).hash


class TxnBuilder:
    """Collects compares and the two branches, then commits them as one transaction. Each
    method may be called several times (its arguments are appended)."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client
        self._compare: list[Compare] = []
        self._success: list[RequestOp] = []
        self._failure: list[RequestOp] = []

    def compare(self, *compares: Compare) -> TxnBuilder:
        self._compare += compares
        return self

    def then(self, *ops: RequestOp) -> TxnBuilder:
        self._success += ops
        return self

    def else_(self, *ops: RequestOp) -> TxnBuilder:
        self._failure += ops
        return self

    async def commit(self, *, timeout_s: float | None = None) -> TxnResponse:
        return await self._client.txn(
            self._compare, self._success, self._failure, timeout_s=timeout_s
        )


class LeaseKeeper:
    """Renews a lease in the background every ``ttl_s / 3`` seconds until ``stop()``.

    If the lease is gone (expired or revoked) the task ends and ``lost`` is set; ``ttl_s``
    follows the server's answers. Connection failures are retried within the client's
    failover; a renewal that keeps failing past the TTL also ends in ``lost``.
    """

    def __init__(self, client: AsyncClient, lease_id: int, ttl_s: int) -> None:
        self.client = client
        self.lease_id = lease_id
        self.ttl_s = ttl_s
        self.lost = asyncio.Event()
        self.error: BaseException | None = None
        self.renewals = 0  # successful renewals so far (informational)
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        try:
            while True:
                await asyncio.sleep(max(self.ttl_s / 3.0, 0.05))
                self.ttl_s = await self.client.lease_keepalive_once(self.lease_id)
                self.renewals += 1
        except asyncio.CancelledError:
            raise
        except QuorumError as exc:
            self.error = exc
            self.lost.set()

    async def __aenter__(self) -> LeaseKeeper:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Stop renewing (the lease then expires after its TTL unless revoked)."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def _ignore_outcome(fut: asyncio.Future[m.ResponseBody]) -> None:
    if not fut.cancelled():
        fut.exception()  # retrieved: a failed ping needs no report, the watchdog acts on it


def _endpoint_of(url: str) -> str:
    """``http://host:port``, ``https://host:port`` or ``host:port`` -> ``host:port``."""
    return url.split("://", 1)[-1].rstrip("/")


def _tls_context(
    tls: ClientTls | ssl.SSLContext | None, endpoints: Sequence[str]
) -> ssl.SSLContext | None:
    """The one SSLContext of every connection of the client (None: plain TCP)."""
    if isinstance(tls, ssl.SSLContext):
        return tls
    if tls is not None:
        return tls.context()
    if any(e.startswith("https://") for e in endpoints):
        return ClientTls().context()
    return None


def _expect(resp: m.ResponseBody, cls: type[T]) -> T:
    if not isinstance(resp, cls):
        raise QuorumError(f"unexpected answer {type(resp).__name__}, wanted {cls.__name__}")
    return resp


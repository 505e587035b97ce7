"""Resumable watch iterators.

A :class:`Watcher` yields ``WatchEvents`` batches (whole revisions, in order). It remembers
the next revision it owes its reader: after the last event's ``mod_revision`` or a progress
notice's revision. When the connection drops it re-creates the watch on another connection
from exactly that revision, so across any number of reconnects the reader sees every event
once: no gap, no duplicate (TEST_SCENARIOS H.47). If that revision was compacted meanwhile,
iteration raises ``RevisionCompacted`` (with ``compact_revision``) instead of skipping.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import msgspec

from quorum.api.native import messages as m
from quorum.api.native.errors import error_from_body
from quorum.client.connection import Connection
from quorum.errors import (
    LeaderChanged,
    NodeStopped,
    ProposalDropped,
    RequestTimeout,
    RevisionCompacted,
)
from quorum.state.commands import Event

if TYPE_CHECKING:
    from quorum.client.aio import AsyncClient

_RETRIABLE = (ProposalDropped, LeaderChanged, NodeStopped, RequestTimeout)


class Watcher:
    """``async for batch in watcher`` yields :class:`WatchEvents`; a batch without events is a
    progress notice (everything up to ``batch.revision`` was delivered). Iteration ends after
    :meth:`cancel` or when the server cancels the watch; it raises ``RevisionCompacted`` if
    the start revision is compacted and ``RequestTimeout`` if no server can be reached to
    resume within the client's timeout."""

    def __init__(self, client: AsyncClient, req: m.WatchCreateReq) -> None:
        self._client = client
        self._req = req
        self.next_revision = req.start_revision  # 0 until the server told us where it started
        self.resumes = 0  # how many times the watch was re-created after a connection loss
        self._queue: asyncio.Queue[m.ResponseBody | None] | None = None
        self._conn: Connection | None = None
        self._watch_id = 0
        self._done = False

    def __aiter__(self) -> Watcher:
        return self

    async def start(self) -> None:
        """Create the watch now (otherwise the first iteration does). Idempotent."""
        if self._queue is None and not self._done:
            await self._open()

    async def __anext__(self) -> m.WatchEvents:
        while True:
            if self._done:
                raise StopAsyncIteration
            if self._queue is None:
                await self._open()
                continue
            body = await self._queue.get()
            batch = self._handle(body)
            if batch is not None:
                return batch

    def _handle(self, body: m.ResponseBody | None) -> m.WatchEvents | None:
        if body is None:  # connection lost: resume from next_revision on the next turn
            self._queue = None
            self.resumes += 1
            return None
        if isinstance(body, m.WatchEvents):
            events = body.events
            if events and events[0].kv.mod_revision < self.next_revision:
                # Invariant: the reader never sees a revision twice, even if a server
                # replays from before the resume point.
                events = tuple(e for e in events if e.kv.mod_revision >= self.next_revision)
                if not events:
                    return None
                body = m.WatchEvents(body.revision, events)
            if events:
                self.next_revision = events[-1].kv.mod_revision + 1
            elif body.revision + 1 < self.next_revision:
                # A progress notice below what the reader was already told: a watch resumed
                # on a node that has not applied that far yet reports its own revision. It
                # says nothing new, and passing it on would put a bookmark after later
                # events. Invariant: progress notices the reader sees never go backwards.
                return None
            else:
                self.next_revision = body.revision + 1
            return body
        self._finish()
        if isinstance(body, m.WatchCanceled) and body.compact_revision > 0:
            raise RevisionCompacted(body.compact_revision)
        if isinstance(body, m.ErrorResp):
            raise error_from_body(body)
        raise StopAsyncIteration

    async def _open(self) -> None:
        """(Re)create the server-side watch from ``next_revision``, failing over as needed."""
        client = self._client
        loop = asyncio.get_running_loop()
        deadline = loop.time() + client.timeout_s
        while True:
            conn = await client._connection(deadline)
            client._ensure_watchdog()  # it also notices a server gone silent under a watch
            queue: asyncio.Queue[m.ResponseBody | None] = asyncio.Queue()
            watch_id = client.next_id()
            req = msgspec.structs.replace(self._req, start_revision=self._resume_revision())
            conn.open_stream(m.Request(watch_id, req), queue.put_nowait)
            first = await queue.get()
            if isinstance(first, m.WatchCreated):
                if self.next_revision == 0:
                    self.next_revision = first.revision + 1
                self._conn, self._watch_id, self._queue = conn, watch_id, queue
                return
            conn.close_stream(watch_id)
            if isinstance(first, m.ErrorResp):
                exc = error_from_body(first)
                if not isinstance(exc, _RETRIABLE):
                    self._finish()
                    raise exc
                client._fail_over(conn, exc)
            elif first is None:
                client._fail_over(conn, None)
            else:  # canceled at once (e.g. compacted start revision)
                self._handle(first)
            if loop.time() + client.retry_backoff_s >= deadline:
                raise RequestTimeout("could not (re)create the watch before the deadline")
            await asyncio.sleep(client.retry_backoff_s)

    def _resume_revision(self) -> int:
        """Where the (re)created watch starts. Invariant: exactly the first revision the
        reader has not seen (0 only before the server pinned the start)."""
        return self.next_revision

    def _finish(self) -> None:
        self._done = True
        if self._conn is not None:
            self._conn.close_stream(self._watch_id)

    async def cancel(self) -> None:
        """Stop the watch; iteration ends. Idempotent."""
        if self._done:
            return
        conn, watch_id = self._conn, self._watch_id
        self._finish()
        if self._queue is not None:
            self._queue.put_nowait(m.WatchCanceled(reason="canceled by the client"))
        if conn is not None and not conn.closed:
            conn.send(m.Request(self._client.next_id(), m.WatchCancelReq(watch_id)))

    async def __aenter__(self) -> Watcher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.cancel()

    async def events(self) -> AsyncIterator[Event]:
        """The events one by one (progress notices are skipped)."""
        async for batch in self:
            for event in batch.events:
                yield event

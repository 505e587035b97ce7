"""The Watch service: one bidirectional stream carries many watchers.

Each stream keeps its own watch ids (etcd numbers them per stream from 0, and a client may ask
for a specific id), maps them onto Backend watchers, and forwards every backend response in
order through one outbound queue. Guarantees come from the backend (ordered, atomic per
revision, no duplicates, progress = everything up to the revision delivered); this layer only
keeps them: one backend response becomes one gRPC message, or several ``fragment`` messages
of the same revision when the watcher allowed splitting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import grpc
import msgspec

from quorum.api.backend import Backend, Watch, WatchResponse
from quorum.api.etcd import convert
from quorum.api.etcd.config import EtcdApiConfig
from quorum.api.etcd.gen import etcd_rpc_pb2 as pb
from quorum.api.etcd.gen import etcd_rpc_pb2_grpc as rpc
from quorum.api.etcd.status import status_of

log = logging.getLogger(__name__)

INVALID_WATCH_ID = -1  # etcd's id for "no watcher" (failed create, stream-wide progress)
DUPLICATE_WATCH_ID = "mvcc: duplicate watch ID provided on the WatchStream"


def fragments(
    watch_id: int, resp: WatchResponse, header: pb.ResponseHeader, limit_bytes: int
) -> list[pb.WatchResponse]:
    """Split one revision's events into messages of at most ``limit_bytes`` (each with at least
    one event); every piece but the last has ``fragment`` set so the client joins them."""
    events = [convert.event_pb(e) for e in resp.events]
    pieces: list[list[object]] = [[]]
    size = 0
    for ev in events:
        ev_size = ev.ByteSize() + 8  # tag and length prefix of a repeated field, generously
        if pieces[-1] and size + ev_size > limit_bytes:
            pieces.append([])
            size = 0
        pieces[-1].append(ev)
        size += ev_size
    out = []
    for i, piece in enumerate(pieces):
        out.append(
            pb.WatchResponse(
                header=header, watch_id=watch_id, events=piece,  # type: ignore[arg-type]
                fragment=i < len(pieces) - 1,
            )
        )
    return out


class _WatchStream:
    """State of one Watch RPC: its watchers and the outbound queue they share."""

    def __init__(self, backend: Backend, config: EtcdApiConfig) -> None:
        self._backend = backend
        self._config = config
        self.out: asyncio.Queue[pb.WatchResponse] = asyncio.Queue(config.watch_send_queue)
        self._watches: dict[int, Watch] = {}
        self._pumps: dict[int, asyncio.Task[None]] = {}
        self._next_id = 0

    # --- requests ------------------------------------------------------------------------
    async def read_requests(self, requests: AsyncIterator[pb.WatchRequest]) -> None:
        """Handle requests in arrival order (created responses must come back in the order
        of the create requests: clients match them first-in first-out)."""
        async for req in requests:
            kind = req.WhichOneof("request_union")
            if kind == "create_request":
                await self._create(req.create_request)
            elif kind == "cancel_request":
                await self._cancel(req.cancel_request.watch_id)
            elif kind == "progress_request":
                await self._progress()

    def _allocate_id(self, wanted: int) -> int | None:
        if wanted != 0:
            return None if wanted in self._watches else wanted
        while self._next_id in self._watches:
            self._next_id += 1
        self._next_id += 1
        return self._next_id - 1

    async def _create(self, creq: pb.WatchCreateRequest) -> None:
        header = convert.header_pb(self._backend.header())
        local_id = self._allocate_id(creq.watch_id)
        if local_id is None:
            await self._refuse(header, DUPLICATE_WATCH_ID)
            return
        create = convert.watch_create_from_pb(creq)
        if create.start_revision == 0:
            # Clients take the created header's revision R as "events after R follow". Pin
            # the start to R + 1 explicitly, so a write that lands while the backend sets the
            # watcher up is replayed rather than missed.
            create = msgspec.structs.replace(create, start_revision=header.revision + 1)
        try:
            watch = await self._backend.watch(create)
        except Exception as exc:
            await self._refuse(header, status_of(exc)[1])
            return
        self._watches[local_id] = watch
        # The created response goes out before any event of the watcher: the pump starts
        # only after it is queued.
        await self.out.put(pb.WatchResponse(header=header, watch_id=local_id, created=True))
        self._pumps[local_id] = asyncio.create_task(self._pump(local_id, watch, creq.fragment))

    async def _refuse(self, header: pb.ResponseHeader, reason: str) -> None:
        await self.out.put(
            pb.WatchResponse(
                header=header, watch_id=INVALID_WATCH_ID, created=True, canceled=True,
                cancel_reason=reason,
            )
        )

    async def _cancel(self, local_id: int) -> None:
        watch = self._watches.get(local_id)
        if watch is not None:  # an unknown id is ignored, as etcd does
            await watch.cancel()

    async def _progress(self) -> None:
        if not self._watches:
            # Nothing is watched, so "all events up to now were delivered" holds trivially.
            header = convert.header_pb(self._backend.header())
            await self.out.put(pb.WatchResponse(header=header, watch_id=INVALID_WATCH_ID))
            return
        # Each watcher answers in its own order, after the events it already queued, so a
        # progress mark never overtakes an event of a lower revision (bookmarkable).
        for watch in list(self._watches.values()):
            await watch.request_progress()

    # --- responses -----------------------------------------------------------------------
    async def _pump(self, local_id: int, watch: Watch, fragment: bool) -> None:
        try:
            async for resp in watch:
                for msg in self._translate(local_id, resp, fragment):
                    await self.out.put(msg)
                if resp.canceled:
                    break
        except Exception:
            log.exception("watch %d: backend watcher failed", local_id)
            header = convert.header_pb(self._backend.header())
            await self.out.put(
                pb.WatchResponse(
                    header=header, watch_id=local_id, canceled=True,
                    cancel_reason="etcdserver: watcher failed",
                )
            )
        finally:
            self._watches.pop(local_id, None)
            self._pumps.pop(local_id, None)

    def _translate(self, local_id: int, resp: WatchResponse, fragment: bool) -> list[pb.WatchResponse]:
        header = convert.header_pb(self._backend.header(), resp.revision)
        if resp.canceled:
            return [
                pb.WatchResponse(
                    header=header, watch_id=local_id, canceled=True,
                    compact_revision=resp.compact_revision, cancel_reason=resp.cancel_reason,
                    events=[convert.event_pb(e) for e in resp.events],
                )
            ]
        if fragment and resp.events:
            return fragments(local_id, resp, header, self._config.watch_fragment_bytes)
        return [
            pb.WatchResponse(
                header=header, watch_id=local_id, events=[convert.event_pb(e) for e in resp.events]
            )
        ]

    async def close(self) -> None:
        for watch in list(self._watches.values()):
            with contextlib.suppress(Exception):
                await watch.cancel()
        for task in list(self._pumps.values()):
            task.cancel()
        self._watches.clear()


def _reader_done(task: asyncio.Task[None]) -> None:
    # The request side ends when the client half-closes or the RPC is cancelled; anything
    # else is a bug worth a log line (the outbound side keeps running until the RPC ends).
    if not task.cancelled() and task.exception() is not None:
        exc = task.exception()
        if not isinstance(exc, (grpc.aio.AioRpcError, asyncio.CancelledError)):
            log.error("watch stream: request reader failed", exc_info=exc)


class WatchServicer(rpc.WatchServicer):
    def __init__(self, backend: Backend, config: EtcdApiConfig) -> None:
        self._backend = backend
        self._config = config

    async def Watch(
        self, request_iterator: AsyncIterator[pb.WatchRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchResponse]:
        stream = _WatchStream(self._backend, self._config)
        # The client half-closing its side does not end the stream (etcd keeps delivering
        # events until the RPC is cancelled); only the RPC's end does.
        reader = asyncio.create_task(stream.read_requests(request_iterator))
        reader.add_done_callback(_reader_done)
        try:
            while True:
                yield await stream.out.get()
        finally:
            reader.cancel()
            await stream.close()

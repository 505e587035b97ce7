"""The Lock and Election services, implemented server-side on the Backend with the algorithm of
etcd's client concurrency package:

* every contender writes one key ``<name>/<lease id in hex>`` attached to its lease, created
  only if absent (a txn comparing create_revision to 0), so one lease holds one place;
* contenders are ordered by the create revision of their key; the lowest holds the lock or
  leads the election;
* a waiter watches only the key just before its own (the highest create revision below
  its own) until it is deleted, then looks again (no thundering herd);
* the holder's key create revision is a fencing token: guarded writes compare it.

Safety addition over etcd 3.4 (etcd #11456): after waiting, the waiter checks its own key
still exists. If its lease expired meanwhile, the key is gone and the lock is NOT reported as
acquired.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc

from quorum.api.backend import Backend, WatchCreate
from quorum.api.etcd import convert
from quorum.api.etcd.gen import etcd_election_pb2 as epb
from quorum.api.etcd.gen import etcd_election_pb2_grpc as erpc
from quorum.api.etcd.gen import etcd_lock_pb2 as lpb
from quorum.api.etcd.gen import etcd_lock_pb2_grpc as lrpc
from quorum.api.etcd.status import abort_with
from quorum.state import commands as sc

DEFAULT_SESSION_TTL_S = 60  # etcd's session TTL when the caller gives no lease
ERR_SESSION_EXPIRED = "mutex: session is expired"
ERR_ELECTION_SESSION_EXPIRED = "election: session expired"
ERR_NOT_LEADER = "election: not leader"
ERR_NO_LEADER = "election: no leader"
ERR_MISSING_LEADER_KEY = '"leader" field must be provided'


class ContentionError(Exception):
    """A lock or election request that failed for a reason etcd reports as plain text."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _first_created(prefix: bytes, max_create_revision: int = 0, last: bool = False) -> sc.RangeRequest:
    order = sc.SortOrder.DESCEND if last else sc.SortOrder.ASCEND
    return sc.RangeRequest(
        key=prefix, range_end=sc.prefix_end(prefix), limit=1, sort_order=order,
        sort_target=sc.SortTarget.CREATE, max_create_revision=max_create_revision,
    )


class Contention:
    """The shared algorithm (ordered keys, wait for the predecessor's deletion).

    ``verify_owner_after_wait=False`` is a planted bug for tests (etcd 3.4's behaviour): the
    waiter does not re-check its own key after waiting, and so may report a lock whose lease
    expired meanwhile as acquired.
    """

    def __init__(self, backend: Backend, *, verify_owner_after_wait: bool = True) -> None:
        self.backend = backend
        self.verify_owner_after_wait = verify_owner_after_wait

    async def ensure_lease(self, lease: int) -> int:
        if lease != 0:
            return lease
        res = await self.backend.write(sc.LeaseGrantRequest(ttl=DEFAULT_SESSION_TTL_S))
        assert isinstance(res, sc.LeaseGrantResponse)
        return res.id

    async def enqueue(self, prefix: bytes, lease: int, value: bytes) -> tuple[bytes, int, bytes]:
        """Create this lease's key under ``prefix`` unless it exists. Returns (key, its create
        revision, the value it holds)."""
        key = prefix + b"%x" % lease
        absent = sc.Compare(key=key, target=sc.CompareTarget.CREATE, result=sc.CompareResult.EQUAL, value=0)
        txn = sc.TxnRequest(
            compare=(absent,),
            success=(sc.PutRequest(key=key, value=value, lease=lease),),
            failure=(sc.RangeRequest(key=key),),
        )
        res = await self.backend.write(txn)
        assert isinstance(res, sc.TxnResponse)
        if res.succeeded:
            return key, res.revision, value
        existing = res.responses[0]
        assert isinstance(existing, sc.RangeResponse) and existing.kvs
        return key, existing.kvs[0].create_revision, existing.kvs[0].value

    async def wait_predecessors(self, prefix: bytes, my_revision: int) -> None:
        """Return once no key under ``prefix`` has a create revision below ``my_revision``."""
        if my_revision <= 1:
            return  # nothing can be older; and max_create_revision 0 would mean "no bound"
        while True:
            res = await self.backend.read(_first_created(prefix, my_revision - 1, last=True))
            assert isinstance(res, sc.RangeResponse)
            if not res.kvs:
                return
            await self.wait_deleted(res.kvs[0].key, res.revision)

    async def wait_deleted(self, key: bytes, seen_revision: int) -> None:
        """Wait until ``key`` (present at ``seen_revision``) is deleted."""
        watch = await self.backend.watch(
            WatchCreate(key=key, start_revision=seen_revision + 1, filters=(sc.WatchFilter.NOPUT,))
        )
        try:
            async for resp in watch:
                if resp.canceled or any(e.type == sc.EventType.DELETE for e in resp.events):
                    return  # deleted, or history compacted: the caller looks again
        finally:
            await watch.cancel()

    async def exists(self, key: bytes, create_revision: int) -> bool:
        res = await self.backend.read(sc.RangeRequest(key=key))
        assert isinstance(res, sc.RangeResponse)
        return bool(res.kvs) and res.kvs[0].create_revision == create_revision

    async def delete(self, key: bytes) -> int:
        res = await self.backend.write(sc.DeleteRangeRequest(key=key))
        return res.revision

    async def acquire(self, prefix: bytes, lease: int, value: bytes, expired: str) -> tuple[bytes, int]:
        """Queue under ``prefix`` and wait for the turn; withdraw the key if the wait fails or
        is cancelled (the caller gave up: leaving the key would block everyone behind it)."""
        key, revision, held = await self.enqueue(prefix, lease, value)
        try:
            if held != value:
                await self.proclaim(key, revision, lease, value)
            await self.wait_predecessors(prefix, revision)
            if self.verify_owner_after_wait and not await self.exists(key, revision):
                raise ContentionError(grpc.StatusCode.FAILED_PRECONDITION, expired)
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.delete(key))
            raise
        return key, revision

    async def proclaim(self, key: bytes, revision: int, lease: int, value: bytes) -> int:
        held = sc.Compare(
            key=key, target=sc.CompareTarget.CREATE, result=sc.CompareResult.EQUAL, value=revision
        )
        txn = sc.TxnRequest(compare=(held,), success=(sc.PutRequest(key=key, value=value, lease=lease),))
        res = await self.backend.write(txn)
        assert isinstance(res, sc.TxnResponse)
        if not res.succeeded:
            raise ContentionError(grpc.StatusCode.FAILED_PRECONDITION, ERR_NOT_LEADER)
        return res.revision


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    if isinstance(exc, ContentionError):
        await context.abort(exc.code, exc.message)
    await abort_with(context, exc)


class LockServicer(lrpc.LockServicer):
    def __init__(self, backend: Backend) -> None:
        self._c = Contention(backend)

    async def Lock(self, request: lpb.LockRequest, context: grpc.aio.ServicerContext) -> lpb.LockResponse:
        try:
            lease = await self._c.ensure_lease(request.lease)
            key, _ = await self._c.acquire(request.name + b"/", lease, b"", ERR_SESSION_EXPIRED)
        except Exception as exc:
            await _abort(context, exc)
            raise
        return lpb.LockResponse(header=convert.header_pb(self._c.backend.header()), key=key)

    async def Unlock(self, request: lpb.UnlockRequest, context: grpc.aio.ServicerContext) -> lpb.UnlockResponse:
        try:
            revision = await self._c.delete(request.key)
        except Exception as exc:
            await _abort(context, exc)
            raise
        return lpb.UnlockResponse(header=convert.header_pb(self._c.backend.header(), revision))


class ElectionServicer(erpc.ElectionServicer):
    def __init__(self, backend: Backend) -> None:
        self._c = Contention(backend)

    def _header(self, revision: int | None = None) -> object:
        return convert.header_pb(self._c.backend.header(), revision)

    async def Campaign(
        self, request: epb.CampaignRequest, context: grpc.aio.ServicerContext
    ) -> epb.CampaignResponse:
        try:
            lease = await self._c.ensure_lease(request.lease)
            key, rev = await self._c.acquire(
                request.name + b"/", lease, request.value, ERR_ELECTION_SESSION_EXPIRED
            )
        except Exception as exc:
            await _abort(context, exc)
            raise
        leader = epb.LeaderKey(name=request.name, key=key, rev=rev, lease=lease)
        return epb.CampaignResponse(header=self._header(), leader=leader)  # type: ignore[arg-type]

    async def Proclaim(
        self, request: epb.ProclaimRequest, context: grpc.aio.ServicerContext
    ) -> epb.ProclaimResponse:
        try:
            if not request.HasField("leader"):
                raise ContentionError(grpc.StatusCode.INVALID_ARGUMENT, ERR_MISSING_LEADER_KEY)
            lk = request.leader
            revision = await self._c.proclaim(lk.key, lk.rev, lk.lease, request.value)
        except Exception as exc:
            await _abort(context, exc)
            raise
        return epb.ProclaimResponse(header=self._header(revision))  # type: ignore[arg-type]

    async def Resign(self, request: epb.ResignRequest, context: grpc.aio.ServicerContext) -> epb.ResignResponse:
        try:
            if not request.HasField("leader"):
                raise ContentionError(grpc.StatusCode.INVALID_ARGUMENT, ERR_MISSING_LEADER_KEY)
            lk = request.leader
            held = sc.Compare(
                key=lk.key, target=sc.CompareTarget.CREATE, result=sc.CompareResult.EQUAL,
                value=lk.rev,
            )
            res = await self._c.backend.write(
                sc.TxnRequest(compare=(held,), success=(sc.DeleteRangeRequest(key=lk.key),))
            )
        except Exception as exc:
            await _abort(context, exc)
            raise
        return epb.ResignResponse(header=self._header(res.revision))  # type: ignore[arg-type]

    async def _leader(self, name: bytes) -> sc.RangeResponse:
        res = await self._c.backend.read(_first_created(name + b"/"))
        assert isinstance(res, sc.RangeResponse)
        return res

    async def Leader(self, request: epb.LeaderRequest, context: grpc.aio.ServicerContext) -> epb.LeaderResponse:
        try:
            res = await self._leader(request.name)
            if not res.kvs:
                raise ContentionError(grpc.StatusCode.NOT_FOUND, ERR_NO_LEADER)
        except Exception as exc:
            await _abort(context, exc)
            raise
        return epb.LeaderResponse(header=self._header(res.revision), kv=convert.kv_pb(res.kvs[0]))  # type: ignore[arg-type]

    async def Observe(
        self, request: epb.LeaderRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[epb.LeaderResponse]:
        """Stream the leader's value each time it changes, leader after leader, in order."""
        prefix = request.name + b"/"
        try:
            while True:
                res = await self._leader(request.name)
                if not res.kvs:
                    await self._wait_any_put(prefix, res.revision)
                    continue
                async for kv in self._follow(res.kvs[0], res.revision):
                    yield epb.LeaderResponse(header=self._header(kv.mod_revision), kv=convert.kv_pb(kv))  # type: ignore[arg-type]
        except Exception as exc:
            await _abort(context, exc)
            raise

    async def _wait_any_put(self, prefix: bytes, seen_revision: int) -> None:
        watch = await self._c.backend.watch(
            WatchCreate(
                key=prefix, range_end=sc.prefix_end(prefix), start_revision=seen_revision + 1,
                filters=(sc.WatchFilter.NODELETE,),
            )
        )
        try:
            async for resp in watch:
                if resp.canceled or resp.events:
                    return
        finally:
            await watch.cancel()

    async def _follow(self, kv: sc.KeyValue, seen_revision: int) -> AsyncIterator[sc.KeyValue]:
        """Yield ``kv`` and every later value of its key, until the key is deleted."""
        yield kv
        watch = await self._c.backend.watch(WatchCreate(key=kv.key, start_revision=seen_revision + 1))
        try:
            async for resp in watch:
                if resp.canceled:
                    return
                for ev in resp.events:
                    if ev.type == sc.EventType.DELETE:
                        return
                    yield ev.kv
        finally:
            await watch.cancel()

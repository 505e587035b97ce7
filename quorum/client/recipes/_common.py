"""Pieces the recipes share: an owned lease, waiting for predecessors, prefix mirrors."""

from __future__ import annotations

import asyncio
import contextlib

from quorum.client.aio import AsyncClient, LeaseKeeper
from quorum.client.txn import create_revision, get, put
from quorum.client.watch import Watcher
from quorum.errors import LockLost, QuorumError, RevisionCompacted
from quorum.state.commands import (
    EventType,
    KeyValue,
    RangeRequest,
    RangeResponse,
    SortOrder,
    SortTarget,
    prefix_end,
)


def as_bytes(name: bytes | str) -> bytes:
    return name.encode() if isinstance(name, str) else name


class OwnedLease:
    """A lease for one recipe participant: granted here and kept alive in the background,
    or supplied by the caller (then the caller keeps it alive and it is never revoked here)."""

    def __init__(self, client: AsyncClient, ttl_s: int, lease_id: int = 0) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self.id = lease_id
        self._owned = lease_id == 0
        self._keeper: LeaseKeeper | None = None

    async def ensure(self) -> int:
        if self.id == 0:
            self.id = (await self.client.lease_grant(self.ttl_s)).id
            self._keeper = self.client.keep_alive(self.id, self.ttl_s)
        return self.id

    @property
    def lost(self) -> bool:
        """True once the background renewal found the lease gone (expired or revoked)."""
        return self._keeper is not None and self._keeper.lost.is_set()

    async def wait_lost(self) -> None:
        """Return once the background renewal finds the lease gone (never, for a lease the
        caller supplied: its caller watches it)."""
        if self._keeper is None:
            await asyncio.Event().wait()
        else:
            await self._keeper.lost.wait()

    async def release(self) -> None:
        """Stop renewing and revoke the lease if this object granted it (deletes its keys)."""
        if self._keeper is not None:
            await self._keeper.stop()
            self._keeper = None
        if self._owned and self.id:
            with contextlib.suppress(QuorumError):
                await self.client.lease_revoke(self.id)
            self.id = 0


async def create_once(client: AsyncClient, key: bytes, value: bytes, lease_id: int) -> KeyValue:
    """Create ``key`` (attached to the lease) unless it exists; return its current version.
    Re-running after a lost answer finds the key already there, so it is idempotent."""
    resp = await client.txn(
        compare=[create_revision(key) == 0],
        success=[put(key, value, lease=lease_id), get(key)],
        failure=[get(key)],
    )
    ranged = resp.responses[-1]
    assert isinstance(ranged, RangeResponse)
    kvs = ranged.kvs
    if not kvs:
        raise LockLost(f"{key!r} vanished right after it was created (lease expired)")
    kv: KeyValue = kvs[0]
    return kv


async def wait_predecessors(
    client: AsyncClient, my_key: bytes, my_rev: int, watch_prefix: bytes, pred_start: bytes,
    pred_end: bytes,
) -> None:
    """Wait until no key in [pred_start, pred_end) has a create revision below ``my_rev``.

    Waits on the youngest such predecessor each time (no thundering herd: each waiter watches
    one key's deletion). Raises :class:`LockLost` if ``my_key`` is deleted meanwhile (its lease
    expired or was revoked while waiting), so a waiter never proceeds without its key.
    """
    if my_rev <= 1:
        return  # nothing was created before revision 1 (and max_create_revision=0 means "any")
    youngest_before = RangeRequest(
        pred_start, pred_end, limit=1, sort_order=SortOrder.DESCEND,
        sort_target=SortTarget.CREATE, keys_only=True, max_create_revision=my_rev - 1,
    )
    while True:
        # one read-only txn: the predecessor and our own key at the same revision, so a key
        # that vanished before the watch below starts is noticed too
        resp = await client.txn([], [youngest_before, get(my_key, keys_only=True)])
        preds, mine = resp.responses
        assert isinstance(preds, RangeResponse) and isinstance(mine, RangeResponse)
        if not mine.kvs or mine.kvs[0].create_revision != my_rev:
            raise LockLost(f"{my_key!r} is gone (its lease expired or was revoked)")
        if not preds.kvs:
            return
        await _wait_delete_of(client, preds.kvs[0].key, my_key, watch_prefix, resp.revision + 1)


async def _wait_delete_of(
    client: AsyncClient, pred_key: bytes, my_key: bytes, prefix: bytes, start_revision: int
) -> None:
    watcher = client.watch(prefix, prefix_end(prefix), start_revision=start_revision,
                           filter_put=True)
    try:
        async for batch in watcher:
            for event in batch.events:
                if event.type is not EventType.DELETE:
                    continue
                if event.kv.key == my_key:
                    raise LockLost(f"{my_key!r} was deleted while waiting (lease expired?)")
                if event.kv.key == pred_key:
                    return
    finally:
        await watcher.cancel()


async def first_by_create(client: AsyncClient, prefix: bytes) -> tuple[KeyValue | None, int]:
    """The key under ``prefix`` with the lowest create revision (the owner/leader), and the
    store revision of the answer."""
    resp = await client.range(
        prefix, prefix_end(prefix), limit=1, sort_order=SortOrder.ASCEND,
        sort_target=SortTarget.CREATE,
    )
    return (resp.kvs[0] if resp.kvs else None), resp.revision


class PrefixMirror:
    """A local dict kept equal to the keys under a prefix (keys without the prefix).

    ``start()`` reads the prefix at some revision R and then watches from R + 1, so every
    change after the snapshot is applied exactly once, in order; the watch resumes after a
    reconnect. If the history it must resume from was compacted meanwhile, the mirror reloads
    the prefix and watches on from the new read (``resyncs`` counts these): the dict then
    skips intermediate states but ends equal to the store. ``revision`` is the store revision
    the dict reflects. Waiters use :meth:`wait_for`.
    """

    def __init__(self, client: AsyncClient, prefix: bytes) -> None:
        self.client = client
        self.prefix = prefix
        self.items: dict[bytes, bytes] = {}
        self.revision = 0
        self.resyncs = 0
        self.error: BaseException | None = None
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Load the prefix and start following it. Raises the client's typed errors."""
        watcher = await self._load()
        self._task = asyncio.ensure_future(self._follow(watcher))

    async def _load(self) -> Watcher:
        resp = await self.client.get_prefix(self.prefix)
        cut = len(self.prefix)
        self.items = {kv.key[cut:]: kv.value for kv in resp.kvs}
        self.revision = resp.revision
        watcher = self.client.watch(
            self.prefix, prefix_end(self.prefix), start_revision=resp.revision + 1
        )
        await watcher.start()
        return watcher

    async def _follow(self, watcher: Watcher) -> None:
        try:
            while True:
                try:
                    await self._apply_stream(watcher)
                    return  # the server ended the watch
                except RevisionCompacted:
                    await watcher.cancel()
                    self.resyncs += 1
                    watcher = await self._load()
                    await self._notify()
        except QuorumError as exc:
            self.error = exc
            await self._notify()
        finally:
            await watcher.cancel()

    async def _apply_stream(self, watcher: Watcher) -> None:
        cut = len(self.prefix)
        async for batch in watcher:
            for event in batch.events:
                name = event.kv.key[cut:]
                if event.type is EventType.PUT:
                    self.items[name] = event.kv.value
                else:
                    self.items.pop(name, None)
            self.revision = max(self.revision, batch.revision)
            await self._notify()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, predicate: object, timeout_s: float | None = None) -> None:
        """Wait until ``predicate(items)`` is true. Raises TimeoutError, or the watch's error."""
        assert callable(predicate)
        async with asyncio.timeout(timeout_s), self._changed:
            while not predicate(self.items):
                if self.error is not None:
                    raise self.error
                await self._changed.wait()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

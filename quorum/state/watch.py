"""Watches: a pull-based hub fed with every applied revision's changes.

The hub is pure: the state machine calls :meth:`WatchHub.notify` after each write revision,
and the runtime pulls responses with :meth:`WatchHub.drain` (``ready()`` names the watchers
with something to deliver). Watches are node-local: they are not replicated and not in
snapshots; a restore makes every watcher catch up again from the restored history.

Guarantees, for every watcher (etcd's watch contract):

- ordered: responses are in strictly increasing revision order;
- unique: an event is delivered once;
- atomic: all matching events of one revision are in one response, never split;
- reliable: no gap. A watcher whose next revision is still retained replays it from the
  store ("unsynced", caught up in bounded steps on drain) and then follows live changes
  ("synced"); a start revision below the compact revision gives an explicit canceled
  response carrying ``compact_revision`` (also if compaction overtakes a catching-up
  watcher); nothing is ever skipped silently;
- resumable: every canceled response except a user cancel says where to resume
  (``compact_revision`` or the first undelivered revision in ``cancel_reason``);
- bookmarkable: a progress response at revision R is only queued when every event <= R is
  already queued before it.

A slow consumer's buffer is bounded (``StateConfig.watch_buffer_events`` / ``_bytes``): when
the next revision does not fit, the watcher is canceled with a reason after what it already
buffered (the events before the cancel are complete, so resuming from the revision named in
the reason loses nothing). A revision always fits into an empty buffer.

Events of one revision are ordered by key (in live delivery and in replay alike).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from itertools import groupby

import msgspec

from quorum.errors import InvalidRevision, UsageError, WatchNotFound
from quorum.state.commands import Event, EventType, KeyValue, WatchFilter
from quorum.state.config import StateConfig
from quorum.state.kv import Change, to_kv, validate_range
from quorum.state.mvcc import MOD, VERSION, MVCCStore, Record

_EVENT_OVERHEAD_BYTES = 48


class WatchRequest(msgspec.Struct, frozen=True):
    """Parameters of one watcher (etcd's WatchCreateRequest)."""

    key: bytes
    range_end: bytes = b""  # b"" = the single key; b"\\0" = every key >= key
    start_revision: int = 0  # 0 = from the next revision; < 0 is rejected
    prev_kv: bool = False
    filters: tuple[WatchFilter, ...] = ()
    progress_notify: bool = False  # progress responses on progress_tick() when idle
    watch_id: int = 0  # 0 = the hub picks the next free id
    fragment: bool = False  # split a revision larger than watch_fragment_bytes (see below)


class WatchResponse(msgspec.Struct, frozen=True):
    """One delivery. With events: all matching events of exactly one revision -- or, for a
    watcher created with ``fragment=True`` and a revision above ``watch_fragment_bytes``, a
    part of them: ``fragment=True`` means more parts of the same revision follow (the client
    joins them, as etcd's clients do). ``progress``: no events, every event <= ``revision``
    was delivered before. ``canceled``: the last response of the watcher."""

    watch_id: int
    revision: int
    events: tuple[Event, ...] = ()
    progress: bool = False
    canceled: bool = False
    compact_revision: int = 0
    cancel_reason: str = ""
    fragment: bool = False


class Watcher:
    __slots__ = ("buffer", "buffered_bytes", "buffered_events", "canceled", "fragment", "id", "idle",
                 "key", "next_rev", "no_delete", "no_put", "prev_kv", "progress_notify",
                 "progress_wanted", "range_end", "synced")

    def __init__(self, watch_id: int, req: WatchRequest, next_rev: int, synced: bool) -> None:
        self.id = watch_id
        self.key = req.key
        self.range_end = req.range_end
        self.prev_kv = req.prev_kv
        self.no_put = WatchFilter.NOPUT in req.filters
        self.no_delete = WatchFilter.NODELETE in req.filters
        self.progress_notify = req.progress_notify
        self.fragment = req.fragment
        # Invariant: every event below next_rev is queued or delivered. For a synced watcher
        # the hub follows the store instead: its next revision is
        # max(next_rev, store.revision + 1) (see WatchHub._next_rev), so applying a revision
        # costs nothing for the watchers it does not concern.
        self.next_rev = next_rev
        self.synced = synced
        self.buffer: deque[WatchResponse] = deque()
        self.buffered_events = 0
        self.buffered_bytes = 0
        self.canceled = False
        self.idle = True
        self.progress_wanted = False

    def matches(self, key: bytes) -> bool:
        end = self.range_end
        if not end:
            return key == self.key
        return self.key <= key and (end == b"\0" or key < end)

    def wants(self, rec: Record) -> bool:
        return not (self.no_delete if not rec[VERSION] else self.no_put)


class WatchHub:
    """Watchers of one node. ``split_txn_events_bug`` is a planted bug for tests: it splits a
    revision's events across two responses, which the atomicity check must catch."""

    def __init__(self, store: MVCCStore, config: StateConfig,
                 split_txn_events_bug: bool = False) -> None:
        self.store = store
        self.config = config
        self.split_txn_events_bug = split_txn_events_bug
        self._watchers: dict[int, Watcher] = {}
        self._by_key: dict[bytes, set[int]] = {}  # single-key synced watchers
        self._ranged: set[int] = set()  # range synced watchers
        self._next_id = 1

    # --- lifecycle ----------------------------------------------------------------------------

    def watch(self, req: WatchRequest) -> int:
        """Create a watcher; returns its id. Raises KeyEmpty / InvalidRange / InvalidRevision
        for a bad request, UsageError for a watch_id in use. A compacted start revision is
        reported as the watcher's first (canceled) response, like etcd."""
        validate_range(req.key, req.range_end)
        if req.start_revision < 0:
            raise InvalidRevision()
        watch_id = req.watch_id or self._pick_id()
        if watch_id in self._watchers:
            raise UsageError(f"watch id {watch_id} is in use")
        current = self.store.revision
        start = req.start_revision
        next_rev = current + 1 if start == 0 else start
        watcher = Watcher(watch_id, req, next_rev, synced=next_rev > current)
        self._watchers[watch_id] = watcher
        if 0 < start < self.store.compact_revision:
            self._cancel_compacted(watcher)
        elif watcher.synced:
            self._index(watcher)
        return watch_id

    def cancel(self, watch_id: int) -> None:
        """Cancel on request: a final canceled response is queued after what is buffered."""
        watcher = self._get(watch_id)
        if not watcher.canceled:
            self._cancel(watcher, WatchResponse(watch_id, self.store.revision, canceled=True,
                                                cancel_reason="canceled by the client"))

    def drain(self, watch_id: int, max_responses: int = 0) -> list[WatchResponse]:
        """Take up to ``max_responses`` (0 = all) queued responses, catching up a lagging
        watcher from history first. After the canceled response is taken the id is freed."""
        watcher = self._get(watch_id)
        if not watcher.synced and not watcher.canceled:
            self._catch_up(watcher)
        out: list[WatchResponse] = []
        buffer = watcher.buffer
        while buffer and (not max_responses or len(out) < max_responses):
            resp = buffer.popleft()
            watcher.buffered_events -= len(resp.events)
            watcher.buffered_bytes -= _size(resp.events)
            out.append(resp)
        if watcher.canceled and not buffer:
            del self._watchers[watch_id]
        return out

    def ready(self) -> list[int]:
        """Ids of watchers with something to deliver (buffered, or catching up), ascending."""
        return sorted(w.id for w in self._watchers.values() if w.buffer or not w.synced)

    def pending(self, watch_id: int) -> bool:
        """O(1): whether ``drain(watch_id)`` has something to do (buffered responses, or
        history to catch up). Raises WatchNotFound."""
        watcher = self._get(watch_id)
        return bool(watcher.buffer) or not watcher.synced

    def watcher_ids(self) -> list[int]:
        return sorted(self._watchers)

    # --- progress -----------------------------------------------------------------------------

    def request_progress(self, watch_id: int) -> None:
        """Queue a progress response at the current revision, ordered after every event <= it
        (for a lagging watcher: once it has caught up)."""
        watcher = self._get(watch_id)
        watcher.progress_wanted = True
        self._maybe_progress(watcher)

    def progress_tick(self) -> None:
        """Periodic notification (the runtime calls it, e.g. every 10 min like etcd): every
        synced ``progress_notify`` watcher that got no events since the last tick gets one."""
        for watch_id in sorted(self._watchers):
            watcher = self._watchers[watch_id]
            if watcher.progress_notify and watcher.idle:
                watcher.progress_wanted = True
                self._maybe_progress(watcher)
            watcher.idle = True

    def _maybe_progress(self, watcher: Watcher) -> None:
        if watcher.synced and watcher.progress_wanted and not watcher.canceled:
            watcher.progress_wanted = False
            # Invariant: all events below the next revision are queued already.
            rev = min(self._next_rev(watcher) - 1, self.store.revision)
            watcher.buffer.append(WatchResponse(watcher.id, rev, progress=True))

    # --- feeding ------------------------------------------------------------------------------

    def notify(self, revision: int, changes: list[Change]) -> None:
        """Called once per applied write revision with that revision's changes."""
        if not self._watchers:
            return
        targets = self._targets(changes)
        if targets:
            ordered = sorted(changes, key=lambda ch: ch[0])
            cache: dict[tuple[bytes, bool], Event] = {}
            for watch_id in sorted(targets):
                watcher = self._watchers[watch_id]
                events = [_event(ch, watcher.prev_kv, cache) for ch in ordered
                          if watcher.matches(ch[0]) and watcher.wants(ch[1])]
                if events:
                    self._push(watcher, revision, events)

    def compacted(self) -> None:
        """After a compaction: lagging watchers whose next revision is gone are canceled."""
        compact = self.store.compact_revision
        for watch_id in sorted(self._watchers):
            watcher = self._watchers[watch_id]
            if not watcher.synced and not watcher.canceled and watcher.next_rev < compact:
                self._cancel_compacted(watcher)

    def before_restore(self) -> None:
        """Call before the store is replaced: pins every synced watcher's next revision."""
        for watcher in self._watchers.values():
            if watcher.synced:
                watcher.next_rev = self._next_rev(watcher)

    def restored(self) -> None:
        """After the store was replaced by a snapshot (``before_restore`` called first): every
        watcher catches up from history (or is canceled as compacted when the history it
        needs is gone)."""
        self._by_key.clear()
        self._ranged.clear()
        current = self.store.revision
        for watch_id in sorted(self._watchers):
            watcher = self._watchers[watch_id]
            if not watcher.canceled:
                watcher.synced = watcher.next_rev > current
                if watcher.synced:
                    self._index(watcher)
        self.compacted()

    # --- internals ----------------------------------------------------------------------------

    def _targets(self, changes: list[Change]) -> set[int]:
        targets = set(self._ranged)
        for key, _, _ in changes:
            ids = self._by_key.get(key)
            if ids:
                targets |= ids
        return targets

    def _next_rev(self, watcher: Watcher) -> int:
        if watcher.synced:
            return max(watcher.next_rev, self.store.revision + 1)
        return watcher.next_rev

    def _push(self, watcher: Watcher, revision: int, events: list[Event]) -> None:
        """Queue one revision's events, or cancel the watcher if its buffer is full."""
        if watcher.next_rev > revision:
            return  # a future start revision: not yet wanted (and never delivered twice)
        size = _size(events)
        full = (watcher.buffered_events + len(events) > self.config.watch_buffer_events
                or watcher.buffered_bytes + size > self.config.watch_buffer_bytes)
        if full and watcher.buffer:
            reason = (f"slow watcher: buffer limit of {self.config.watch_buffer_events} events / "
                      f"{self.config.watch_buffer_bytes} bytes reached; resume from revision "
                      f"{revision}")
            self._cancel(watcher, WatchResponse(watcher.id, revision, canceled=True,
                                                cancel_reason=reason))
            return
        watcher.idle = False
        watcher.buffered_events += len(events)
        watcher.buffered_bytes += size
        if self.split_txn_events_bug and len(events) > 1:  # planted bug, tests only
            half = len(events) // 2
            watcher.buffer.append(WatchResponse(watcher.id, revision, tuple(events[:half])))
            watcher.buffer.append(WatchResponse(watcher.id, revision, tuple(events[half:])))
            return
        if watcher.fragment and size > self.config.watch_fragment_bytes:
            self._push_fragments(watcher, revision, events)
            return
        watcher.buffer.append(WatchResponse(watcher.id, revision, tuple(events)))

    def _push_fragments(self, watcher: Watcher, revision: int, events: list[Event]) -> None:
        """Parts of at most ``watch_fragment_bytes`` (at least one event each), all but the
        last flagged ``fragment``."""
        limit = self.config.watch_fragment_bytes
        parts: list[list[Event]] = [[]]
        size = 0
        for event in events:
            event_size = _size((event,))
            if parts[-1] and size + event_size > limit:
                parts.append([])
                size = 0
            parts[-1].append(event)
            size += event_size
        for i, part in enumerate(parts):
            watcher.buffer.append(WatchResponse(watcher.id, revision, tuple(part),
                                                fragment=i < len(parts) - 1))

    def _catch_up(self, watcher: Watcher) -> None:
        """Replay retained history from ``next_rev`` in whole revisions, at most about
        ``watch_replay_events`` events per call; mark synced once the present is reached."""
        store = self.store
        if watcher.next_rev < store.compact_revision:
            self._cancel_compacted(watcher)
            return
        current = store.revision
        budget = self.config.watch_replay_events
        for rev, changes in self._replay(watcher, watcher.next_rev, current):
            if budget <= 0 or watcher.canceled:
                return
            cache: dict[tuple[bytes, bool], Event] = {}  # per revision: a key recurs across them
            events = [_event(ch, watcher.prev_kv, cache) for ch in changes if watcher.wants(ch[1])]
            if events:
                self._push(watcher, rev, events)
                budget -= len(events)
            watcher.next_rev = rev + 1
        if not watcher.canceled:
            watcher.next_rev = current + 1
            watcher.synced = True
            self._index(watcher)
            self._maybe_progress(watcher)

    def _replay(self, watcher: Watcher, lo: int, hi: int) -> Iterator[tuple[int, list[Change]]]:
        """(revision, changes in the watched range sorted by key) for revisions in [lo, hi]
        that touched the range: from the store's revision log when it covers ``lo`` (cost
        proportional to the revisions replayed), else by scanning the range's histories."""
        store = self.store
        if lo < store.log_from:
            found = self._history_changes(watcher, lo, hi)
            for rev, group in groupby(found, key=lambda item: item[0]):
                yield rev, [change for _, change in group]
            return
        for rev, keys in store.logged_revisions(lo, hi):
            changes = []
            for key in sorted(k for k in keys if watcher.matches(k)):
                written = store.written_at(key, rev)
                if written is not None:  # (None: compacted away meanwhile; the caller cancels)
                    rec, prev = written
                    changes.append((key, rec, prev if prev is not None and prev[VERSION] else None))
            if changes:
                yield rev, changes

    def _history_changes(self, watcher: Watcher, lo: int,
                         hi: int) -> list[tuple[int, Change]]:
        """(revision, change) for every retained record in the watched range with revision in
        [lo, hi], sorted by (revision, key): a scan, for revisions older than the log."""
        store = self.store
        keys = [watcher.key] if not watcher.range_end else list(
            store.keys_in(watcher.key, watcher.range_end))
        found: list[tuple[int, Change]] = []
        for key in keys:
            hist = store.history(key)
            for i, rec in enumerate(hist):
                if lo <= rec[MOD] <= hi:
                    prev = hist[i - 1] if i and hist[i - 1][VERSION] else None
                    found.append((rec[MOD], (key, rec, prev)))
        found.sort(key=lambda item: (item[0], item[1][0]))
        return found

    def _index(self, watcher: Watcher) -> None:
        if watcher.range_end:
            self._ranged.add(watcher.id)
        else:
            self._by_key.setdefault(watcher.key, set()).add(watcher.id)

    def _unindex(self, watcher: Watcher) -> None:
        self._ranged.discard(watcher.id)
        ids = self._by_key.get(watcher.key)
        if ids is not None:
            ids.discard(watcher.id)
            if not ids:
                del self._by_key[watcher.key]

    def _cancel(self, watcher: Watcher, resp: WatchResponse) -> None:
        watcher.canceled = True
        watcher.synced = True  # nothing more to catch up
        self._unindex(watcher)
        watcher.buffer.append(resp)

    def _cancel_compacted(self, watcher: Watcher) -> None:
        compact = self.store.compact_revision
        self._cancel(watcher, WatchResponse(
            watcher.id, self.store.revision, canceled=True, compact_revision=compact,
            cancel_reason="etcdserver: mvcc: required revision has been compacted"))

    def _get(self, watch_id: int) -> Watcher:
        watcher = self._watchers.get(watch_id)
        if watcher is None:
            raise WatchNotFound()
        return watcher

    def _pick_id(self) -> int:
        while self._next_id in self._watchers:
            self._next_id += 1
        self._next_id += 1
        return self._next_id - 1


def _event(change: Change, with_prev: bool, cache: dict[tuple[bytes, bool], Event]) -> Event:
    key, rec, prev = change
    hit = cache.get((key, with_prev))
    if hit is not None:
        return hit
    if rec[VERSION]:
        event = Event(EventType.PUT, to_kv(key, rec),
                      to_kv(key, prev) if with_prev and prev is not None else None)
    else:
        event = Event(EventType.DELETE, KeyValue(key, mod_revision=rec[MOD]),
                      to_kv(key, prev) if with_prev and prev is not None else None)
    cache[(key, with_prev)] = event
    return event


def _size(events: tuple[Event, ...] | list[Event]) -> int:
    total = 0
    for ev in events:
        total += _EVENT_OVERHEAD_BYTES + len(ev.kv.key) + len(ev.kv.value)
        if ev.prev_kv is not None:
            total += len(ev.prev_kv.key) + len(ev.prev_kv.value)
    return total


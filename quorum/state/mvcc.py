"""The multi-version key index: per-key revision histories, point-in-time reads, compaction.

Representation (chosen for memory, see docs/state.md): ``_hist`` maps each key to its
*entry*: the key's only record, or a list of its records, oldest first, when it has several.
A record is a plain tuple::

    (mod_revision, create_revision, version, value, lease)     version 0 = tombstone (deleted)

Most keys have one record once history is compacted, and a bare tuple of atomic values costs
no list (64 bytes) and is not tracked by the cyclic garbage collector.

Invariants:
- a key has at most one record per revision, and records are in strictly increasing
  ``mod_revision`` order (the txn layer forbids writing one key twice in a revision);
- entries only grow: a second record turns the tuple into a NEW list, lists are append-only,
  and compaction builds a NEW entry instead of editing one in place, so a snapshot view
  holding a shallow copy of the map stays a valid point-in-time image;
- ``_keys`` plus ``_new_keys`` is exactly the key set of ``_hist`` (new keys are merged into the
  sorted index lazily, in bulk, before any ordered scan; a put of a new key is O(1));
- ``_multi`` holds every key whose history has more than one record or ends in a tombstone,
  i.e. exactly the keys compaction may change, so compaction costs O(history), not O(keys).

This module knows nothing of requests, leases or watches; ``quorum.state.kv`` builds on it.
"""

from __future__ import annotations

import zlib
from bisect import bisect_right
from collections.abc import Iterator
from operator import itemgetter, xor
from typing import Final

from sortedcontainers import SortedList  # type: ignore[import-untyped]

from quorum.errors import FutureRevision, RevisionCompacted

Record = tuple[int, int, int, bytes, int]
MOD: Final = 0
CREATE: Final = 1
VERSION: Final = 2
VALUE: Final = 3
LEASE: Final = 4
_MASK = (1 << 64) - 1
mod_of = itemgetter(0)


_K_CRC, _K_MOD, _K_CREATE, _K_VERSION, _K_LEASE = (
    0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0x85EBCA77C2B2AE63, 0x27D4EB2F165667C5)


def record_digest(key: bytes, rec: Record) -> int:
    """A 64-bit digest of one record; the store's running digest is their sum mod 2**64, so it
    depends on the set of records only (not on the order they were written or compacted).
    Revisions are mixed with the key/value crc by xor, so moving a revision between records
    changes the sum. :func:`digest_columns` computes the same sum over many records."""
    crc = zlib.crc32(rec[VALUE], zlib.crc32(key))
    return (crc * _K_CRC + (crc ^ rec[MOD]) * _K_MOD + (crc ^ rec[CREATE]) * _K_CREATE
            + rec[VERSION] * _K_VERSION + rec[LEASE] * _K_LEASE) & _MASK


def digest_columns(keys: list[bytes], mods: list[int], creates: list[int], versions: list[int],
                   values: list[bytes], leases: list[int]) -> int:
    """Sum of :func:`record_digest` over records given column-wise (``keys[i]`` is the key of
    record i), computed with C-level loops (snapshot restore)."""
    crcs: list[int] = list(map(zlib.crc32, values, map(zlib.crc32, keys)))
    mixed_mods: int = sum(map(xor, crcs, mods))
    mixed_creates: int = sum(map(xor, crcs, creates))
    total = (sum(crcs) * _K_CRC + mixed_mods * _K_MOD
             + mixed_creates * _K_CREATE + sum(versions) * _K_VERSION
             + sum(leases) * _K_LEASE)
    return total & _MASK


Entry = Record | list[Record]


def records_of(entry: Entry) -> list[Record]:
    """The records of an entry as a list (a new one for a single record). Do not modify."""
    return [entry] if isinstance(entry, tuple) else entry


def last_of(entry: Entry) -> Record:
    return entry if isinstance(entry, tuple) else entry[-1]


def record_at(entry: Entry, revision: int) -> Record | None:
    """The record visible at ``revision`` (the newest with mod_revision <= revision)."""
    if isinstance(entry, tuple):
        return entry if entry[MOD] <= revision else None
    hist = entry
    last = hist[-1]
    if last[MOD] <= revision:
        return last
    i = bisect_right(hist, revision, key=mod_of)
    return hist[i - 1] if i else None


class MVCCStore:
    """Revisioned key histories. Single-threaded; callers serialize access."""

    __slots__ = (
        "_digest",
        "_hist",
        "_keys",
        "_log_head",
        "_log_keys",
        "_log_revs",
        "_multi",
        "_new_keys",
        "_written",
        "compact_revision",
        "log_from",
        "revision",
    )

    def __init__(self) -> None:
        self._hist: dict[bytes, Entry] = {}
        self._keys: SortedList = SortedList()
        self._new_keys: list[bytes] = []
        self._multi: set[bytes] = set()
        self.revision = 0  # Invariant: never decreases
        self.compact_revision = 0  # Invariant: 0 <= compact_revision <= revision
        self._digest = 0
        # The revision log: which keys each write revision touched, so watch replay costs
        # O(revisions replayed) rather than O(keys in the watched range). Entries from
        # _log_head on are live. Invariant: every write revision >= max(log_from,
        # compact_revision) is in the log (a restored store starts it at its revision + 1).
        self._log_revs: list[int] = []
        self._log_keys: list[bytes | tuple[bytes, ...]] = []
        self._log_head = 0
        self.log_from = 1
        self._written: list[bytes] = []  # keys written at the revision being built

    # --- writes (the caller picks the revision: current + 1 for a write txn) -----------------

    def write(self, key: bytes, rec: Record) -> None:
        """Append ``rec`` to ``key``'s history. The caller guarantees rec[MOD] is above every
        existing record of the key and that ``revision`` is advanced with :meth:`commit`."""
        self._written.append(key)
        entry = self._hist.get(key)
        if entry is None:
            self._hist[key] = rec
            self._new_keys.append(key)
        elif isinstance(entry, tuple):
            self._hist[key] = [entry, rec]
            self._multi.add(key)
        else:
            entry.append(rec)
            self._multi.add(key)
        self._digest = (self._digest + record_digest(key, rec)) & _MASK

    def commit(self, revision: int) -> None:
        """Make ``revision`` (the one the writes used) the current revision."""
        written = self._written
        if written:
            self._log_revs.append(revision)
            self._log_keys.append(written[0] if len(written) == 1 else tuple(written))
            self._written = []
        self.revision = revision

    def logged_revisions(self, lo: int, hi: int) -> Iterator[tuple[int, tuple[bytes, ...]]]:
        """(revision, keys written) for every write revision in [lo, hi], ascending. The
        caller checks ``lo >= log_from`` (older revisions are not in the log)."""
        revs, keys = self._log_revs, self._log_keys
        i = bisect_right(revs, lo - 1, lo=self._log_head)
        while i < len(revs) and revs[i] <= hi:
            entry = keys[i]
            yield revs[i], (entry,) if isinstance(entry, bytes) else entry
            i += 1

    # --- reads --------------------------------------------------------------------------------

    def latest(self, key: bytes) -> Record | None:
        """The newest record of ``key`` if the key is live (None when absent or deleted)."""
        entry = self._hist.get(key)
        if entry is None:
            return None
        rec = entry if isinstance(entry, tuple) else entry[-1]
        return rec if rec[VERSION] else None

    def get(self, key: bytes, revision: int) -> Record | None:
        """The live record of ``key`` at ``revision`` (None when absent or deleted then)."""
        entry = self._hist.get(key)
        if entry is None:
            return None
        rec = record_at(entry, revision)
        return rec if rec is not None and rec[VERSION] else None

    def keys_in(self, key: bytes, range_end: bytes) -> Iterator[bytes]:
        """Every key with a history in [key, range_end), ascending (range_end b"\\0" = no end).
        Single-key ranges must be handled by the caller (this is for true ranges)."""
        self._flush_new_keys()
        if range_end == b"\0":
            return iter(self._keys.irange(key))
        return iter(self._keys.irange(key, range_end, inclusive=(True, False)))

    def live_in(self, key: bytes, range_end: bytes, revision: int) -> Iterator[tuple[bytes, Record]]:
        """(key, record) for every key live at ``revision`` in the range, ascending."""
        if not range_end:
            single = self.get(key, revision)
            if single is not None:
                yield key, single
            return
        hist_of = self._hist
        current = revision >= self.revision
        for k in self.keys_in(key, range_end):
            entry = hist_of[k]
            rec: Record | None
            if isinstance(entry, tuple):
                rec = entry if current or entry[MOD] <= revision else None
            else:
                rec = entry[-1] if current else record_at(entry, revision)
            if rec is not None and rec[VERSION]:
                yield k, rec

    def history(self, key: bytes) -> list[Record]:
        """The retained records of ``key`` (oldest first); empty if none. Do not modify."""
        entry = self._hist.get(key)
        return [] if entry is None else records_of(entry)

    def check_revision(self, revision: int) -> None:
        """Raise unless ``revision`` (> 0) can be read: RevisionCompacted below the compact
        revision, FutureRevision above the current one."""
        if revision > self.revision:
            raise FutureRevision(self.revision)
        if revision < self.compact_revision:
            raise RevisionCompacted(self.compact_revision)

    def key_count(self) -> int:
        """Number of keys with any retained record (live or tombstone)."""
        return len(self._hist)

    @property
    def digest(self) -> int:
        """Running 64-bit digest of every retained record (cheap; for replica invariants)."""
        return self._digest

    # --- compaction ---------------------------------------------------------------------------

    def compact(self, revision: int) -> int:
        """Drop history below ``revision``: per key keep the records above it plus the newest
        one at or below it unless that one is a tombstone below ``revision`` (etcd's rule, so
        every read at a revision >= ``revision`` still answers the same). Returns records removed. The caller
        has validated ``compact_revision < revision <= self.revision``."""
        self.compact_revision = revision
        self._flush_new_keys()
        removed = 0
        for key in sorted(self._multi):
            removed += self._compact_key(key, revision)
        self._multi = set(self._multi)  # a set's table never shrinks on discard: right-size it
        self._log_head = bisect_right(self._log_revs, revision - 1, lo=self._log_head)
        if self._log_head > 1024 and self._log_head * 2 > len(self._log_revs):
            del self._log_revs[: self._log_head]
            del self._log_keys[: self._log_head]
            self._log_head = 0
        return removed

    def _compact_key(self, key: bytes, revision: int) -> int:
        hist = records_of(self._hist[key])
        i = bisect_right(hist, revision, key=mod_of)  # hist[:i] are <= revision
        # A tombstone exactly AT the compact revision is kept too (until the next compaction):
        # history at and above the compact revision then stays complete for watch replay.
        keep_from = i - 1 if i and (hist[i - 1][VERSION] or hist[i - 1][MOD] == revision) else i
        if keep_from <= 0:
            return 0
        for rec in hist[:keep_from]:
            self._digest = (self._digest - record_digest(key, rec)) & _MASK
        kept = hist[keep_from:]  # a new entry: the old one stays intact for snapshot views
        if len(kept) == 1:
            self._hist[key] = kept[0]
            if kept[0][VERSION]:
                self._multi.discard(key)
        elif kept:
            self._hist[key] = kept
        else:
            del self._hist[key]
            self._keys.remove(key)
            self._multi.discard(key)
        return keep_from

    # --- hashing ------------------------------------------------------------------------------

    def hash_kv(self, revision: int = 0) -> tuple[int, int, int]:
        """(crc32, compact_revision, revision) over every retained record with mod_revision <=
        ``revision`` in key order (etcd's HashKV role: equal on replicas at equal revisions).
        ``revision`` 0 = current. Raises RevisionCompacted / FutureRevision."""
        rev = self.revision if revision <= 0 else revision
        self.check_revision(rev)
        crc = zlib.crc32(b"quorum-kv")
        for key in self.keys_in(b"", b"\0"):
            for rec in records_of(self._hist[key]):
                if rec[MOD] > rev:
                    break
                crc = zlib.crc32(key, crc)
                crc = zlib.crc32(b"%d:%d:%d:%d" % (rec[MOD], rec[CREATE], rec[VERSION], rec[LEASE]), crc)
                crc = zlib.crc32(rec[VALUE], crc)
        return crc, self.compact_revision, rev

    # --- snapshot support -----------------------------------------------------------------------

    def view(self) -> tuple[list[bytes], dict[bytes, Entry]]:
        """A point-in-time view: the sorted key list and a shallow copy of the history map. Valid
        forever because entries only grow (records above the view's revision are filtered by
        the reader) and compaction replaces entries instead of editing them."""
        self._flush_new_keys()
        return list(self._keys), self._hist.copy()

    def load(self, keys: list[bytes], entries: list[Entry], multi: set[bytes],
             digest: int, revision: int, compact: int) -> None:
        """Bulk-load a restored image into an empty store: ``keys`` ascending and unique,
        ``entries[i]`` the entry of ``keys[i]`` (a record, or a list of 2+ records), ``multi``
        the keys with more than one record or a tombstone, ``digest`` their record digests'
        sum."""
        self._hist = dict(zip(keys, entries))
        self._keys = SortedList(keys)
        self._multi = multi
        self._digest = digest & _MASK
        self.revision = revision
        self.compact_revision = compact
        self.log_from = revision + 1  # the image has no revision log: replay scans below this

    def _flush_new_keys(self) -> None:
        if self._new_keys:
            self._keys.update(self._new_keys)
            self._new_keys.clear()

"""The multi-version key index: per-key revision histories, point-in-time reads, compaction.

Representation (chosen for memory, see docs/state.md). A *record* is stored packed, as the
value bytes followed by a fixed 36-byte trailer::

    value | mod_revision u64 | create_revision u64 | lease u64 | version u64 | len(value) u32

(big-endian; version 0 = tombstone). The records of a key, oldest first, are concatenated into
*runs*: ``_hist`` maps each key to its *entry*, one run (a ``bytes``), or a list of runs when
the history outgrows :data:`RUN_BYTES`. A key with one version is a single object of
``len(value) + 36`` bytes (no tuple, no int objects, not tracked by the cyclic GC), and an
overwritten key before compaction is still a single object. A trailer at the END of each
record makes the newest record readable in O(1) and lets a run be walked from its end.
Records are decoded into :data:`Record` tuples only when read (range, compare, watch, hash).

Invariants:
- a key has at most one record per revision, and records are in strictly increasing
  ``mod_revision`` order (the txn layer forbids writing one key twice in a revision);
- entries only grow: a write makes a NEW run object (runs are immutable bytes); a list entry
  only gets runs appended or its last run replaced by a longer run starting with the same
  records; compaction builds a NEW entry instead of editing one in place. So a snapshot view
  holding a shallow copy of the map stays a valid point-in-time image (readers skip records
  above the view's revision);
- a run stops growing by concatenation once it is RUN_BYTES long, so a write copies at most
  about RUN_BYTES plus its own record (no quadratic cost on a hot key's long history);
- ``_keys`` plus ``_new_keys`` is exactly the key set of ``_hist`` (new keys are merged into the
  sorted index lazily, in bulk, before any ordered scan; a put of a new key is O(1));
- ``_multi`` maps every key whose history has more than one record or ends in a tombstone,
  i.e. exactly the keys compaction may change (so compaction costs O(history), not O(keys)),
  to the one key object the revision log keeps for it.

This module knows nothing of requests, leases or watches; ``quorum.state.kv`` builds on it.
"""

from __future__ import annotations

import itertools
import struct
import zlib
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Sequence
from typing import Final

from sortedcontainers import SortedList  # type: ignore[import-untyped]

from quorum.errors import FutureRevision, RevisionCompacted

Record = tuple[int, int, int, bytes, int]  # decoded: (mod, create, version, value, lease)
MOD: Final = 0
CREATE: Final = 1
VERSION: Final = 2
VALUE: Final = 3
LEASE: Final = 4
_MASK = (1 << 64) - 1

TRAILER: Final = struct.Struct(">QQQQI")  # mod, create, lease, version, len(value)
TRAILER_SIZE: Final = TRAILER.size  # 36
_MOD_FIELD: Final = struct.Struct(">Q")  # the trailer's first field
_SIZE_FIELD: Final = struct.Struct(">I")  # the trailer's last field
RUN_BYTES: Final = 1024  # a run grows by concatenation while shorter than this
MAX_FIELD: Final = _MASK  # revisions, versions and lease ids must fit in 64 bits unsigned

Entry = bytes | list[bytes]


def pack(rec: Record) -> bytes:
    """The packed form of a decoded record (one allocation besides the trailer's)."""
    mod, create, version, value, lease = rec
    return value + TRAILER.pack(mod, create, lease, version, len(value))


def record_digest(key: bytes, packed: bytes | memoryview) -> int:
    """Digest of one packed record of ``key``. The store's running digest is the sum of its
    records' digests mod 2**64, so it depends on the set of records only (not on the order
    they were written or compacted); every field is in the packed bytes, so moving a revision
    between records changes the sum."""
    return zlib.crc32(packed, zlib.crc32(key))


def _decode(run: bytes, end: int) -> Record:
    """The record of ``run`` that ends at offset ``end``."""
    mod, create, lease, version, size = TRAILER.unpack_from(run, end - TRAILER_SIZE)
    stop = end - TRAILER_SIZE
    return mod, create, version, run[stop - size:stop], lease


def record_ends(run: bytes) -> list[int]:
    """End offsets of the records of ``run``, oldest first. Raises ValueError when the run is
    not a sequence of whole records (damaged input; the store never builds one)."""
    ends: list[int] = []
    end = len(run)
    while end > 0:
        if end < TRAILER_SIZE:
            raise ValueError("run ends inside a record trailer")
        ends.append(end)
        end -= TRAILER_SIZE + _SIZE_FIELD.unpack_from(run, end - 4)[0]
    if end < 0 or not ends:
        raise ValueError("run is not a sequence of whole records")
    ends.reverse()
    return ends


def mod_at(run: bytes, end: int) -> int:
    """mod_revision of the record of ``run`` ending at ``end``."""
    return int(_MOD_FIELD.unpack_from(run, end - TRAILER_SIZE)[0])


def _last_mod(run: bytes) -> int:
    return int(_MOD_FIELD.unpack_from(run, len(run) - TRAILER_SIZE)[0])


def runs_of(entry: Entry) -> list[bytes]:
    return [entry] if isinstance(entry, bytes) else entry


def records_of(entry: Entry) -> list[Record]:
    """The decoded records of an entry, oldest first (a new list)."""
    return [_decode(run, end) for run in runs_of(entry) for end in record_ends(run)]


def record_at(entry: Entry, revision: int) -> Record | None:
    """The record visible at ``revision`` (the newest with mod_revision <= revision)."""
    if isinstance(entry, bytes):
        return _at_in_run(entry, revision)
    i = bisect_right(entry, revision, key=_last_mod)  # entry[:i] end at or below revision
    if i < len(entry):
        rec = _at_in_run(entry[i], revision)
        if rec is not None:
            return rec
    return _decode(entry[i - 1], len(entry[i - 1])) if i else None


def _at_in_run(run: bytes, revision: int) -> Record | None:
    end = len(run)
    while end > 0:
        mod, create, lease, version, size = TRAILER.unpack_from(run, end - TRAILER_SIZE)
        stop = end - TRAILER_SIZE
        if mod <= revision:
            return mod, create, version, run[stop - size:stop], lease
        end = stop - size
    return None


def join_records(pieces: Sequence[memoryview | bytes]) -> Entry:
    """An entry holding the given packed records (oldest first, at least one), cut into runs
    the way :meth:`MVCCStore.write` grows them."""
    runs: list[bytes] = []
    current: list[memoryview | bytes] = []
    size = 0
    for piece in pieces:
        if size >= RUN_BYTES:
            runs.append(b"".join(current))
            current, size = [], 0
        current.append(piece)
        size += len(piece)
    runs.append(b"".join(current))
    return runs[0] if len(runs) == 1 else runs


def entry_of(records: list[Record]) -> Entry:
    """The entry for decoded records (oldest first, at least one)."""
    return join_records([pack(rec) for rec in records])


def prefix_upto(run: bytes, revision: int) -> bytes:
    """The records of ``run`` with mod_revision <= ``revision`` (a prefix of the run)."""
    end = len(run)
    while end > 0 and mod_at(run, end) > revision:
        end -= TRAILER_SIZE + _SIZE_FIELD.unpack_from(run, end - 4)[0]
    return run if end == len(run) else run[:end]


def _kept_from(records: list[Record], compact: int) -> int:
    """Index of the first of ``records`` (oldest first) that a compaction at ``compact``
    keeps: the newest record at or below it stays unless it is a tombstone below it (the
    rule of ``MVCCStore._compact_key``)."""
    i = 0
    while i < len(records) and records[i][MOD] <= compact:
        i += 1
    if i and (records[i - 1][VERSION] or records[i - 1][MOD] == compact):
        return i - 1
    return i


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
        self._keys = SortedList()
        self._new_keys: list[bytes] = []
        self._multi: dict[bytes, bytes] = {}  # key -> the key object the log shares
        # An empty store is at revision 1, as etcd's is: the first write gets 2. etcd's
        # Election.Campaign waits for the keys created below its own key's revision minus
        # one, and takes 0 as "no bound": with a first write at revision 1 the first
        # campaign of a fresh cluster would wait for its own key.
        # Invariant: never decreases. (A store restored from a snapshot keeps the snapshot's
        # revision, so clusters bootstrapped when stores started at 0 keep their numbering.)
        self.revision = 1
        self.compact_revision = 0  # Invariant: 0 <= compact_revision <= revision
        self._digest = 0
        # The revision log: which keys each write revision touched, so watch replay costs
        # O(revisions replayed) rather than O(keys in the watched range). Entries from
        # _log_head on are live. Invariant: every write revision >= max(log_from,
        # compact_revision) that has a retained record is in the log (a restored store
        # starts it at its revision + 1, see load).
        # Revisions are kept in a machine-int array: no int object per write.
        self._log_revs: array[int] = array("q")
        self._log_keys: list[bytes | tuple[bytes, ...]] = []
        self._log_head = 0
        # Revision 1 has no writes (the first is 2), so the log is complete from 1: a watch
        # from revision 1, the usual "everything", replays from the log, not by a scan.
        self.log_from = 1
        self._written: list[bytes] = []  # keys written at the revision being built

    # --- writes (the caller picks the revision: current + 1 for a write txn) -----------------

    def write(self, key: bytes, rec: Record) -> None:
        """Append ``rec`` to ``key``'s history. The caller guarantees rec[MOD] is above every
        existing record of the key and that ``revision`` is advanced with :meth:`commit`."""
        packed = pack(rec)
        entry = self._hist.get(key)
        if entry is None:
            self._hist[key] = packed
            self._new_keys.append(key)
        else:
            # One key object per key with history, shared with the revision log: the
            # overwrites of a hot key do not each keep their request's copy of the key alive
            # until compaction.
            key = self._multi.setdefault(key, key)
            if isinstance(entry, bytes):
                self._hist[key] = entry + packed if len(entry) < RUN_BYTES else [entry, packed]
            else:
                last = entry[-1]
                if len(last) < RUN_BYTES:
                    entry[-1] = last + packed  # same records plus one: views stay valid
                else:
                    entry.append(packed)
        self._written.append(key)
        self._digest = (self._digest + record_digest(key, packed)) & _MASK

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
        run = entry if isinstance(entry, bytes) else entry[-1]
        end = len(run) - TRAILER_SIZE
        mod, create, lease, version, size = TRAILER.unpack_from(run, end)
        return (mod, create, version, run[end - size:end], lease) if version else None

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
        unpack = TRAILER.unpack_from
        for k in self.keys_in(key, range_end):
            entry = hist_of[k]
            if current:  # the newest record, decoded inline (the hot path of a range)
                run = entry if isinstance(entry, bytes) else entry[-1]
                end = len(run) - TRAILER_SIZE
                mod, create, lease, version, size = unpack(run, end)
                if version:
                    yield k, (mod, create, version, run[end - size:end], lease)
                continue
            rec = record_at(entry, revision)
            if rec is not None and rec[VERSION]:
                yield k, rec

    def written_at(self, key: bytes, revision: int) -> tuple[Record, Record | None] | None:
        """(the record ``key`` got at ``revision``, the record before it) or None when the key
        has no record at ``revision``. Cost: a bisect over the runs and a walk of one run (a
        watch replays revision by revision; decoding a long history each time would not do)."""
        entry = self._hist.get(key)
        if entry is None:
            return None
        runs = runs_of(entry)
        i = bisect_left(runs, revision, key=_last_mod)  # the first run ending at or above it
        if i == len(runs):
            return None
        run = runs[i]
        ends = record_ends(run)
        j = bisect_left(ends, revision, key=lambda end: mod_at(run, end))
        if j == len(ends) or mod_at(run, ends[j]) != revision:
            return None
        if j:
            prev: Record | None = _decode(run, ends[j - 1])
        else:
            prev = _decode(runs[i - 1], len(runs[i - 1])) if i else None
        return _decode(run, ends[j]), prev

    def history(self, key: bytes) -> list[Record]:
        """The retained records of ``key`` (oldest first, decoded); empty if none."""
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
        every read at a revision >= ``revision`` still answers the same). Returns records
        removed. The caller has validated ``compact_revision < revision <= self.revision``."""
        self.begin_compaction(revision)
        removed, _ = self.compact_keys(revision, b"", 0)
        return removed

    def begin_compaction(self, revision: int) -> None:
        """Make a compaction at ``revision`` take effect: reads and watch replays below it are
        refused from now on. The records it drops stay until :meth:`compact_keys` reaches
        their keys (reads at or above ``revision`` answer the same either way)."""
        self.compact_revision = revision
        self._log_head = bisect_right(self._log_revs, revision - 1, lo=self._log_head)
        if self._log_head > 1024 and self._log_head * 2 > len(self._log_revs):
            del self._log_revs[: self._log_head]
            del self._log_keys[: self._log_head]
            self._log_head = 0

    def compact_keys(self, revision: int, start: bytes, limit: int) -> tuple[int, bytes]:
        """Drop the records of compaction ``revision`` (the current one) from the keys
        ``>= start``, examining at most ``limit`` keys (0 = all). Returns (records removed,
        the key to continue from or b"" when no key is left). Deterministic: the keys are
        taken in order from the sorted key set, which every replica holds alike."""
        self._flush_new_keys()
        multi = self._multi
        if limit:
            keys = self._keys.irange(start) if start else iter(self._keys)
            # materialized first: compacting a key may remove it from the sorted set
            batch = list(itertools.islice(keys, limit + 1))
            following = batch.pop() if len(batch) > limit else b""
            batch = [key for key in batch if key in multi]
        else:  # every key: only those with history can lose records
            batch, following = sorted(k for k in multi if k >= start), b""
        removed = 0
        for key in batch:
            removed += self._compact_key(key, revision)
        if not following:
            self._multi = dict(self._multi)  # a table never shrinks on deletion: right-size it
        return removed, following

    def _compact_key(self, key: bytes, revision: int) -> int:
        entry = self._hist[key]
        if isinstance(entry, bytes):
            return self._compact_run(key, entry, revision)
        # A list of runs (a long history): (run, start, end) of every record, oldest first,
        # without decoding values.
        pieces: list[tuple[bytes, int, int]] = []
        for run in entry:
            start = 0
            for end in record_ends(run):
                pieces.append((run, start, end))
                start = end
        mods = [mod_at(run, end) for run, _, end in pieces]
        i = bisect_right(mods, revision)  # pieces[:i] are <= revision
        # A tombstone exactly AT the compact revision is kept too (until the next compaction):
        # history at and above the compact revision then stays complete for watch replay.
        at_or_below = pieces[i - 1] if i else None
        keep_from = i - 1 if at_or_below is not None and (
            _version_at(at_or_below[0], at_or_below[2]) or mods[i - 1] == revision) else i
        if keep_from <= 0:
            return 0
        key_crc = zlib.crc32(key)
        for run, start, end in pieces[:keep_from]:
            self._digest = (self._digest - zlib.crc32(memoryview(run)[start:end], key_crc)) & _MASK
        kept = pieces[keep_from:]
        if not kept:
            del self._hist[key]
            self._keys.remove(key)
            self._multi.pop(key, None)
            return keep_from
        # a new entry: the old one stays intact for snapshot views
        self._hist[key] = join_records([memoryview(run)[start:end] for run, start, end in kept])
        if len(kept) == 1 and _version_at(kept[0][0], kept[0][2]):
            self._multi.pop(key, None)
        return keep_from

    def _compact_run(self, key: bytes, run: bytes, revision: int) -> int:
        """:meth:`_compact_key` for a history held in one run (the common case), in one walk
        from the run's end: past the records above ``revision``, to the newest one at or
        below it, then over the dropped prefix to take its records out of the digest."""
        unpack = TRAILER.unpack_from
        end = len(run)
        while True:
            mod, _, _, version, size = unpack(run, end - TRAILER_SIZE)
            start = end - TRAILER_SIZE - size
            if mod <= revision:
                break  # [start, end) is the newest record at or below revision
            if not start:
                return 0  # every record is above revision
            end = start
        keep = start if version or mod == revision else end  # same rule as _compact_key
        if not keep:
            return 0
        key_crc, view, digest, removed, stop = zlib.crc32(key), memoryview(run), self._digest, 0, keep
        while stop:
            begin = stop - TRAILER_SIZE - _SIZE_FIELD.unpack_from(run, stop - 4)[0]
            digest -= zlib.crc32(view[begin:stop], key_crc)
            removed += 1
            stop = begin
        self._digest = digest & _MASK
        if keep == len(run):
            del self._hist[key]
            self._keys.remove(key)
            self._multi.pop(key, None)
            return removed
        self._hist[key] = run[keep:]  # a new entry: the old one stays intact for snapshot views
        if keep == start and end == len(run) and version:
            self._multi.pop(key, None)  # one live record left
        return removed

    # --- hashing ------------------------------------------------------------------------------

    def hash_kv(self, revision: int = 0) -> tuple[int, int, int]:
        """(crc32, compact_revision, revision) over every record with mod_revision <=
        ``revision`` that the compaction keeps, in key order (etcd's HashKV role: equal on
        replicas at equal revisions). Records a stepped compaction has not yet dropped are
        skipped, so the hash does not depend on how far it got. ``revision`` 0 = current.
        Raises RevisionCompacted / FutureRevision."""
        rev = self.revision if revision <= 0 else revision
        self.check_revision(rev)
        compact = self.compact_revision
        crc = zlib.crc32(b"quorum-kv")
        for key in self.keys_in(b"", b"\0"):
            records = records_of(self._hist[key])
            for rec in records[_kept_from(records, compact):]:
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
        ``entries[i]`` the entry of ``keys[i]``, ``multi`` the keys with more than one record
        or a tombstone, ``digest`` their record digests' sum."""
        self._hist = dict(zip(keys, entries))
        self._keys = SortedList(keys)
        self._multi = dict(zip(multi, multi))
        self._digest = digest & _MASK
        self.revision = revision
        self.compact_revision = compact
        # The image has no revision log: replay scans its histories below revision + 1. An
        # image without records (a new cluster's bootstrap snapshot) has nothing to scan, so
        # the log, empty up to here, is complete from 1 on, as in a fresh store.
        self.log_from = revision + 1 if keys else 1

    def _flush_new_keys(self) -> None:
        if self._new_keys:
            self._keys.update(self._new_keys)
            self._new_keys.clear()


def _version_at(run: bytes, end: int) -> int:
    """version of the record of ``run`` ending at ``end`` (0 = tombstone)."""
    return int(TRAILER.unpack_from(run, end - TRAILER_SIZE)[3])

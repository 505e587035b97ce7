"""Streamed, versioned snapshots of the replicated state.

Stream = a sequence of frames; a chunk handed out by :func:`stream` is one frame, but
:func:`load` accepts the bytes cut anywhere (a transport may re-chunk them). A frame is::

    u32 big-endian payload length | u32 big-endian crc32(payload) | payload

and a payload is one kind byte (H, K or T) followed by msgpack.

Frames, in order:

1. header: :class:`SnapshotHeader` (format version, applied index, revision, compact
   revision, key count, leases, sessions);
2. zero or more key frames, column-wise: ``[keys, counts, mods, creates, versions, values,
   leases]`` -- keys ascending, ``counts[i]`` records for ``keys[i]`` (an empty ``counts`` means
   one each), then the five record fields of all records (oldest first per key) as parallel
   arrays;
3. trailer: :class:`SnapshotTrailer` (key count and the store's record digest again), so a
   truncated or reordered stream is detected.

Point in time: :func:`capture` copies pointers only (sorted key list, a shallow copy of the
history map, lease and session tuples). History entries only grow and compaction
replaces them instead of editing them, so the captured lists keep describing the state at
the captured revision; records above it are filtered out while streaming.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Iterator
from operator import itemgetter
from typing import Protocol

import msgspec

from quorum.errors import CorruptionError
from quorum.state.commands import ErrorResponse, Response
from quorum.state.config import StateConfig
from quorum.state.lease import Lease, LeaseTable
from quorum.state.mvcc import (
    LEASE,
    MOD,
    VERSION,
    Entry,
    MVCCStore,
    Record,
    digest_columns,
    last_of,
    mod_of,
    records_of,
)
from quorum.state.sessions import Session, SessionTable

SNAPSHOT_VERSION = 1
_FRAME = struct.Struct(">II")
_HEADER_KIND, _KEYS_KIND, _TRAILER_KIND = b"H", b"K", b"T"  # first payload byte
_FIELDS = [itemgetter(i) for i in range(5)]  # mod, create, version, value, lease
_ENCODER = msgspec.msgpack.Encoder()


class SnapshotLease(msgspec.Struct, frozen=True, array_like=True):
    id: int
    ttl: int
    remaining_ttl: int


class SnapshotSession(msgspec.Struct, frozen=True, array_like=True):
    id: int
    last_seq: int
    last_index: int
    outcome: Response | ErrorResponse | None = None


class SnapshotHeader(msgspec.Struct, frozen=True, array_like=True):
    version: int
    applied_index: int
    revision: int
    compact_revision: int
    key_count: int
    next_lease_id: int
    leases: tuple[SnapshotLease, ...]
    next_session_id: int
    sessions: tuple[SnapshotSession, ...]  # least recently used first


class SnapshotTrailer(msgspec.Struct, frozen=True, array_like=True):
    key_count: int
    digest: int


class Capture(msgspec.Struct):
    """A point-in-time view of a StateMachine; cheap to take, streamed later."""

    header: SnapshotHeader
    keys: list[bytes]
    hist: dict[bytes, Entry]
    digest: int
    chunk_keys: int


class _Machine(Protocol):  # what this module reads of a StateMachine (avoids an import cycle)
    store: MVCCStore
    leases: LeaseTable
    sessions: SessionTable
    applied_index: int
    config: StateConfig


def capture(machine: _Machine) -> Capture:
    store = machine.store
    keys, hist = store.view()
    leases = tuple(SnapshotLease(lease.id, lease.ttl, lease.remaining_ttl)
                   for _, lease in sorted(machine.leases.leases.items()))
    sessions = tuple(SnapshotSession(s.id, s.last_seq, s.last_index, s.outcome)
                     for s in machine.sessions.sessions.values())
    header = SnapshotHeader(
        SNAPSHOT_VERSION, machine.applied_index, store.revision, store.compact_revision,
        len(keys), machine.leases.next_id, leases, machine.sessions.next_id, sessions)
    return Capture(header, keys, hist, store.digest, machine.config.snapshot_chunk_keys)


def stream(cap: Capture) -> Iterator[bytes]:
    """Yield the frames of a captured view."""
    yield _frame(_HEADER_KIND, _ENCODER.encode(cap.header))
    keys = cap.keys
    for start in range(0, len(keys), cap.chunk_keys):
        batch = keys[start:start + cap.chunk_keys]
        yield _frame(_KEYS_KIND, _ENCODER.encode(_columns(batch, cap)))
    yield _frame(_TRAILER_KIND, _ENCODER.encode(SnapshotTrailer(len(keys), cap.digest)))


def _columns(batch: list[bytes], cap: Capture) -> tuple[object, ...]:
    """One key frame, column-wise: keys, records per key (empty when all are 1), then the
    five record fields as parallel arrays (fast to encode and decode, no per-record maps)."""
    rev = cap.header.revision
    entries = list(map(cap.hist.__getitem__, batch))
    counts: list[int] = []
    recs: list[Record] = []
    if list not in set(map(type, entries)) and max(map(mod_of, entries)) <= rev:
        recs = entries  # type: ignore[assignment]  # all bare records: one per key, all old
    else:
        for entry in entries:
            records = records_of(entry)
            if records[-1][MOD] > rev:  # written after the capture: not part of this image
                records = [r for r in records if r[MOD] <= rev]
            counts.append(len(records))
            recs.extend(records)
    # One C-level pass per field. (zip(*recs) would create an iterator object per record,
    # and that many container allocations set off the cyclic GC over the whole heap.)
    columns = [list(map(getter, recs)) for getter in _FIELDS]
    return (batch, counts, *columns)


def _frame(kind: bytes, body: bytes) -> bytes:
    payload = kind + body
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def _frames(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Reassemble frames from arbitrarily cut chunks; verify each checksum."""
    buf = bytearray()
    offset = 0  # stream offset of buf[0], for error messages
    for chunk in chunks:
        buf += chunk
        while len(buf) >= _FRAME.size:
            size, crc = _FRAME.unpack_from(buf)
            end = _FRAME.size + size
            if len(buf) < end:
                break
            payload = bytes(buf[_FRAME.size:end])
            if zlib.crc32(payload) != crc:
                raise CorruptionError("snapshot frame checksum mismatch", "<snapshot>", offset)
            yield payload
            del buf[:end]
            offset += end
    if buf:
        raise CorruptionError("snapshot ends inside a frame", "<snapshot>", offset)


_HEADER = msgspec.msgpack.Decoder(SnapshotHeader)
_TRAILER = msgspec.msgpack.Decoder(SnapshotTrailer)
_KEYS = msgspec.msgpack.Decoder(tuple[list[bytes], list[int], list[int], list[int], list[int],
                                      list[bytes], list[int]])


class _Image:
    """What the key frames add up to while a stream is read."""

    def __init__(self) -> None:
        self.keys: list[bytes] = []
        self.entries: list[Entry] = []
        self.multi: set[bytes] = set()
        self.digest = 0
        self.attached: list[tuple[int, bytes]] = []  # (lease, key) of live leased keys

    def add(self, columns: tuple[list[bytes], list[int], list[int], list[int], list[int],
                                 list[bytes], list[int]]) -> None:
        keys, counts, mods, creates, versions, values, leases = columns
        n = len(mods)
        if not n or any(len(col) != n for col in (creates, versions, values, leases)):
            raise CorruptionError("snapshot key frame has uneven columns")
        if len(counts if counts else mods) != len(keys) or (counts and sum(counts) != n):
            raise CorruptionError("snapshot key frame has inconsistent record counts")
        # share the int object when create == mod (a key's first version): memory, not meaning
        creates = [m if c == m else c for m, c in zip(mods, creates)]
        recs: list[Record] = list(zip(mods, creates, versions, values, leases))
        entries: list[Entry] = []
        if counts:
            rec_keys = [k for k, c in zip(keys, counts) for _ in range(c)]
            at = 0
            for key, count in zip(keys, counts):
                if count < 1:
                    raise CorruptionError("snapshot key without records")
                entries.append(recs[at] if count == 1 else recs[at:at + count])
                at += count
                if count > 1 or not recs[at - 1][VERSION]:
                    self.multi.add(key)
        else:
            rec_keys = keys
            entries = recs  # type: ignore[assignment]  # one record per key: the bare tuple
            if 0 in versions:
                self.multi.update(k for k, v in zip(keys, versions) if not v)
        self.digest += digest_columns(rec_keys, mods, creates, versions, values, leases)
        if any(leases):
            lasts = list(map(last_of, entries))
            self.attached += [(rec[LEASE], key) for key, rec in zip(keys, lasts)
                              if rec[LEASE] and rec[VERSION]]
        self.keys += keys
        self.entries += entries


def load(chunks: Iterable[bytes],
         config: StateConfig) -> tuple[MVCCStore, LeaseTable, SessionTable, int]:
    """Rebuild (store, leases, sessions, applied index) from a snapshot stream. Raises
    CorruptionError if the stream is damaged, truncated or of an unknown version."""
    header: SnapshotHeader | None = None
    trailer: SnapshotTrailer | None = None
    image = _Image()
    for payload in _frames(chunks):
        kind, body = payload[:1], memoryview(payload)[1:]
        if trailer is not None or (header is None) != (kind == _HEADER_KIND):
            raise CorruptionError(f"snapshot frame {kind!r} out of order", "<snapshot>", -1)
        try:
            if kind == _HEADER_KIND:
                header = _HEADER.decode(body)
                if header.version != SNAPSHOT_VERSION:
                    raise CorruptionError(f"unknown snapshot version {header.version}")
            elif kind == _KEYS_KIND:
                image.add(_KEYS.decode(body))
            elif kind == _TRAILER_KIND:
                trailer = _TRAILER.decode(body)
            else:
                raise CorruptionError(f"unknown snapshot frame kind {kind!r}")
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise CorruptionError(f"snapshot frame unreadable: {exc}") from None
    if header is None:
        raise CorruptionError("snapshot has no header", "<snapshot>", 0)
    return _build(header, image, trailer, config)


def _build(header: SnapshotHeader, image: _Image, trailer: SnapshotTrailer | None,
           config: StateConfig) -> tuple[MVCCStore, LeaseTable, SessionTable, int]:
    count = len(image.keys)
    if trailer is None or trailer.key_count != header.key_count or count != header.key_count:
        raise CorruptionError("snapshot is incomplete (trailer or keys missing)", "<snapshot>", -1)
    store = MVCCStore()
    store.load(image.keys, image.entries, image.multi, image.digest, header.revision,
               header.compact_revision)
    if store.key_count() != count:
        raise CorruptionError("snapshot repeats a key", "<snapshot>", -1)
    if store.digest != trailer.digest:
        raise CorruptionError("snapshot record digest mismatch", "<snapshot>", -1)
    leases = LeaseTable()
    leases.next_id = header.next_lease_id
    for sl in header.leases:
        leases.leases[sl.id] = Lease(sl.id, sl.ttl, sl.remaining_ttl)
    for lease_id, key in image.attached:  # Invariant: a lease's keys = live keys naming it
        lease = leases.leases.get(lease_id)
        if lease is None:
            raise CorruptionError("snapshot key names a missing lease", "<snapshot>", -1)
        lease.keys.add(key)
    sessions = SessionTable(config.max_sessions)
    sessions.next_id = header.next_session_id
    for ss in header.sessions:
        session = Session(ss.id, ss.last_index)
        session.last_seq = ss.last_seq
        session.outcome = ss.outcome
        sessions.sessions[ss.id] = session
    return store, leases, sessions, header.applied_index

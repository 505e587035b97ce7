"""Streamed, versioned snapshots of the replicated state.

Stream = a sequence of frames; a chunk handed out by :func:`stream` is one frame, but
:func:`load` accepts the bytes cut anywhere (a transport may re-chunk them). A frame is::

    u32 big-endian payload length | u32 big-endian crc32(payload) | payload

and a payload is one kind byte (H, K or T) followed by msgpack.

Frames, in order:

1. header: :class:`SnapshotHeader` (format version, applied index, revision, compact
   revision, key count, leases, sessions);
2. zero or more key frames ``[keys, histories]``: keys ascending, ``histories[i]`` the
   records of ``keys[i]`` (oldest first) in the store's packed form (see
   ``quorum.state.mvcc``: each record is its value followed by a 36-byte trailer), so writing
   copies the stored bytes as they are and restoring mostly keeps the decoded bytes objects
   as the new store's entries;
3. trailer: :class:`SnapshotTrailer` (key count and the store's record digest again), so a
   truncated or reordered stream is detected.

Versions: 2 is written. A version 1 stream (column-wise key frames ``[keys, counts, mods,
creates, versions, values, leases]``) is still read: its records are packed on restore.

Point in time: :func:`capture` copies pointers only (sorted key list, a shallow copy of the
history map, lease and session tuples). History entries only grow and compaction
replaces them instead of editing them, so the captured entries keep describing the state at
the captured revision; records above it are cut off while streaming.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Iterator
from itertools import pairwise, repeat
from operator import add, and_, ge, getitem, rshift, xor
from typing import Protocol

import msgspec

from quorum.errors import CorruptionError
from quorum.state.commands import ErrorResponse, Response
from quorum.state.config import StateConfig
from quorum.state.lease import Lease, LeaseTable
from quorum.state.mvcc import (
    MAX_FIELD,
    RUN_BYTES,
    TRAILER_SIZE,
    Entry,
    MVCCStore,
    Record,
    join_records,
    mod_at,
    pack,
    prefix_upto,
    record_digest,
    record_ends,
)
from quorum.state.sessions import Session, SessionTable

SNAPSHOT_VERSION = 2
_READABLE_VERSIONS = (1, 2)
_FRAME = struct.Struct(">II")
_HEADER_KIND, _KEYS_KIND, _TRAILER_KIND = b"H", b"K", b"T"  # first payload byte
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
        yield _frame(_KEYS_KIND, _ENCODER.encode((batch, _histories(batch, cap))))
    yield _frame(_TRAILER_KIND, _ENCODER.encode(SnapshotTrailer(len(keys), cap.digest)))


def _histories(batch: list[bytes], cap: Capture) -> list[bytes]:
    """The packed records of each key of a key frame, as of the captured revision. A ``bytes``
    entry of the view is immutable and was current at capture: it is sent as it is. A list
    entry may have grown since (its last run replaced by a longer one): it is joined and cut
    at the captured revision."""
    entries = list(map(cap.hist.__getitem__, batch))
    if list not in set(map(type, entries)):
        return entries  # type: ignore[return-value]  # all bytes
    rev = cap.header.revision
    return [e if isinstance(e, bytes) else prefix_upto(b"".join(e), rev) for e in entries]


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
_KEYS = msgspec.msgpack.Decoder(tuple[list[bytes], list[bytes]])
_KEYS_V1 = msgspec.msgpack.Decoder(tuple[list[bytes], list[int], list[int], list[int], list[int],
                                         list[bytes], list[int]])
_TAIL = slice(-20, None)  # lease u64 | version u64 | len(value) u32 of a run's last record
_U32, _U64 = (1 << 32) - 1, (1 << 64) - 1


class _Image:
    """What the key frames add up to while a stream is read."""

    def __init__(self) -> None:
        self.keys: list[bytes] = []
        self.entries: list[Entry] = []
        self.multi: set[bytes] = set()
        self.digest = 0
        self.attached: list[tuple[int, bytes]] = []  # (lease, key) of live leased keys
        self.digest_v1 = 0  # a version 1 stream's records under version 1's digest

    def add(self, keys: list[bytes], histories: list[bytes]) -> None:
        """Add one key frame. Most keys hold one live record: they are recognised, digested
        and checked with C-level passes over the frame (the last 20 bytes of a history hold
        the newest record's lease, version and value length; the history is that one record
        iff its length is the value length plus the trailer), and their bytes objects become
        the store's entries unchanged. Only the other keys are walked record by record."""
        if len(histories) != len(keys):
            raise CorruptionError("snapshot key frame has uneven columns")
        if not keys:
            return
        sizes = list(map(len, histories))
        if min(sizes) < TRAILER_SIZE:
            raise CorruptionError("snapshot key history shorter than a record")
        tails = list(map(int.from_bytes, map(getitem, histories, repeat(_TAIL))))
        # the length of each history's newest record: the whole history iff it has one record
        newest = list(map(add, map(and_, tails, repeat(_U32)), repeat(TRAILER_SIZE)))
        if not all(map(ge, sizes, newest)):
            raise CorruptionError("snapshot key history shorter than its newest record")
        self.digest += sum(map(zlib.crc32, histories, map(zlib.crc32, keys)))
        entries: list[Entry] = list(histories)
        if sum(sizes) != sum(newest) \
                or not all(map(and_, map(rshift, tails, repeat(32)), repeat(_U64))):
            self._add_multi(keys, entries, sizes, newest, tails)
        if any(map(rshift, tails, repeat(96))):
            self.attached += [(tail >> 96, key) for key, tail in zip(keys, tails)
                              if tail >> 96 and (tail >> 32) & _U64]
        self.keys += keys
        self.entries += entries

    def _add_multi(self, keys: list[bytes], entries: list[Entry], sizes: list[int],
                   newest: list[int], tails: list[int]) -> None:
        """Keys with several records or a tombstone: add them to ``multi``, digest them per
        record, check the records' order, and cut long histories into runs."""
        odd = [i for i, (size, last, tail) in enumerate(zip(sizes, newest, tails))
               if size != last or not (tail >> 32) & _U64]
        for i in odd:
            key, run = keys[i], entries[i]
            assert isinstance(run, bytes)  # as decoded; replaced below only
            self.multi.add(key)
            try:
                ends = record_ends(run)
            except ValueError as exc:
                raise CorruptionError(f"snapshot key history unreadable: {exc}") from None
            if len(ends) == 1:
                continue  # a lone tombstone
            mods = [mod_at(run, end) for end in ends]
            if any(a >= b for a, b in pairwise(mods)):
                raise CorruptionError("snapshot key history out of revision order")
            view = memoryview(run)
            pieces = [view[start:end] for start, end in zip([0, *ends], ends)]
            key_crc = zlib.crc32(key)
            self.digest += sum(zlib.crc32(p, key_crc) for p in pieces) - record_digest(key, run)
            if len(run) > RUN_BYTES:
                entries[i] = join_records(pieces)

    def add_v1(self, columns: tuple[list[bytes], list[int], list[int], list[int], list[int],
                                    list[bytes], list[int]]) -> None:
        """Add one key frame of a version 1 stream (column-wise records), packing them."""
        keys, counts, mods, creates, versions, values, leases = columns
        n = len(mods)
        if not n or any(len(col) != n for col in (creates, versions, values, leases)):
            raise CorruptionError("snapshot key frame has uneven columns")
        if len(counts if counts else mods) != len(keys) or (counts and sum(counts) != n):
            raise CorruptionError("snapshot key frame has inconsistent record counts")
        if any(f > MAX_FIELD or f < 0 for col in (mods, creates, versions, leases) for f in col):
            raise CorruptionError("snapshot record field out of range")
        rec_keys = [k for k, c in zip(keys, counts or repeat(1, len(keys))) for _ in range(c)]
        self.digest_v1 = (self.digest_v1
                          + _digest_v1(rec_keys, mods, creates, versions, values, leases)) & _U64
        recs: list[Record] = list(zip(mods, creates, versions, values, leases))
        histories: list[bytes] = []
        at = 0
        for count in counts or repeat(1, len(keys)):
            if count < 1:
                raise CorruptionError("snapshot key without records")
            histories.append(b"".join(map(pack, recs[at:at + count])))
            at += count
        self.add(keys, histories)


# Version 1's record digest (its trailer carries their sum): per record, crc = crc32(value,
# crc32(key)) mixed with the revisions by xor and with the other fields by odd multipliers.
_V1_K = (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0x85EBCA77C2B2AE63,
         0x27D4EB2F165667C5)


def _digest_v1(keys: list[bytes], mods: list[int], creates: list[int], versions: list[int],
               values: list[bytes], leases: list[int]) -> int:
    """Sum of version 1 record digests over column-wise records (``keys[i]`` owns record i)."""
    if len(keys) != len(mods):
        raise CorruptionError("snapshot key frame has inconsistent record counts")
    crcs: list[int] = list(map(zlib.crc32, values, map(zlib.crc32, keys)))
    k_crc, k_mod, k_create, k_version, k_lease = _V1_K
    total: int = (sum(crcs) * k_crc + sum(map(xor, crcs, mods)) * k_mod
             + sum(map(xor, crcs, creates)) * k_create + sum(versions) * k_version
             + sum(leases) * k_lease)
    return total & _U64


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
                if header.version not in _READABLE_VERSIONS:
                    raise CorruptionError(f"unknown snapshot version {header.version}")
            elif kind == _KEYS_KIND and header is not None and header.version == 1:
                image.add_v1(_KEYS_V1.decode(body))
            elif kind == _KEYS_KIND:
                image.add(*_KEYS.decode(body))
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
    # a version 1 trailer holds version 1's digest; the store keeps the current one
    expected = image.digest_v1 if header.version == 1 else store.digest
    if expected != trailer.digest:
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

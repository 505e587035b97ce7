"""Streamed, versioned snapshots of the replicated state.

Stream = a sequence of frames; a chunk handed out by :func:`stream` is one frame, but
:func:`load` accepts the bytes cut anywhere (a transport may re-chunk them). A frame is::

    u32 big-endian payload length | u32 big-endian crc32(payload) | payload

and a payload is one kind byte (H, K or T) followed by msgpack.

Frames, in order:

1. header: :class:`SnapshotHeader` (format version, applied index, revision, compact
   revision, key count, leases, sessions);
2. zero or more key frames: a msgpack array of ``[key, [record, ...]]`` in ascending key
   order, records as ``[mod, create, version, value, lease]`` oldest first (retained history);
3. trailer: :class:`SnapshotTrailer` (key count and the store's record digest again), so a
   truncated or reordered stream is detected.

Point in time: :func:`capture` copies pointers only (sorted key list, a shallow copy of the
history map, lease and session tuples). History lists are append-only and compaction
replaces them instead of editing them, so the captured lists keep describing the state at
the captured revision; records above it are filtered out while streaming.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Iterator
from typing import Protocol

import msgspec

from quorum.errors import CorruptionError
from quorum.state.commands import ErrorResponse, Response
from quorum.state.config import StateConfig
from quorum.state.lease import Lease, LeaseTable
from quorum.state.mvcc import LEASE, MOD, VERSION, MVCCStore, Record
from quorum.state.sessions import Session, SessionTable

SNAPSHOT_VERSION = 1
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
    hist: dict[bytes, list[Record]]
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
    rev = cap.header.revision
    hist = cap.hist
    keys = cap.keys
    for start in range(0, len(keys), cap.chunk_keys):
        batch = []
        for key in keys[start:start + cap.chunk_keys]:
            records = hist[key]
            if records[-1][MOD] > rev:  # appended after the capture: not part of this image
                records = [r for r in records if r[MOD] <= rev]
            batch.append((key, records))
        yield _frame(_KEYS_KIND, _ENCODER.encode(batch))
    yield _frame(_TRAILER_KIND, _ENCODER.encode(SnapshotTrailer(len(keys), cap.digest)))


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
_KEYS = msgspec.msgpack.Decoder(list[tuple[bytes, list[tuple[int, int, int, bytes, int]]]])


def load(chunks: Iterable[bytes],
         config: StateConfig) -> tuple[MVCCStore, LeaseTable, SessionTable, int]:
    """Rebuild (store, leases, sessions, applied index) from a snapshot stream. Raises
    CorruptionError if the stream is damaged, truncated or of an unknown version."""
    header: SnapshotHeader | None = None
    trailer: SnapshotTrailer | None = None
    items: list[tuple[bytes, list[Record]]] = []
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
                items.extend(_KEYS.decode(body))
            elif kind == _TRAILER_KIND:
                trailer = _TRAILER.decode(body)
            else:
                raise CorruptionError(f"unknown snapshot frame kind {kind!r}")
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise CorruptionError(f"snapshot frame unreadable: {exc}") from None
    if header is None:
        raise CorruptionError("snapshot has no header", "<snapshot>", 0)
    return _build(header, items, trailer, config)


def _build(header: SnapshotHeader, items: list[tuple[bytes, list[Record]]],
           trailer: SnapshotTrailer | None,
           config: StateConfig) -> tuple[MVCCStore, LeaseTable, SessionTable, int]:
    if trailer is None or trailer.key_count != header.key_count or len(items) != header.key_count:
        raise CorruptionError("snapshot is incomplete (trailer or keys missing)", "<snapshot>", -1)
    store = MVCCStore()
    store.load(items, header.revision, header.compact_revision)
    if store.digest != trailer.digest:
        raise CorruptionError("snapshot record digest mismatch", "<snapshot>", -1)
    leases = LeaseTable()
    leases.next_id = header.next_lease_id
    for sl in header.leases:
        leases.leases[sl.id] = Lease(sl.id, sl.ttl, sl.remaining_ttl)
    for key, records in items:  # Invariant: a lease's keys are the live keys naming it
        rec = records[-1]
        if rec[VERSION] and rec[LEASE]:
            lease = leases.leases.get(rec[LEASE])
            if lease is None:
                raise CorruptionError("snapshot key names a missing lease", "<snapshot>", -1)
            lease.keys.add(key)
    sessions = SessionTable(max(config.max_sessions, 1))
    sessions.next_id = header.next_session_id
    for ss in header.sessions:
        session = Session(ss.id, ss.last_index)
        session.last_seq = ss.last_seq
        session.outcome = ss.outcome
        sessions.sessions[ss.id] = session
    return store, leases, sessions, header.applied_index

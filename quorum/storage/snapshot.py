"""Snapshot files: streamed, checksummed, written crash-safely, kept to a bound.

File name: ``<index>-<term>.snap`` (16 hex digits each), so lexical order is index order.
Layout (little-endian)::

    0    4   magic  b"QSNP"
    4    4   format version (1)
    8    4   meta length m
    12   4   CRC32C of the meta bytes
    16   m   meta: msgpack SnapshotMetadata (index, term, ConfState), zero-padded to 8
    ..   n   data: the state-machine image, streamed
    end-16 8 data length n
    end-8  4 CRC32C of the data
    end-4  4 CRC32C of the 12 bytes before it (the trailer itself)

The data CRC sits in a trailer because data is streamed: its length and checksum are known
only once the last chunk is written. A file is written as ``<name>.tmp``, fsynced, renamed
and its directory fsynced, so a visible ``.snap`` is complete unless the media corrupted it.
"""

from __future__ import annotations

import logging
import os
import re
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import msgspec

from quorum.errors import CorruptionError, StorageError
from quorum.raft.types import Snapshot, SnapshotMetadata
from quorum.storage import crc as _crc
from quorum.storage.fs import FileHandle, FileSystem

log = logging.getLogger(__name__)

SNAP_MAGIC = b"QSNP"
SNAP_FORMAT_VERSION = 1
SNAP_SUFFIX = ".snap"
TMP_SUFFIX = ".tmp"
DEFAULT_CHUNK_BYTES = 1 << 20
_PREFIX = struct.Struct("<4sIII")
_TRAILER = struct.Struct("<QII")
_NAME = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.snap$")
_ENCODER = msgspec.msgpack.Encoder()
_DECODE_META = msgspec.msgpack.Decoder(SnapshotMetadata)


def snapshot_filename(index: int, term: int) -> str:
    return f"{index:016x}-{term:016x}{SNAP_SUFFIX}"


def parse_snapshot_filename(name: str) -> tuple[int, int] | None:
    match = _NAME.match(name)
    return (int(match.group(1), 16), int(match.group(2), 16)) if match else None


def _pad8(n: int) -> int:
    return (n + 7) & ~7


class SnapshotWriter:
    """Streams one snapshot into a temporary file; :meth:`commit` makes it visible.

    Raises OSError from the file system (the caller maps ENOSPC/EIO). After an error, call
    :meth:`abort`; the writer is then unusable.
    """

    def __init__(self, fs: FileSystem, snap_dir: str, metadata: SnapshotMetadata) -> None:
        self.metadata = metadata
        self.path = os.path.join(snap_dir, snapshot_filename(metadata.index, metadata.term))
        self._fs = fs
        self._dir = snap_dir
        self._tmp = self.path + TMP_SUFFIX
        self._handle: FileHandle | None = fs.open(self._tmp, create=True)
        meta = _ENCODER.encode(metadata)
        head = bytearray(_PREFIX.pack(SNAP_MAGIC, SNAP_FORMAT_VERSION, len(meta), _crc.value(meta)))
        head += meta + bytes(_pad8(len(meta)) - len(meta))
        self._offset = len(head)
        self._data_len = 0
        self._data_crc = 0
        try:
            self._handle.truncate(0)
            self._handle.pwrite(head, 0)
        except OSError:
            self.abort()
            raise

    def write(self, chunk: bytes) -> None:
        assert self._handle is not None, "writer already committed or aborted"
        self._handle.pwrite(chunk, self._offset)
        self._offset += len(chunk)
        self._data_len += len(chunk)
        self._data_crc = _crc.extend(self._data_crc, chunk)

    def commit(self) -> str:
        """Trailer, fsync, rename, directory fsync. Returns the final path."""
        assert self._handle is not None, "writer already committed or aborted"
        head = _TRAILER.pack(self._data_len, self._data_crc, 0)[:12]
        self._handle.pwrite(head + struct.pack("<I", _crc.value(head)), self._offset)
        self._handle.sync()
        self._handle.close()
        self._handle = None
        self._fs.rename(self._tmp, self.path)
        self._fs.fsync_dir(self._dir)
        return self.path

    def abort(self) -> None:
        """Drop the temporary file; never raises OSError."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        try:
            if self._fs.exists(self._tmp):
                self._fs.remove(self._tmp)
        except OSError:
            log.warning("could not remove partial snapshot %s", self._tmp)


@dataclass(frozen=True)
class SnapshotFile:
    """A snapshot file whose header and trailer checked out (data CRC checked by reading)."""

    path: str
    metadata: SnapshotMetadata
    data_offset: int
    data_len: int
    data_crc: int


def open_snapshot(fs: FileSystem, path: str) -> SnapshotFile:
    """Check header and trailer of ``path``. Raises CorruptionError naming file and offset."""
    handle = fs.open(path)
    try:
        size = handle.size()
        prefix = handle.pread(_PREFIX.size, 0)
        if len(prefix) < _PREFIX.size:
            raise CorruptionError("snapshot shorter than its header", path, 0)
        magic, version, meta_len, meta_crc = _PREFIX.unpack(prefix)
        if magic != SNAP_MAGIC or version != SNAP_FORMAT_VERSION:
            raise CorruptionError("not a snapshot file of a known format", path, 0)
        data_offset = _PREFIX.size + _pad8(meta_len)
        if data_offset + _TRAILER.size > size:
            raise CorruptionError("snapshot meta length runs past the end", path, 4)
        meta = handle.pread(meta_len, _PREFIX.size)
        if _crc.value(meta) != meta_crc:
            raise CorruptionError("snapshot metadata checksum mismatch", path, _PREFIX.size)
        metadata = _decode_meta(meta, path)
        trailer = handle.pread(_TRAILER.size, size - _TRAILER.size)
        data_len, data_crc, trailer_crc = _TRAILER.unpack(trailer)
        if _crc.value(trailer[:12]) != trailer_crc or data_offset + data_len + 16 != size:
            raise CorruptionError("snapshot trailer damaged", path, size - _TRAILER.size)
    finally:
        handle.close()
    return SnapshotFile(path, metadata, data_offset, data_len, data_crc)


def _decode_meta(meta: bytes, path: str) -> SnapshotMetadata:
    try:
        return _DECODE_META.decode(meta)
    except msgspec.MsgspecError as exc:
        raise CorruptionError(f"snapshot metadata does not decode: {exc}", path, 16) from exc


def read_chunks(
    fs: FileSystem, snap: SnapshotFile, chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> Iterator[bytes]:
    """Yield the data in chunks; raise CorruptionError after the last one if the CRC fails
    (so a consumer must not act on the data before the iterator is exhausted)."""
    handle = fs.open(snap.path)
    try:
        crc = 0
        pos = 0
        while pos < snap.data_len:
            chunk = handle.pread(min(chunk_bytes, snap.data_len - pos), snap.data_offset + pos)
            if not chunk:
                raise CorruptionError("snapshot data ends early", snap.path, snap.data_offset + pos)
            crc = _crc.extend(crc, chunk)
            pos += len(chunk)
            yield chunk
        if crc != snap.data_crc:
            raise CorruptionError("snapshot data checksum mismatch", snap.path, snap.data_offset)
    finally:
        handle.close()


def verify_snapshot(fs: FileSystem, path: str) -> SnapshotFile:
    """Check a snapshot file completely (header, trailer, data CRC). Raises CorruptionError."""
    snap = open_snapshot(fs, path)
    for _ in read_chunks(fs, snap):
        pass
    return snap


def load_snapshot(fs: FileSystem, snap: SnapshotFile) -> Snapshot:
    return Snapshot(metadata=snap.metadata, data=b"".join(read_chunks(fs, snap)))


class SnapshotStore:
    """The snapshot directory: write new snapshots, find the newest valid one, prune."""

    def __init__(self, fs: FileSystem, snap_dir: str, keep: int = 2) -> None:
        if keep < 1:
            raise StorageError("must keep at least one snapshot")
        self.fs = fs
        self.dir = snap_dir
        self.keep = keep

    def paths(self) -> list[tuple[int, int, str]]:
        """(index, term, path) of every ``.snap`` file, oldest first."""
        found = []
        for name in self.fs.listdir(self.dir):
            parsed = parse_snapshot_filename(name)
            if parsed is not None:
                found.append((parsed[0], parsed[1], os.path.join(self.dir, name)))
        return sorted(found)

    def remove_temporaries(self) -> None:
        """Partial snapshots from a crash are garbage: nothing refers to them."""
        for name in self.fs.listdir(self.dir):
            if name.endswith(SNAP_SUFFIX + TMP_SUFFIX):
                self.fs.remove(os.path.join(self.dir, name))

    def write(self, metadata: SnapshotMetadata, chunks: Iterable[bytes]) -> SnapshotFile:
        """Write a complete snapshot from ``chunks``. Raises OSError (partial file removed)."""
        writer = SnapshotWriter(self.fs, self.dir, metadata)
        try:
            for chunk in chunks:
                writer.write(chunk)
            path = writer.commit()
        except Exception:
            writer.abort()
            raise
        return open_snapshot(self.fs, path)

    def prune(self) -> None:
        """Remove all but the newest ``keep`` snapshot files (oldest first), then fsync."""
        paths = self.paths()
        for _, _, path in paths[: max(0, len(paths) - self.keep)]:
            self.fs.remove(path)
        if len(paths) > self.keep:
            self.fs.fsync_dir(self.dir)

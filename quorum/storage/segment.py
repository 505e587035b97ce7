"""WAL segment files: naming, creation (crash-safe) and reading one segment back.

A segment is named ``<seq>-<first_index>.wal`` with both numbers as 16 lower-case hex digits,
so lexical order is creation order: ``0000000000000001-0000000000000001.wal``. ``seq`` grows by
one per segment; ``first_index`` is the log's last index + 1 when the segment was created (an
entry record in it may still start lower: a follower overwriting a conflicting tail).
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass

from quorum.errors import CorruptionError
from quorum.storage import record
from quorum.storage.fs import FileHandle, FileSystem
from quorum.storage.record import RecordType, SegmentHeader

SEGMENT_SUFFIX = ".wal"
TMP_SUFFIX = ".tmp"
_NAME = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.wal$")


@dataclass(frozen=True, order=True)
class SegmentName:
    seq: int
    first_index: int

    @property
    def filename(self) -> str:
        return f"{self.seq:016x}-{self.first_index:016x}{SEGMENT_SUFFIX}"

    @staticmethod
    def parse(filename: str) -> SegmentName | None:
        match = _NAME.match(filename)
        if match is None:
            return None
        return SegmentName(int(match.group(1), 16), int(match.group(2), 16))


def list_segments(fs: FileSystem, wal_dir: str) -> list[SegmentName]:
    """Segments in ``wal_dir`` in sequence order (leftover ``.tmp`` files are not listed)."""
    names = [SegmentName.parse(n) for n in fs.listdir(wal_dir)]
    return sorted(n for n in names if n is not None)


def header_bytes(name: SegmentName, extra: bytes = b"") -> bytearray:
    buf = bytearray()
    header = SegmentHeader(record.WAL_MAGIC, record.WAL_FORMAT_VERSION, name.seq, name.first_index)
    record.append_record(buf, RecordType.SEGMENT_HEADER, record.encode_struct(header))
    buf.extend(extra)
    return buf


def create_segment(
    fs: FileSystem,
    wal_dir: str,
    name: SegmentName,
    initial: bytes,
    preallocate_bytes: int,
    _planted_skip_dir_fsync: bool = False,
) -> FileHandle:
    """Create a segment holding ``initial`` (header and carried-over state), crash-safely.

    Written under a temporary name, fsynced, renamed, then the directory fsynced: after a
    crash the segment either does not exist or exists with a complete, durable header, so a
    damaged header is always corruption, never a torn write. Raises OSError (the caller maps
    ENOSPC to DiskFullError); the temporary file is removed on failure.
    """
    final = os.path.join(wal_dir, name.filename)
    tmp = final + TMP_SUFFIX
    handle = fs.open(tmp, create=True)
    try:
        if preallocate_bytes:
            handle.preallocate(preallocate_bytes)
        handle.pwrite(initial, 0)
        handle.sync()
        fs.rename(tmp, final)
        if not _planted_skip_dir_fsync:
            fs.fsync_dir(wal_dir)
    except Exception:
        handle.close()
        if fs.exists(tmp):
            _remove_quietly(fs, tmp)
        raise
    return handle


def _remove_quietly(fs: FileSystem, path: str) -> None:
    with contextlib.suppress(OSError):
        fs.remove(path)


@dataclass
class SegmentScan:
    """What one segment file holds, as far as its records are valid."""

    name: SegmentName
    path: str
    header: SegmentHeader
    records: list[record.Record]
    end: int  # offset after the last valid record
    size: int  # file size
    stop: record.ScanStop | None  # a bad record at ``stop.offset``, or None if clean
    valid_after_stop: int | None  # offset of a valid record beyond the bad one, if any
    bit_flip_at: int | None  # the bad record is complete and one flipped bit (here) explains it


def read_segment(fs: FileSystem, wal_dir: str, name: SegmentName) -> SegmentScan:
    """Read and check one segment. A bad header raises CorruptionError; a bad record later is
    reported in ``stop`` for the caller to judge (torn tail of the last segment or not)."""
    path = os.path.join(wal_dir, name.filename)
    data = fs.read_file(path)
    first, reason = record.check_record(data, 0)
    if first is None or first.type != RecordType.SEGMENT_HEADER:
        raise CorruptionError(f"segment header unreadable: {reason or 'not a header'}", path, 0)
    header = _decode_header(first.payload, path)
    if header.seq != name.seq or header.first_index != name.first_index:
        raise CorruptionError(f"segment header {header} does not match its file name", path, 0)
    start = record.HEADER_BYTES + record.padded(len(first.payload))
    records, stop, end = record.scan(data, start)
    after = record.find_valid_record_after(data, stop.offset) if stop else None
    flip = record.bit_flip_offset(data, stop.offset) if stop else None
    return SegmentScan(name, path, header, records, end, len(data), stop, after, flip)


def _decode_header(payload: bytes, path: str) -> SegmentHeader:
    try:
        header = record.decode_segment_header(payload)
    except Exception as exc:  # msgspec.DecodeError/ValidationError: a valid CRC, bad content
        raise CorruptionError(f"segment header does not decode: {exc}", path, 0) from exc
    if header.magic != record.WAL_MAGIC or header.version != record.WAL_FORMAT_VERSION:
        raise CorruptionError(f"not a WAL segment of format {record.WAL_FORMAT_VERSION}", path, 0)
    return header

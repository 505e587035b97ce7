"""WAL record framing: encode, decode and scan checksummed records.

Layout of one record (little-endian), always a multiple of 8 bytes long::

    offset  size  field
    0       4     crc32c   CRC32C of bytes [4, 16 + padded length): the rest of the header,
                           the payload and its padding
    4       4     length   payload length in bytes (padding excluded)
    8       1     type     RecordType (0 is never valid, so a zeroed header never decodes)
    9       7     reserved zero
    16      n     payload  msgspec msgpack encoding of the record's Struct
    16+n    0..7  padding  zero bytes up to the next multiple of 8

The CRC covers the padding too, so a record is valid only if every one of its bytes reached
the disk: a write cut short (ENOSPC, a torn write) never leaves a valid record, even when only
padding is missing.

Each record carries its own CRC (not chained to the previous record's CRC). A per-record CRC
lets recovery check any record on its own, which is what tells a torn tail (nothing valid
after the damage) from mid-log corruption (valid records after the damage); the ordering that
a chained CRC would protect is checked instead by index continuity of entry records and by
consecutive segment sequence numbers.
"""

from __future__ import annotations

import enum
import re
import struct
from dataclasses import dataclass

import msgspec

from quorum.raft.types import Entry, HardState
from quorum.storage import crc as _crc

HEADER = struct.Struct("<IIB7x")
HEADER_BYTES = HEADER.size  # 16
ALIGN = 8
MAX_PAYLOAD_BYTES = 1 << 30  # a length above this is garbage, not a record
WAL_MAGIC = b"QWAL"
WAL_FORMAT_VERSION = 1


class RecordType(enum.IntEnum):
    SEGMENT_HEADER = 1
    BATCH = 2  # entries and/or hard state of one save()
    HARD_STATE = 3  # the current hard state, carried to the start of each new segment
    SNAPSHOT_MARKER = 4


class SegmentHeader(msgspec.Struct, frozen=True, array_like=True):
    """First record of every segment. ``first_index`` = log's last index + 1 at creation."""

    magic: bytes
    version: int
    seq: int
    first_index: int


class Batch(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One ``save()``: entries and the hard state, in ONE record so that a torn write can never
    keep one without the other (entries without the term that goes with them, or a commit
    index pointing past entries that were lost)."""

    entries: list[Entry]
    hard_state: HardState | None = None


class SnapshotMarker(msgspec.Struct, frozen=True, array_like=True):
    """A snapshot at (index, term) was made durable. ``reset`` = installed from a leader: the
    log before this record is discarded and the next entry is ``index + 1``."""

    index: int
    term: int
    reset: bool = False


_ENCODER = msgspec.msgpack.Encoder()
_DECODE_BATCH = msgspec.msgpack.Decoder(Batch)
_DECODE_HARD_STATE = msgspec.msgpack.Decoder(HardState)
_DECODE_MARKER = msgspec.msgpack.Decoder(SnapshotMarker)
_DECODE_SEGMENT_HEADER = msgspec.msgpack.Decoder(SegmentHeader)
_VALID_TYPES = frozenset(int(t) for t in RecordType)
_NON_ZERO = re.compile(b"[^\x00]")


def padded(length: int) -> int:
    return (length + ALIGN - 1) & ~(ALIGN - 1)


def append_record(buf: bytearray, rtype: RecordType, payload: bytes) -> None:
    """Append one framed record to ``buf`` (whose length must already be 8-aligned)."""
    start = len(buf)
    total = HEADER_BYTES + padded(len(payload))
    buf.extend(bytes(total))
    HEADER.pack_into(buf, start, 0, len(payload), rtype)
    buf[start + HEADER_BYTES : start + HEADER_BYTES + len(payload)] = payload
    struct.pack_into("<I", buf, start, _crc.value(bytes(buf[start + 4 : start + total])))


def encode_struct(value: msgspec.Struct) -> bytes:
    return _ENCODER.encode(value)


def decode_batch(payload: bytes) -> Batch:
    return _DECODE_BATCH.decode(payload)


def decode_hard_state(payload: bytes) -> HardState:
    return _DECODE_HARD_STATE.decode(payload)


def decode_marker(payload: bytes) -> SnapshotMarker:
    return _DECODE_MARKER.decode(payload)


def decode_segment_header(payload: bytes) -> SegmentHeader:
    return _DECODE_SEGMENT_HEADER.decode(payload)


@dataclass(frozen=True)
class Record:
    offset: int
    type: RecordType
    payload: bytes


@dataclass(frozen=True)
class ScanStop:
    """Why a scan stopped before the end of the data: ``offset`` of the bad record."""

    offset: int
    reason: str


def check_record(data: bytes, offset: int) -> tuple[Record | None, str]:
    """Decode the record at ``offset``; return (record, "") or (None, reason)."""
    if offset + HEADER_BYTES > len(data):
        return None, "truncated header"
    crc, length, rtype = HEADER.unpack_from(data, offset)
    if rtype not in _VALID_TYPES:
        return None, f"invalid record type {rtype}"
    end = offset + HEADER_BYTES + padded(length)
    if length > MAX_PAYLOAD_BYTES or end > len(data):
        return None, f"length {length} runs past the end of the file"
    body = data[offset + HEADER_BYTES : end]  # payload and padding
    actual = _crc.extend(_crc.value(data[offset + 4 : offset + HEADER_BYTES]), body)
    if actual != crc:
        return None, f"checksum mismatch (stored {crc:#010x}, computed {actual:#010x})"
    payload = body if len(body) == length else body[:length]
    return Record(offset, RecordType(rtype), payload), ""


def scan(data: bytes, offset: int = 0) -> tuple[list[Record], ScanStop | None, int]:
    """Decode records from ``offset`` until the data ends or a record fails its checks.

    Returns (records, stop, end) where ``end`` is the offset after the last good record and
    ``stop`` is None when the data ended cleanly: at end of file or at an all-zero tail (unused
    preallocated space).
    """
    records: list[Record] = []
    while offset < len(data):
        record, reason = check_record(data, offset)
        if record is None:
            if is_zero_tail(data, offset):
                return records, None, offset
            return records, ScanStop(offset, reason), offset
        records.append(record)
        offset += HEADER_BYTES + padded(len(record.payload))
    return records, None, offset


def is_zero_tail(data: bytes, offset: int) -> bool:
    return _NON_ZERO.search(data, offset) is None


def find_valid_record_after(data: bytes, offset: int) -> int | None:
    """The offset of the first checksum-valid record at an 8-aligned position after
    ``offset``, or None. Used to tell a torn tail from corruption followed by good data."""
    pos = padded(offset + 1)
    while pos + HEADER_BYTES <= len(data):
        match = _NON_ZERO.search(data, pos)  # skip zero runs quickly: they never decode
        if match is None:
            return None
        pos = max(pos, match.start() & ~(ALIGN - 1))
        record, _ = check_record(data, pos)
        if record is not None:
            return pos
        pos += ALIGN
    return None


# --- telling a media bit flip from a torn write ----------------------------------------------
#
# A torn write loses or zeroes whole sectors (or leaves garbage); media corruption typically
# flips a bit. A checksum mismatch that ONE flipped bit explains therefore means the record was
# complete on disk and then damaged: recovery must refuse rather than cut it off as a torn
# tail (it may hold an fsynced vote or entry). CRC32C is linear, so the syndrome
# crc(received) ^ stored identifies a single-bit error position without trying every bit.

SECTOR_BYTES = 512
FLIP_CHECK_MAX_BYTES = 16 << 20  # beyond this the search costs seconds; such records are cut
_POLY = 0x82F63B78  # CRC32C, reflected


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ (_POLY if c & 1 else 0)
        table.append(c)
    return table


_TABLE = _crc_table()
_BY_TOP_BYTE = {t >> 24: i for i, t in enumerate(_TABLE)}  # unique top bytes: invertible steps
# Syndrome of a single flipped bit b in the LAST byte of a message (the affine part cancels).
_LAST_BYTE_SYNDROMES = {
    _crc.value(bytes([1 << b])) ^ _crc.value(b"\x00"): b for b in range(8)
}


def _unstep_zero_byte(syndrome: int) -> int:
    """Inverse of appending one zero byte to the error pattern."""
    i = _BY_TOP_BYTE[syndrome >> 24]
    return (((syndrome ^ _TABLE[i]) << 8) & 0xFFFFFFFF) | i


def _single_bit_position(length: int, syndrome: int) -> int | None:
    """The bit (0 = LSB of byte 0) whose flip in a ``length``-byte message gives
    ``syndrome``, or None."""
    for trailing in range(length):
        bit = _LAST_BYTE_SYNDROMES.get(syndrome)
        if bit is not None:
            return (length - 1 - trailing) * 8 + bit
        syndrome = _unstep_zero_byte(syndrome)
    return None


def bit_flip_offset(data: bytes, offset: int) -> int | None:
    """If the bad record at ``offset`` is complete and one flipped bit explains its checksum
    mismatch, the byte offset of that bit; otherwise None (treat as a torn write).

    A record overlapping an all-zero sector counts as torn (a zeroed sector is the signature of
    a torn write, as in etcd's isTornEntry), so a bit flip in such a record is not reported.
    """
    if offset + HEADER_BYTES > len(data):
        return None
    stored, length, _ = HEADER.unpack_from(data, offset)
    found = _flip_with_extent(data, offset, stored, length)
    if found is None:
        found = _flip_in_length(data, offset, stored, length)
    if found is None or _has_zero_sector(data, offset, found[1]):
        return None
    return found[0]


def _flip_with_extent(data: bytes, offset: int, stored: int, length: int) -> tuple[int, int] | None:
    end = offset + HEADER_BYTES + padded(length)
    if length > FLIP_CHECK_MAX_BYTES or end > len(data):
        return None
    syndrome = _crc.value(data[offset + 4 : end]) ^ stored
    if syndrome.bit_count() == 1:  # the stored checksum itself took the flip
        return offset + (syndrome.bit_length() - 1) // 8, end
    bit = _single_bit_position(end - offset - 4, syndrome)
    return (offset + 4 + bit // 8, end) if bit is not None else None


def _flip_in_length(data: bytes, offset: int, stored: int, length: int) -> tuple[int, int] | None:
    """A flipped length bit changes the record's extent: try each alternative length."""
    rest = data[offset + 8 : offset + HEADER_BYTES]
    for bit in range(32):
        alt = length ^ (1 << bit)
        end = offset + HEADER_BYTES + padded(alt)
        if alt > FLIP_CHECK_MAX_BYTES or end > len(data):
            continue
        head = struct.pack("<I", alt) + rest
        if _crc.extend(_crc.value(head), data[offset + HEADER_BYTES : end]) == stored:
            return offset + 4 + bit // 8, end
    return None


def _has_zero_sector(data: bytes, start: int, end: int) -> bool:
    """Does any 512-byte sector overlap [start, end) with an all-zero stretch? Records and
    their padded ends are 8-aligned, so overlaps are multiples of 8 and a zeroed torn piece
    always shows."""
    sector = start - start % SECTOR_BYTES
    while sector < end:
        lo, hi = max(sector, start), min(sector + SECTOR_BYTES, end)
        if hi - lo >= ALIGN and not any(data[lo:hi]):
            return True
        sector += SECTOR_BYTES
    return False

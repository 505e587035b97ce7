"""Record framing: alignment, checksums, and how damage is classified."""

from __future__ import annotations

import random

from quorum.raft.types import Entry, HardState
from quorum.storage import record
from quorum.storage.record import Batch, RecordType


def framed(*payloads: bytes) -> bytes:
    buf = bytearray()
    for payload in payloads:
        record.append_record(buf, RecordType.BATCH, payload)
    return bytes(buf)


def batch_payload(index: int, size: int) -> bytes:
    return record.encode_struct(Batch([Entry(1, index, data=b"d" * size)], HardState(1, 0, 0)))


def test_records_are_8_byte_aligned_and_round_trip() -> None:
    payloads = [batch_payload(i, size) for i, size in enumerate([0, 1, 7, 8, 9, 100], start=1)]
    data = framed(*payloads)
    records, stop, end = record.scan(data)
    assert stop is None and end == len(data)
    assert [r.payload for r in records] == payloads
    assert all(r.offset % 8 == 0 for r in records)
    assert record.decode_batch(records[2].payload).entries[0].index == 3


def test_damage_is_classified() -> None:
    data = framed(batch_payload(1, 50), batch_payload(2, 50))
    second = record.scan(data)[0][1].offset
    cases = {
        "cut": (data[:-5], "runs past the end"),
        "zeroed header": (data[:second] + bytes(16) + data[second + 16 :], "invalid record type 0"),
        "flipped payload": (data[:-10] + b"\xff" + data[-9:], "checksum mismatch"),
    }
    for name, (damaged, reason) in cases.items():
        records, stop, end = record.scan(damaged)
        assert len(records) == 1 and end == second, name
        assert stop is not None and reason in stop.reason, (name, stop)


def test_zero_tail_is_a_clean_end() -> None:
    data = framed(batch_payload(1, 10)) + bytes(4096)
    records, stop, end = record.scan(data)
    assert len(records) == 1 and stop is None and end == len(data) - 4096


def test_resync_finds_a_valid_record_after_damage_but_not_in_garbage() -> None:
    good = framed(batch_payload(1, 30), batch_payload(2, 30), batch_payload(3, 30))
    offsets = [r.offset for r in record.scan(good)[0]]
    damaged = bytearray(good)
    damaged[offsets[1] + 20] ^= 1
    assert record.find_valid_record_after(bytes(damaged), offsets[1]) == offsets[2]
    noise = random.Random(4).randbytes(20000)
    assert record.find_valid_record_after(good[: offsets[2]] + noise, offsets[1]) is None


def test_single_bit_flips_are_located_and_torn_writes_are_not_mistaken_for_them() -> None:
    rng = random.Random(11)
    for _ in range(100):
        data = framed(*(batch_payload(i, rng.randint(1, 2000)) for i in range(1, 4)))
        last = record.scan(data)[0][-1]
        end = last.offset + record.HEADER_BYTES + record.padded(len(last.payload))
        pos = rng.randrange(last.offset, end)
        flipped = bytearray(data)
        flipped[pos] ^= 1 << rng.randrange(8)
        assert record.bit_flip_offset(bytes(flipped), last.offset) == pos
        cut = data[: rng.randrange(last.offset + 1, len(data))]
        assert record.bit_flip_offset(cut, last.offset) is None
        sector = rng.randrange(last.offset // 512, len(data) // 512 + 1) * 512
        for filler in (bytes(512), rng.randbytes(512)):
            mangled = bytearray(data)
            mangled[sector : sector + 512] = filler[: len(mangled[sector : sector + 512])]
            if bytes(mangled) != data:
                assert record.bit_flip_offset(bytes(mangled), last.offset) is None


def test_a_record_missing_only_its_padding_is_not_valid() -> None:
    """The CRC covers the padding: a write cut short never leaves a valid record."""
    data = framed(batch_payload(1, 5))  # payload length is not a multiple of 8
    assert len(data) - record.HEADER_BYTES > len(batch_payload(1, 5))
    records, stop, _ = record.scan(data[:-1])
    assert not records and stop is not None

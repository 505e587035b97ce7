"""Determinism, snapshot round trips (equal state, hash and answers), point-in-time capture,
damaged streams."""

from __future__ import annotations

import contextlib

import pytest

from quorum.errors import CorruptionError, StateError
from quorum.state import (
    PutRequest,
    RangeRequest,
    StateConfig,
    StateMachine,
    encode_command,
)

from .workload import workload


def run(seed: int, n: int, config: StateConfig | None = None) -> tuple[StateMachine, list[object]]:
    sm = StateMachine(config)
    outcomes: list[object] = []
    for index, (req, session, seq) in enumerate(workload(seed, n), start=1):
        try:
            outcomes.append(sm.apply(index, encode_command(req, session, seq)))
        except StateError as exc:
            outcomes.append((type(exc).__name__, str(exc)))
    return sm, outcomes


def answers(sm: StateMachine) -> list[object]:
    """Every query a client can make of the state."""
    out: list[object] = [sm.revision, sm.compact_revision, sm.applied_index, sm.lease_ids()]
    for rev in range(max(sm.compact_revision, 1), sm.revision + 1):
        out.append(sm.range(RangeRequest(b"\0", b"\0", revision=rev)))
        out.append(sm.hash_kv(rev))
    out += [sm.lease_info(i, keys=True) for i in sm.lease_ids()]
    out += [(s.id, s.last_seq, s.last_index, s.outcome) for s in sm.sessions.sessions.values()]
    return out


@pytest.mark.parametrize("seed", range(4))
def test_same_stream_gives_same_results_and_hashes(seed: int) -> None:
    a, out_a = run(seed, 600)
    b, out_b = run(seed, 600)
    assert out_a == out_b
    assert a.state_hash() == b.state_hash() and a.hash_kv() == b.hash_kv()
    assert answers(a) == answers(b)
    c, _ = run(seed + 100, 600)
    assert c.state_hash() != a.state_hash()  # the digest does distinguish states


@pytest.mark.parametrize("seed", range(4))
def test_snapshot_round_trip_equal_state_hash_and_answers(seed: int) -> None:
    sm, _ = run(seed, 800, StateConfig(snapshot_chunk_keys=7))
    chunks = list(sm.snapshot())
    assert len(chunks) > 3
    restored = StateMachine.from_snapshot(chunks)
    assert restored.state_hash() == sm.state_hash()
    assert answers(restored) == answers(sm)
    # and it keeps behaving identically
    rest = workload(seed + 1, 200)
    for index, (req, session, seq) in enumerate(rest, start=sm.applied_index + 1):
        results = []
        for machine in (sm, restored):
            try:
                results.append(machine.apply(index, encode_command(req, session, seq)))
            except StateError as exc:
                results.append(type(exc))
        assert results[0] == results[1]
    assert restored.state_hash() == sm.state_hash()


def test_snapshot_is_a_point_in_time_view_while_applying_continues() -> None:
    sm, _ = run(7, 500, StateConfig(snapshot_chunk_keys=3))
    frozen = answers(sm)
    frozen_hash = sm.state_hash()
    compact_before = sm.compact_revision
    stream = sm.snapshot()
    chunks = [next(stream)]
    more = workload(8, 300)
    for index, (req, session, seq) in enumerate(more, start=sm.applied_index + 1):
        with contextlib.suppress(StateError):
            sm.apply(index, encode_command(req, session, seq))
        chunk = next(stream, None)
        if chunk is not None:
            chunks.append(chunk)
    chunks += list(stream)
    assert sm.compact_revision > compact_before  # compaction happened while streaming
    restored = StateMachine.from_snapshot(chunks)
    assert restored.state_hash() == frozen_hash
    assert answers(restored) == frozen


def damaged_streams() -> list[tuple[str, list[bytes]]]:
    sm, _ = run(3, 200, StateConfig(snapshot_chunk_keys=5))
    chunks = list(sm.snapshot())
    data = b"".join(chunks)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x40
    return [
        ("bit flip", [bytes(flipped)]),
        ("truncated", [data[: len(data) - 3]]),
        ("frame dropped", chunks[:2] + chunks[3:]),
        ("no trailer", chunks[:-1]),
        ("empty", []),
        ("reordered", [chunks[1], chunks[0], *chunks[2:]]),
        ("trailing junk", [*chunks, chunks[-1]]),
    ]


@pytest.mark.parametrize(("name", "chunks"), damaged_streams())
def test_damaged_snapshot_is_refused_and_state_kept(name: str, chunks: list[bytes]) -> None:
    sm = StateMachine()
    sm.apply(1, encode_command(PutRequest(b"mine", b"1")))
    before = sm.state_hash()
    with pytest.raises(CorruptionError):
        sm.restore(chunks)
    assert sm.state_hash() == before, name


def test_unknown_snapshot_version_is_refused() -> None:
    import struct
    import zlib

    import msgspec

    from quorum.state.snapshot import SnapshotHeader

    header = SnapshotHeader(99, 0, 0, 0, 0, 1, (), 1, ())
    payload = b"H" + msgspec.msgpack.encode(header)
    frame = struct.pack(">II", len(payload), zlib.crc32(payload)) + payload
    with pytest.raises(CorruptionError):
        StateMachine.from_snapshot([frame])


def test_record_digest_sees_every_field_and_moved_revisions() -> None:
    import random

    from quorum.state.mvcc import _MASK, pack, record_digest

    rng = random.Random(5)
    recs = [(rng.randint(1, 10**6), rng.randint(1, 10**6), rng.randint(0, 5),
             rng.randbytes(rng.randint(0, 20)), rng.randint(0, 9)) for _ in range(500)]
    keys = [rng.randbytes(5) for _ in recs]
    expected = sum(record_digest(k, pack(r)) for k, r in zip(keys, recs)) & _MASK
    moved = [(recs[1][0], *recs[0][1:]), (recs[0][0], *recs[1][1:]), *recs[2:]]
    assert sum(record_digest(k, pack(r)) for k, r in zip(keys, moved)) & _MASK != expected
    for field in range(5):  # each field alone changes a record's digest
        rec = list(recs[0])
        rec[field] = rec[field] + b"x" if field == 3 else rec[field] + 1  # type: ignore[operator]
        assert record_digest(keys[0], pack(tuple(rec))) != record_digest(keys[0], pack(recs[0]))  # type: ignore[arg-type]


_HASH_SCRIPT = """
import sys, zlib
sys.path.insert(0, {root!r})
from tests.state.test_snapshot import run
from quorum.state import encode_command
sm, outcomes = run(5, 800)
print(sm.state_hash(), sm.hash_kv(), zlib.crc32(repr(outcomes).encode()))
"""


def test_results_do_not_depend_on_the_process_hash_seed() -> None:
    """Replicas are different processes with different str/bytes hash seeds: nothing may
    depend on set or dict iteration order of hashed keys."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[2])

    def outputs(script: str) -> set[str]:
        found = set()
        for seed in ("1", "2", "3"):
            env = {**os.environ, "PYTHONHASHSEED": seed}
            out = subprocess.run([sys.executable, "-c", script], env=env, check=True,
                                 capture_output=True, text=True, cwd=root).stdout
            assert out.strip()
            found.add(out)
        return found

    assert len(outputs(_HASH_SCRIPT.format(root=root))) == 1
    # the check can fail: iterating a set of bytes does depend on the seed
    assert len(outputs("print(list({b'k%d' % i for i in range(20)}))")) > 1

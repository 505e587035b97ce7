"""The packed history representation (quorum.state.mvcc) against a plain model: long
histories cut into runs, reads at every revision, compaction, the running digest, snapshot
views that outlive later writes, and the snapshot format's checks on packed histories."""

from __future__ import annotations

import json
import random
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from quorum.errors import CorruptionError, InvalidRequest
from quorum.state import (
    CompactionRequest,
    DeleteRangeRequest,
    LeaseGrantRequest,
    PutRequest,
    RangeRequest,
    StateConfig,
    StateMachine,
)
from quorum.state.mvcc import (
    _MASK,
    MOD,
    RUN_BYTES,
    TRAILER_SIZE,
    VERSION,
    MVCCStore,
    Record,
    pack,
    record_digest,
    records_of,
    runs_of,
)
from quorum.state.snapshot import _digest_v1

Model = dict[bytes, list[Record]]


def _model_compact(model: Model, revision: int) -> None:
    """etcd's rule, written plainly: keep records above ``revision`` and the newest at or
    below it, unless that one is a tombstone below ``revision``."""
    for key in list(model):
        recs = model[key]
        below = [r for r in recs if r[MOD] <= revision]
        above = [r for r in recs if r[MOD] > revision]
        keep = below[-1:] if below and (below[-1][VERSION] or below[-1][MOD] == revision) else []
        model[key] = keep + above
        if not model[key]:
            del model[key]


def _visible(recs: list[Record], revision: int) -> Record | None:
    older = [r for r in recs if r[MOD] <= revision]
    return older[-1] if older and older[-1][VERSION] else None


def _check(store: MVCCStore, model: Model) -> None:
    assert store.key_count() == len(model)
    expected_digest = 0
    for key, recs in model.items():
        assert store.history(key) == recs
        last = recs[-1]
        assert store.latest(key) == (last if last[VERSION] else None)
        for rev in range(max(store.compact_revision, 1), store.revision + 1):
            assert store.get(key, rev) == _visible(recs, rev), (key, rev)
        for i, rec in enumerate(recs):  # what a watch replays revision by revision
            assert store.written_at(key, rec[MOD]) == (rec, recs[i - 1] if i else None)
        mods = {r[MOD] for r in recs}
        for rev in range(max(store.compact_revision, 1), store.revision + 2):
            if rev not in mods:
                assert store.written_at(key, rev) is None
        expected_digest += sum(record_digest(key, pack(r)) for r in recs)
        entry = store._hist[key]
        for run in runs_of(entry)[:-1]:  # a run stops growing once RUN_BYTES long
            assert len(run) >= RUN_BYTES
    assert store.digest == expected_digest & _MASK
    ranged = list(store.live_in(b"\x01", b"\0", store.revision))
    assert ranged == [(k, model[k][-1]) for k in sorted(model) if model[k][-1][VERSION]]


@pytest.mark.parametrize("seed", range(6))
def test_store_matches_a_model_with_long_histories(seed: int) -> None:
    rng = random.Random(seed)
    store = MVCCStore()
    model: Model = {}
    keys = [b"k%d" % i for i in range(5)]
    views: list[tuple[int, list[bytes], dict[bytes, object], Model]] = []
    saw_runs = False  # a history was cut into a list of runs at some point
    for rev in range(1, 500):
        key = rng.choice(keys)
        prev = store.latest(key)
        if prev is not None and rng.random() < 0.1:
            rec: Record = (rev, 0, 0, b"", 0)
        else:
            create, version = (prev[1], prev[2] + 1) if prev else (rev, 1)
            rec = (rev, create, version, rng.randbytes(rng.choice((0, 5, 90, 300))),
                   rng.choice((0, 0, 7)))
        store.write(key, rec)
        store.commit(rev)
        model.setdefault(key, []).append(rec)
        saw_runs = saw_runs or isinstance(store._hist[key], list)
        if rng.random() < 0.02:
            # often the newest revision: it may be a tombstone, which is kept when AT it
            target = rev if rng.random() < 0.5 else rng.randint(store.compact_revision + 1, rev)
            store.compact(target)
            _model_compact(model, target)
        if rng.random() < 0.03:
            keys_now, hist = store.view()
            views.append((rev, keys_now, dict(hist), {k: list(v) for k, v in model.items()}))
        if rev % 50 == 0:
            _check(store, model)
    _check(store, model)
    assert saw_runs
    for rev, keys_then, hist, model_then in views:  # views still show their point in time
        assert keys_then == sorted(model_then)
        for key in keys_then:
            recs = [r for r in records_of(hist[key]) if r[MOD] <= rev]  # type: ignore[arg-type]
            assert recs == model_then[key]


@pytest.mark.parametrize("versions", [1, 3, 40])  # one run, one run, a list of runs
def test_a_tombstone_at_the_compact_revision_stays_until_the_next_compaction(
        versions: int) -> None:
    store = MVCCStore()
    for rev in range(1, versions + 1):
        store.write(b"k", (rev, 1, rev, b"v" * 50, 0))
        store.commit(rev)
    deleted = versions + 1
    store.write(b"k", (deleted, 0, 0, b"", 0))
    store.commit(deleted)
    store.compact(deleted)  # watch replay from the compact revision still sees the delete
    assert store.history(b"k") == [(deleted, 0, 0, b"", 0)]
    assert store.written_at(b"k", deleted) == ((deleted, 0, 0, b"", 0), None)
    assert store.digest == record_digest(b"k", pack((deleted, 0, 0, b"", 0)))
    store.write(b"j", (deleted + 1, deleted + 1, 1, b"x", 0))
    store.commit(deleted + 1)
    store.compact(deleted + 1)
    assert store.history(b"k") == [] and store.key_count() == 1


def test_a_hot_key_copies_a_bounded_run_per_write() -> None:
    store = MVCCStore()
    for rev in range(1, 2001):
        store.write(b"hot", (rev, 1, rev, b"x" * 100, 0))
        store.commit(rev)
    entry = store._hist[b"hot"]
    assert isinstance(entry, list)
    record = 100 + TRAILER_SIZE
    assert all(RUN_BYTES <= len(run) < RUN_BYTES + record for run in entry[:-1])
    assert len(entry[-1]) < RUN_BYTES + record
    assert store.get(b"hot", 1234) == (1234, 1, 1234, b"x" * 100, 0)


def test_the_revision_log_keeps_one_key_object_per_overwritten_key() -> None:
    """Each request decodes its own copy of the key; the log must not keep one per write."""
    store = MVCCStore()
    for rev in range(1, 101):
        store.write(bytes(bytearray(b"hot")), (rev, 1, rev, b"v", 0))  # a new object each time
        store.commit(rev)
    logged = [key for _, keys in store.logged_revisions(1, 100) for key in keys]
    assert len(logged) == 100 and logged == [b"hot"] * 100
    assert len({id(key) for key in logged}) == 2  # the first put's key, then one for the rest


def _long_history_machine() -> StateMachine:
    sm = StateMachine(StateConfig(snapshot_chunk_keys=2))
    sm.apply(1, LeaseGrantRequest(60, 5))
    index = 1
    for i in range(300):
        index += 1
        sm.apply(index, PutRequest(b"key%d" % (i % 4), b"%0200d" % i, lease=5 if i % 3 else 0))
        if i % 97 == 0:
            index += 1
            sm.apply(index, DeleteRangeRequest(b"key3"))
    index += 1
    sm.apply(index, CompactionRequest(sm.revision - 120))
    return sm


def _answers(sm: StateMachine) -> list[object]:
    out: list[object] = [sm.revision, sm.compact_revision, sm.state_hash(), sm.hash_kv()]
    for rev in range(sm.compact_revision, sm.revision + 1):
        out.append(sm.range(RangeRequest(b"\0", b"\0", revision=rev)))
    out += [sm.lease_info(i, keys=True) for i in sm.lease_ids()]
    return out


def test_snapshot_of_long_histories_is_a_point_in_time_image() -> None:
    sm = _long_history_machine()
    frozen = _answers(sm)
    stream = sm.snapshot()
    chunks = [next(stream)]
    index = sm.applied_index
    for i in range(200):  # writes that grow list entries in place, and a compaction
        index += 1
        sm.apply(index, PutRequest(b"key%d" % (i % 4), b"%0200d" % (i + 1000)))
        if i == 150:
            index += 1
            sm.apply(index, CompactionRequest(sm.revision - 10))
        chunk = next(stream, None)
        if chunk is not None:
            chunks.append(chunk)
    chunks += list(stream)
    restored = StateMachine.from_snapshot(chunks)
    assert _answers(restored) == frozen
    long_entries = [e for e in restored.store._hist.values() if isinstance(e, list)]
    assert long_entries  # a restored long history is cut into runs again
    assert all(len(run) >= RUN_BYTES for entry in long_entries for run in entry[:-1])


# --- snapshot format checks (each test breaks one rule the restore enforces) ---------------

_FRAME = struct.Struct(">II")
_KEY_FRAME = msgspec.msgpack.Decoder(tuple[list[bytes], list[bytes]])


def _frames(chunks: list[bytes]) -> list[bytes]:
    data, out, at = b"".join(chunks), [], 0
    while at < len(data):
        size, _ = _FRAME.unpack_from(data, at)
        out.append(data[at + _FRAME.size:at + _FRAME.size + size])
        at += _FRAME.size + size
    return out


def _reframe(payloads: list[bytes]) -> list[bytes]:
    return [_FRAME.pack(len(p), zlib.crc32(p)) + p for p in payloads]


def _edit_history(chunks: list[bytes], edit: Callable[[bytes], bytes]) -> list[bytes]:
    """The stream with ``edit`` applied to the first multi-record history, frame checksums
    recomputed (so only the restore's own checks can notice)."""
    payloads = _frames(chunks)
    for n, payload in enumerate(payloads):
        if payload[:1] != b"K":
            continue
        keys, histories = _KEY_FRAME.decode(payload[1:])
        for i, run in enumerate(histories):
            if len(records_of(run)) > 1:
                histories[i] = edit(run)
                payloads[n] = b"K" + msgspec.msgpack.encode((keys, histories))
                return _reframe(payloads)
    raise AssertionError("no multi-record history in the stream")


def _swap_first_two(run: bytes) -> bytes:
    recs = records_of(run)
    return b"".join(map(pack, [recs[1], recs[0], *recs[2:]]))


def _bump_version(run: bytes) -> bytes:
    recs = records_of(run)
    first = recs[0]
    return b"".join(map(pack, [(first[0], first[1], first[2] + 1, first[3], first[4]), *recs[1:]]))


@pytest.mark.parametrize(("name", "edit", "message"), [
    ("records out of revision order", _swap_first_two, "out of revision order"),
    ("a changed record", _bump_version, "digest mismatch"),
    ("a cut record", lambda run: run[5:], "unreadable"),
])
def test_restore_refuses_a_damaged_history(name: str, edit: Callable[[bytes], bytes],
                                           message: str) -> None:
    sm = _long_history_machine()
    chunks = list(sm.snapshot())
    assert _answers(StateMachine.from_snapshot(_reframe(_frames(chunks)))) == _answers(sm)
    with pytest.raises(CorruptionError, match=message):
        StateMachine.from_snapshot(_edit_history(chunks, edit))


def _v1_stream(sm: StateMachine) -> list[bytes]:
    """The stream a version 1 writer produced for ``sm``: the same header (version 1) and
    trailer, key frames column-wise ``[keys, counts, mods, creates, versions, values,
    leases]``."""
    payloads = _frames(list(sm.snapshot()))
    header = msgspec.msgpack.decode(payloads[0][1:])
    header[0] = 1
    out = [b"H" + msgspec.msgpack.encode(header)]
    keys = sorted(sm.store._hist)
    digest = 0
    for start in range(0, len(keys), 3):
        batch = keys[start:start + 3]
        histories = [sm.store.history(k) for k in batch]
        recs = [r for h in histories for r in h]
        counts = [len(h) for h in histories]
        columns = [[r[i] for r in recs] for i in range(5)]
        out.append(b"K" + msgspec.msgpack.encode((batch, counts, *columns)))
        rec_keys = [k for k, h in zip(batch, histories) for _ in h]
        digest += _digest_v1(rec_keys, *columns)  # (the format 1 writer's trailer digest)
    out.append(b"T" + msgspec.msgpack.encode((len(keys), digest & (2**64 - 1))))
    return _reframe(out)


V1_DATA = Path(__file__).parent / "data"


def test_a_snapshot_written_by_the_version_1_writer_restores_with_its_answers() -> None:
    # v1_snapshot.bin was written by the format 1 code itself (data/make_v1_snapshot.py run
    # against commit ec25af5), and v1_snapshot.json holds the answers that machine gave; its
    # trailer carries format 1's digest, which a restore must check as format 1's.
    stream = (V1_DATA / "v1_snapshot.bin").read_bytes()
    expected = json.loads((V1_DATA / "v1_snapshot.json").read_text())
    sm = StateMachine.from_snapshot([stream[i:i + 100] for i in range(0, len(stream), 100)])
    assert [sm.revision, sm.compact_revision, sm.applied_index] == [
        expected["revision"], expected["compact_revision"], expected["applied_index"]]
    assert list(sm.hash_kv()) == expected["hash_kv"]
    for rev, kvs in zip(range(sm.compact_revision, sm.revision + 1), expected["ranges"],
                        strict=True):
        resp = sm.range(RangeRequest(b"\0", b"\0", revision=rev))
        assert [[kv.key.hex(), kv.value.hex(), kv.create_revision, kv.mod_revision, kv.version,
                 kv.lease] for kv in resp.kvs] == kvs


def test_a_version_1_snapshot_with_a_changed_record_is_refused() -> None:
    # a value changed inside a key frame whose frame checksum was recomputed: only the
    # format 1 digest in the trailer can tell
    payloads = _frames([(V1_DATA / "v1_snapshot.bin").read_bytes()])
    keys, counts, mods, creates, versions, values, leases = msgspec.msgpack.decode(payloads[1][1:])
    values[0] = values[0][:-1] + b"!"
    payloads[1] = b"K" + msgspec.msgpack.encode((keys, counts, mods, creates, versions, values,
                                                 leases))
    with pytest.raises(CorruptionError, match="digest mismatch"):
        StateMachine.from_snapshot(_reframe(payloads))


def test_a_version_1_stream_still_restores_to_an_equal_state() -> None:
    sm = _long_history_machine()
    restored = StateMachine.from_snapshot(_v1_stream(sm))
    assert _answers(restored) == _answers(sm)
    assert restored.state_hash() == sm.state_hash()


def test_lease_ids_beyond_int64_are_refused() -> None:
    sm = StateMachine()
    with pytest.raises(InvalidRequest):
        sm.apply(1, LeaseGrantRequest(10, 1 << 63))
    assert sm.apply(2, LeaseGrantRequest(10, (1 << 63) - 1)).id == (1 << 63) - 1


def test_restore_refuses_a_newest_record_longer_than_its_history() -> None:
    """A history whose newest record claims more bytes than the history holds, in a frame
    where another key's extra records make the frame's byte totals add up (and the trailer
    digest made to match what a reader without the per-key length check would compute)."""
    sm = StateMachine(StateConfig(snapshot_chunk_keys=10))
    sm.apply(1, PutRequest(b"a", b"first"))
    sm.apply(2, PutRequest(b"a", b"second"))
    sm.apply(3, PutRequest(b"b", b"only"))
    payloads = _frames(list(sm.snapshot()))
    keys, histories = _KEY_FRAME.decode(payloads[1][1:])
    assert keys == [b"a", b"b"]
    a, b = histories
    extra = len(records_of(a)[0][3]) + TRAILER_SIZE  # a's older record
    size = struct.unpack(">I", b[-4:])[0]
    damaged = b[:-4] + struct.pack(">I", size + extra)
    payloads[1] = b"K" + msgspec.msgpack.encode((keys, [a, damaged]))
    trailer = msgspec.msgpack.decode(payloads[-1][1:])
    trailer[1] = (sm.store.digest - sum(record_digest(b"a", pack(r)) for r in records_of(a))
                  + record_digest(b"a", a) - record_digest(b"b", b)
                  + record_digest(b"b", damaged)) & _MASK
    payloads[-1] = b"T" + msgspec.msgpack.encode(trailer)
    with pytest.raises(CorruptionError, match="shorter than its newest record"):
        StateMachine.from_snapshot(_reframe(payloads))

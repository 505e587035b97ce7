"""Pure pieces of the etcd surface: error translation, snapshot file shape, conversions,
watch fragmentation."""

from __future__ import annotations

import grpc
import pytest

from quorum import errors
from quorum.api.backend import WatchResponse
from quorum.api.etcd import convert, snapshot_file
from quorum.api.etcd.gen import etcd_rpc_pb2 as pb
from quorum.api.etcd.status import status_of
from quorum.api.etcd.watch import fragments
from quorum.state import commands as sc

C = grpc.StatusCode


@pytest.mark.parametrize(
    ("exc", "code", "text"),
    [
        (errors.RevisionCompacted(5), C.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted"),
        (errors.FutureRevision(9), C.OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision"),
        (errors.LeaseNotFound(), C.NOT_FOUND, "etcdserver: requested lease not found"),
        (errors.TooManyOps(), C.INVALID_ARGUMENT, "etcdserver: too many operations in txn request"),
        (errors.DuplicateKey(), C.INVALID_ARGUMENT, "etcdserver: duplicate key given in txn request"),
        (errors.RequestTooLarge(), C.INVALID_ARGUMENT, "etcdserver: request is too large"),
        (errors.KeyEmpty(), C.INVALID_ARGUMENT, "etcdserver: key is not provided"),
        (errors.NoLeader(), C.UNAVAILABLE, "etcdserver: no leader"),
        (errors.NotLeader(leader_id=2), C.FAILED_PRECONDITION, "etcdserver: not leader"),
        (errors.LeaderChanged(), C.UNAVAILABLE, "etcdserver: leader changed"),
        (errors.RequestTimeout(), C.UNAVAILABLE, "etcdserver: request timed out"),
        (errors.NodeStopped(), C.UNAVAILABLE, "etcdserver: server stopped"),
        (errors.MemberNotFound(), C.NOT_FOUND, "etcdserver: member not found"),
        (errors.LearnerNotReady(), C.FAILED_PRECONDITION,
         "etcdserver: can only promote a learner member which is in sync with leader"),
        (errors.NotSupported("no way"), C.UNIMPLEMENTED, "no way"),
    ],
)
def test_errors_map_to_etcd_codes_and_texts(exc: BaseException, code: grpc.StatusCode, text: str) -> None:
    assert status_of(exc) == (code, text)


def test_a_subclass_inherits_its_parents_translation() -> None:
    class NewLeaderProblem(errors.NoLeader):
        pass

    assert status_of(NewLeaderProblem()) == (C.UNAVAILABLE, "etcdserver: no leader")


def test_unexpected_exceptions_are_unknown_without_leaking_internals() -> None:
    code, text = status_of(ZeroDivisionError("secret detail"))
    assert code == C.UNKNOWN and "secret detail" not in text


def test_snapshot_file_shape_and_roundtrip() -> None:
    for size in (0, 1, 479, 480, 481, 5000):
        stream = bytes(range(256)) * (size // 256) + b"q" * (size % 256)
        data = snapshot_file.wrap(stream)
        assert len(data) % 512 == 32
        assert snapshot_file.unwrap(data) == stream


@pytest.mark.parametrize("where", [0, 100, -40, -1])
def test_snapshot_file_detects_damage(where: int) -> None:
    data = bytearray(snapshot_file.wrap(b"state" * 100))
    data[where] ^= 0x01
    with pytest.raises(errors.CorruptionError):
        snapshot_file.unwrap(bytes(data))


def test_snapshot_file_detects_truncation() -> None:
    data = snapshot_file.wrap(b"state" * 100)
    with pytest.raises(errors.CorruptionError):
        snapshot_file.unwrap(data[:-512])


def test_compare_reads_the_operand_named_by_its_target() -> None:
    # etcd picks the operand by target, whichever oneof member the client happened to set
    c = pb.Compare(key=b"k", target=pb.Compare.MOD, result=pb.Compare.LESS, mod_revision=7)
    assert convert.compare_from_pb(c) == sc.Compare(
        b"k", sc.CompareTarget.MOD, sc.CompareResult.LESS, 7
    )
    v = pb.Compare(key=b"k", target=pb.Compare.VALUE, value=b"x", range_end=b"l")
    assert convert.compare_from_pb(v).value == b"x" and convert.compare_from_pb(v).range_end == b"l"
    unset = pb.Compare(key=b"k", target=pb.Compare.VERSION)
    assert convert.compare_from_pb(unset).value == 0


def test_read_only_txn_detection_looks_into_nested_txns() -> None:
    read = sc.TxnRequest(success=(sc.RangeRequest(b"a"), sc.TxnRequest(failure=(sc.RangeRequest(b"b"),))))
    assert convert.txn_is_read_only(read)
    nested_write = sc.TxnRequest(success=(sc.TxnRequest(failure=(sc.PutRequest(b"b"),)),))
    assert not convert.txn_is_read_only(nested_write)


def _events(n: int, value_bytes: int) -> tuple[sc.Event, ...]:
    return tuple(
        sc.Event(sc.EventType.PUT, sc.KeyValue(b"k%03d" % i, b"v" * value_bytes, 5, 5, 1))
        for i in range(n)
    )


def test_fragments_respect_the_limit_and_keep_order() -> None:
    resp = WatchResponse(3, 5, _events(20, 100))
    header = pb.ResponseHeader(revision=5)
    parts = fragments(3, resp, header, limit_bytes=500)
    assert len(parts) > 1
    assert [p.fragment for p in parts] == [True] * (len(parts) - 1) + [False]
    assert all(sum(e.ByteSize() for e in p.events) <= 500 for p in parts)
    assert [e.kv.key for p in parts for e in p.events] == [b"k%03d" % i for i in range(20)]


def test_an_event_larger_than_the_limit_travels_alone() -> None:
    parts = fragments(1, WatchResponse(1, 5, _events(3, 2000)), pb.ResponseHeader(), 500)
    assert [len(p.events) for p in parts] == [1, 1, 1]


def test_small_responses_are_not_split() -> None:
    parts = fragments(1, WatchResponse(1, 5, _events(3, 10)), pb.ResponseHeader(), 10_000)
    assert len(parts) == 1 and not parts[0].fragment


def test_member_client_urls_prefer_the_etcd_endpoints() -> None:
    from quorum.api.backend import Member
    from quorum.api.etcd.maintenance import member_pb

    both = Member(1, "n1", ("http://p:1",), ("http://native:2", "http://etcd:3"), False, ("http://etcd:3",))
    assert list(member_pb(both).clientURLs) == ["http://etcd:3"]
    plain = Member(2, "n2", ("http://p:1",), ("http://c:2",))
    assert list(member_pb(plain).clientURLs) == ["http://c:2"]


@pytest.mark.parametrize("ids", [(0, 0, 0), (0xABCDEF0123, 7, 3)])
def test_headers_written_in_place_match_a_separately_built_header(ids: tuple[int, int, int]) -> None:
    # fill_header writes the header fields into the response instead of copying a built
    # header in; the bytes on the wire must be the same, including a present all-zero header.
    from quorum.api.backend import ResponseHeader

    cluster, member, term = ids
    h = ResponseHeader(cluster, member, 99, term)
    kv = sc.KeyValue(key=b"k", create_revision=2, mod_revision=4, version=2, value=b"v")
    put = sc.PutResponse(revision=5, prev_kv=kv)
    rng = sc.RangeResponse(revision=6, kvs=(kv,), more=True, count=3)
    dele = sc.DeleteRangeResponse(revision=7, deleted=1, prev_kvs=(kv,))
    txn = sc.TxnResponse(revision=8, succeeded=True, responses=(put, rng, dele))

    def header(rev: int) -> pb.ResponseHeader:
        return pb.ResponseHeader(cluster_id=cluster, member_id=member, revision=rev, raft_term=term)

    expected_put = pb.PutResponse(header=header(5), prev_kv=convert.kv_pb(kv))
    expected_rng = pb.RangeResponse(header=header(6), kvs=[convert.kv_pb(kv)], more=True, count=3)
    expected_del = pb.DeleteRangeResponse(header=header(7), deleted=1, prev_kvs=[convert.kv_pb(kv)])
    expected_txn = pb.TxnResponse(header=header(8), succeeded=True, responses=[
        pb.ResponseOp(response_put=expected_put), pb.ResponseOp(response_range=expected_rng),
        pb.ResponseOp(response_delete_range=expected_del)])
    assert convert.put_pb(put, h).SerializeToString() == expected_put.SerializeToString()
    assert convert.range_pb(rng, h).SerializeToString() == expected_rng.SerializeToString()
    assert convert.delete_pb(dele, h).SerializeToString() == expected_del.SerializeToString()
    assert convert.txn_pb(txn, h).SerializeToString() == expected_txn.SerializeToString()
    assert convert.put_pb(put, h).HasField("header")

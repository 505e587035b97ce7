"""Differential test of the etcd translation: random request sequences sent through gRPC to a
LocalBackend give the same answers as the same requests applied directly to a StateMachine.
A field mapped wrongly (an enum, a compare operand, a flag, a nested response) shows up as a
difference."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quorum.api.etcd.gen import etcd_rpc_pb2 as pb
from quorum.api.etcd.gen import etcd_rpc_pb2_grpc as rpc
from quorum.api.etcd.server import serve_etcd
from quorum.api.local import LocalBackend
from quorum.errors import StateError
from quorum.state import StateMachine
from quorum.state import commands as sc

KEYS = [b"a", b"b", b"ba", b"c", b"d"]
keys = st.sampled_from(KEYS)
values = st.binary(max_size=3)


def range_ends(key: bytes) -> st.SearchStrategy[bytes]:
    return st.sampled_from([b"", b"\0", sc.prefix_end(key), b"e"])


@st.composite
def range_req(draw: st.DrawFn) -> pb.RangeRequest:
    key = draw(keys)
    return pb.RangeRequest(
        key=key, range_end=draw(range_ends(key)), limit=draw(st.integers(0, 3)),
        sort_order=draw(st.sampled_from([0, 1, 2])), sort_target=draw(st.sampled_from([0, 1, 2, 3, 4])),
        keys_only=draw(st.booleans()), count_only=draw(st.booleans()),
        min_mod_revision=draw(st.sampled_from([0, 0, 2])),
        max_create_revision=draw(st.sampled_from([0, 0, 5])),
    )


@st.composite
def put_req(draw: st.DrawFn) -> pb.PutRequest:
    return pb.PutRequest(key=draw(keys), value=draw(values), prev_kv=draw(st.booleans()),
                         lease=draw(st.sampled_from([0, 0, 1, 2])))


@st.composite
def delete_req(draw: st.DrawFn) -> pb.DeleteRangeRequest:
    key = draw(keys)
    return pb.DeleteRangeRequest(key=key, range_end=draw(range_ends(key)), prev_kv=draw(st.booleans()))


@st.composite
def compare(draw: st.DrawFn) -> pb.Compare:
    target = draw(st.sampled_from([0, 1, 2, 3]))
    c = pb.Compare(key=draw(keys), target=target, result=draw(st.sampled_from([0, 1, 2, 3])))
    if target == pb.Compare.VALUE:
        c.value = draw(values)
    elif target == pb.Compare.VERSION:
        c.version = draw(st.integers(0, 3))
    elif target == pb.Compare.CREATE:
        c.create_revision = draw(st.integers(0, 6))
    else:
        c.mod_revision = draw(st.integers(0, 6))
    if draw(st.booleans()):
        c.range_end = sc.prefix_end(c.key)
    return c


def op(depth: int) -> st.SearchStrategy[pb.RequestOp]:
    leaves = st.one_of(
        range_req().map(lambda r: pb.RequestOp(request_range=r)),
        put_req().map(lambda r: pb.RequestOp(request_put=r)),
        delete_req().map(lambda r: pb.RequestOp(request_delete_range=r)),
    )
    if depth == 0:
        return leaves
    return st.one_of(leaves, txn_req(depth - 1).map(lambda t: pb.RequestOp(request_txn=t)))


def txn_req(depth: int = 1) -> st.SearchStrategy[pb.TxnRequest]:
    return st.builds(
        lambda c, s, f: pb.TxnRequest(compare=c, success=s, failure=f),
        st.lists(compare(), max_size=2), st.lists(op(depth), max_size=3), st.lists(op(depth), max_size=3),
    )


requests = st.lists(
    st.one_of(range_req(), put_req(), delete_req(), txn_req(),
              st.integers(0, 4).map(lambda r: pb.CompactionRequest(revision=r)),
              st.builds(lambda t, i: pb.LeaseGrantRequest(TTL=t, ID=i),
                        st.sampled_from([0, 5, 100]), st.sampled_from([0, 0, 1, 2])),
              st.sampled_from([1, 2, 3]).map(lambda i: pb.LeaseRevokeRequest(ID=i))),
    min_size=1, max_size=12,
)


def kv_tuple(kv: Any) -> tuple[Any, ...]:
    return (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)


def pb_shape(resp: Any) -> Any:
    """A comparable summary of a protobuf response (header revision included)."""
    if isinstance(resp, pb.RangeResponse):
        return ("range", resp.header.revision, [kv_tuple(k) for k in resp.kvs], resp.more, resp.count)
    if isinstance(resp, pb.PutResponse):
        prev = kv_tuple(resp.prev_kv) if resp.HasField("prev_kv") else None
        return ("put", resp.header.revision, prev)
    if isinstance(resp, pb.DeleteRangeResponse):
        return ("delete", resp.header.revision, resp.deleted, [kv_tuple(k) for k in resp.prev_kvs])
    if isinstance(resp, pb.TxnResponse):
        inner = [pb_shape(getattr(r, r.WhichOneof("response"))) for r in resp.responses]
        return ("txn", resp.header.revision, resp.succeeded, inner)
    if isinstance(resp, pb.LeaseGrantResponse):
        return ("grant", resp.header.revision, resp.ID, resp.TTL)
    if isinstance(resp, pb.LeaseRevokeResponse):
        return ("revoke", resp.header.revision)
    return ("compact", resp.header.revision)


def state_shape(resp: Any) -> Any:
    if isinstance(resp, sc.RangeResponse):
        return ("range", resp.revision, [kv_tuple(k) for k in resp.kvs], resp.more, resp.count)
    if isinstance(resp, sc.PutResponse):
        return ("put", resp.revision, kv_tuple(resp.prev_kv) if resp.prev_kv else None)
    if isinstance(resp, sc.DeleteRangeResponse):
        return ("delete", resp.revision, resp.deleted, [kv_tuple(k) for k in resp.prev_kvs])
    if isinstance(resp, sc.TxnResponse):
        return ("txn", resp.revision, resp.succeeded, [state_shape(r) for r in resp.responses])
    if isinstance(resp, sc.LeaseGrantResponse):
        return ("grant", resp.revision, resp.id, resp.ttl)
    if isinstance(resp, sc.LeaseRevokeResponse):
        return ("revoke", resp.revision)
    return ("compact", resp.revision)


def to_state(req: Any) -> Any:
    """The reference translation, written independently of quorum.api.etcd.convert."""
    if isinstance(req, pb.RangeRequest):
        return sc.RangeRequest(
            req.key, req.range_end, req.limit, req.revision, sc.SortOrder(req.sort_order),
            sc.SortTarget(req.sort_target), req.keys_only, req.count_only, req.min_mod_revision,
            req.max_mod_revision, req.min_create_revision, req.max_create_revision,
        )
    if isinstance(req, pb.PutRequest):
        return sc.PutRequest(req.key, req.value, req.lease, req.prev_kv, req.ignore_value,
                             req.ignore_lease)
    if isinstance(req, pb.DeleteRangeRequest):
        return sc.DeleteRangeRequest(req.key, req.range_end, req.prev_kv)
    if isinstance(req, pb.RequestOp):
        return to_state(getattr(req, req.WhichOneof("request")))
    if isinstance(req, pb.TxnRequest):
        return sc.TxnRequest(
            tuple(compare_to_state(c) for c in req.compare),
            tuple(to_state(o) for o in req.success), tuple(to_state(o) for o in req.failure),
        )
    if isinstance(req, pb.LeaseGrantRequest):
        return sc.LeaseGrantRequest(req.TTL, req.ID)
    if isinstance(req, pb.LeaseRevokeRequest):
        return sc.LeaseRevokeRequest(req.ID)
    return sc.CompactionRequest(req.revision, req.physical)


def compare_to_state(c: pb.Compare) -> sc.Compare:
    operand = {0: c.version, 1: c.create_revision, 2: c.mod_revision, 3: c.value, 4: c.lease}
    return sc.Compare(c.key, sc.CompareTarget(c.target), sc.CompareResult(c.result),
                      operand[c.target], c.range_end)


def direct(machine: StateMachine, index: int, req: Any) -> Any:
    """The same request straight into a state machine (the reference)."""
    if isinstance(req, pb.RangeRequest):
        return machine.range(to_state(req))
    return machine.apply(index, to_state(req))


async def through_grpc(kv: rpc.KVStub, lease: rpc.LeaseStub, req: Any) -> Any:
    call = {pb.RangeRequest: kv.Range, pb.PutRequest: kv.Put, pb.DeleteRangeRequest: kv.DeleteRange,
            pb.TxnRequest: kv.Txn, pb.CompactionRequest: kv.Compact,
            pb.LeaseGrantRequest: lease.LeaseGrant, pb.LeaseRevokeRequest: lease.LeaseRevoke,
            }[type(req)]
    return await call(req)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests)
def test_grpc_answers_equal_the_state_machine(reqs: list[Any]) -> None:
    check_sequence(reqs)


@pytest.mark.torture
@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests)
def test_grpc_answers_equal_the_state_machine_long(reqs: list[Any]) -> None:
    check_sequence(reqs)


def check_sequence(reqs: list[Any]) -> None:
    async def main() -> None:
        backend = LocalBackend()
        server, port = await serve_etcd(backend, "127.0.0.1", 0)
        machine = StateMachine()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                kv, lease = rpc.KVStub(channel), rpc.LeaseStub(channel)
                for index, req in enumerate(reqs, start=1):
                    try:
                        expected: Any = state_shape(direct(machine, index, req))
                    except StateError as exc:
                        expected = ("error", type(exc).__name__)
                    try:
                        got: Any = pb_shape(await through_grpc(kv, lease, req))
                    except grpc.aio.AioRpcError as err:
                        got = ("error", err.details())
                    if expected[0] == "error":
                        assert got[0] == "error", (req, expected, got)
                    else:
                        assert got == expected, req
        finally:
            await server.stop(None)
        assert backend.state_machine.state_hash() == machine.state_hash()

    asyncio.run(main())

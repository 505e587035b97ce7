"""Translation between the etcd protobuf messages and quorum.state's command structs.

The state machine follows etcd's data model field for field, so every function here is a
plain copy; nothing is computed. Decoding validates only what protobuf cannot express (the
state machine checks everything else and raises typed errors).
"""

from __future__ import annotations

from quorum.api.backend import ResponseHeader, WatchCreate
from quorum.api.etcd.gen import etcd_kv_pb2 as kvpb
from quorum.api.etcd.gen import etcd_rpc_pb2 as pb
from quorum.state import commands as sc

# --- requests: protobuf -> state ------------------------------------------------------------


def range_from_pb(r: pb.RangeRequest) -> sc.RangeRequest:
    return sc.RangeRequest(
        key=r.key,
        range_end=r.range_end,
        limit=r.limit,
        revision=r.revision,
        sort_order=sc.SortOrder(r.sort_order),
        sort_target=sc.SortTarget(r.sort_target),
        keys_only=r.keys_only,
        count_only=r.count_only,
        min_mod_revision=r.min_mod_revision,
        max_mod_revision=r.max_mod_revision,
        min_create_revision=r.min_create_revision,
        max_create_revision=r.max_create_revision,
    )


def put_from_pb(r: pb.PutRequest) -> sc.PutRequest:
    return sc.PutRequest(
        key=r.key, value=r.value, lease=r.lease, prev_kv=r.prev_kv,
        ignore_value=r.ignore_value, ignore_lease=r.ignore_lease,
    )


def delete_from_pb(r: pb.DeleteRangeRequest) -> sc.DeleteRangeRequest:
    return sc.DeleteRangeRequest(key=r.key, range_end=r.range_end, prev_kv=r.prev_kv)


def compare_from_pb(c: pb.Compare) -> sc.Compare:
    # etcd reads the operand named by the target, whichever oneof member the client set.
    target = sc.CompareTarget(c.target)
    operand: int | bytes
    if target == sc.CompareTarget.VALUE:
        operand = c.value
    elif target == sc.CompareTarget.VERSION:
        operand = c.version
    elif target == sc.CompareTarget.CREATE:
        operand = c.create_revision
    elif target == sc.CompareTarget.MOD:
        operand = c.mod_revision
    else:
        operand = c.lease
    return sc.Compare(
        key=c.key, target=target, result=sc.CompareResult(c.result), value=operand,
        range_end=c.range_end,
    )


def op_from_pb(op: pb.RequestOp) -> sc.RequestOp:
    kind = op.WhichOneof("request")
    if kind == "request_range":
        return range_from_pb(op.request_range)
    if kind == "request_put":
        return put_from_pb(op.request_put)
    if kind == "request_delete_range":
        return delete_from_pb(op.request_delete_range)
    if kind == "request_txn":
        return txn_from_pb(op.request_txn)
    # An empty RequestOp: etcd treats it as an empty range of the empty key, which fails the
    # key check; say so in the same words.
    return sc.RangeRequest(key=b"")


def txn_from_pb(t: pb.TxnRequest) -> sc.TxnRequest:
    return sc.TxnRequest(
        compare=tuple(compare_from_pb(c) for c in t.compare),
        success=tuple(op_from_pb(o) for o in t.success),
        failure=tuple(op_from_pb(o) for o in t.failure),
    )


def txn_is_read_only(t: sc.TxnRequest) -> bool:
    """True when every operation of both branches (nested txns included) is a range."""
    for op in (*t.success, *t.failure):
        if isinstance(op, sc.TxnRequest):
            if not txn_is_read_only(op):
                return False
        elif not isinstance(op, sc.RangeRequest):
            return False
    return True


def watch_create_from_pb(w: pb.WatchCreateRequest) -> WatchCreate:
    return WatchCreate(
        key=w.key,
        range_end=w.range_end,
        start_revision=w.start_revision,
        prev_kv=w.prev_kv,
        filters=tuple(sc.WatchFilter(f) for f in w.filters),
        progress_notify=w.progress_notify,
        watch_id=w.watch_id,
    )


# --- responses: state -> protobuf -----------------------------------------------------------


def header_pb(h: ResponseHeader, revision: int | None = None) -> pb.ResponseHeader:
    """The header; ``revision`` (the revision the answer reflects) overrides the current one."""
    return pb.ResponseHeader(
        cluster_id=h.cluster_id, member_id=h.member_id,
        revision=h.revision if revision is None else revision, raft_term=h.raft_term,
    )


def fill_header(dst: pb.ResponseHeader, h: ResponseHeader, revision: int) -> None:
    """Write the header into a response's own header field. Passing a built header to a
    message constructor copies it; writing the four fields in place costs less than half
    (about 1 us against 2.4 us per response here, measured with timeit)."""
    dst.cluster_id = h.cluster_id
    dst.member_id = h.member_id
    dst.revision = revision
    dst.raft_term = h.raft_term


def kv_pb(kv: sc.KeyValue) -> kvpb.KeyValue:
    return kvpb.KeyValue(
        key=kv.key, value=kv.value, create_revision=kv.create_revision,
        mod_revision=kv.mod_revision, version=kv.version, lease=kv.lease,
    )


def event_pb(ev: sc.Event) -> kvpb.Event:
    out = kvpb.Event(type=int(ev.type), kv=kv_pb(ev.kv))  # type: ignore[arg-type]
    if ev.prev_kv is not None:
        out.prev_kv.CopyFrom(kv_pb(ev.prev_kv))
    return out


def range_pb(r: sc.RangeResponse, h: ResponseHeader) -> pb.RangeResponse:
    out = pb.RangeResponse(kvs=[kv_pb(kv) for kv in r.kvs], more=r.more, count=r.count)
    fill_header(out.header, h, r.revision)
    return out


def put_pb(r: sc.PutResponse, h: ResponseHeader) -> pb.PutResponse:
    out = pb.PutResponse()
    fill_header(out.header, h, r.revision)
    if r.prev_kv is not None:
        out.prev_kv.CopyFrom(kv_pb(r.prev_kv))
    return out


def delete_pb(r: sc.DeleteRangeResponse, h: ResponseHeader) -> pb.DeleteRangeResponse:
    out = pb.DeleteRangeResponse(deleted=r.deleted, prev_kvs=[kv_pb(kv) for kv in r.prev_kvs])
    fill_header(out.header, h, r.revision)
    return out


def op_response_pb(r: sc.ResponseOp, h: ResponseHeader) -> pb.ResponseOp:
    if isinstance(r, sc.RangeResponse):
        return pb.ResponseOp(response_range=range_pb(r, h))
    if isinstance(r, sc.PutResponse):
        return pb.ResponseOp(response_put=put_pb(r, h))
    if isinstance(r, sc.DeleteRangeResponse):
        return pb.ResponseOp(response_delete_range=delete_pb(r, h))
    return pb.ResponseOp(response_txn=txn_pb(r, h))


def txn_pb(r: sc.TxnResponse, h: ResponseHeader) -> pb.TxnResponse:
    out = pb.TxnResponse(
        succeeded=r.succeeded, responses=[op_response_pb(x, h) for x in r.responses]
    )
    fill_header(out.header, h, r.revision)
    return out

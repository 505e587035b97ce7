"""Translate quorum's typed errors into the gRPC status codes and texts etcd uses.

etcd clients match on the code and often on the exact message text (etcdctl prints it, client
libraries map it back to error values), so both follow etcd v3.4's ``rpctypes`` table.
Errors are looked up by class name along the MRO, so a subclass added later inherits its
parent's translation, and this module needs no import of every error class.
"""

from __future__ import annotations

import logging

import grpc

from quorum.errors import QuorumError

log = logging.getLogger(__name__)

C = grpc.StatusCode

# class name -> (code, message); message None = the error's own text (etcd-worded already).
_TABLE: dict[str, tuple[grpc.StatusCode, str | None]] = {
    # state machine (its messages are etcd's texts)
    "KeyEmpty": (C.INVALID_ARGUMENT, "etcdserver: key is not provided"),
    "RequestTooLarge": (C.INVALID_ARGUMENT, "etcdserver: request is too large"),
    "TooManyOps": (C.INVALID_ARGUMENT, "etcdserver: too many operations in txn request"),
    "DuplicateKey": (C.INVALID_ARGUMENT, "etcdserver: duplicate key given in txn request"),
    "ValueProvided": (C.INVALID_ARGUMENT, "etcdserver: value is provided"),
    "LeaseProvided": (C.INVALID_ARGUMENT, "etcdserver: lease is provided"),
    "KeyNotFound": (C.INVALID_ARGUMENT, "etcdserver: key not found"),
    "InvalidTTL": (C.INVALID_ARGUMENT, None),
    "InvalidRequest": (C.INVALID_ARGUMENT, None),
    "RevisionCompacted": (C.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted"),
    "FutureRevision": (C.OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision"),
    "LeaseNotFound": (C.NOT_FOUND, "etcdserver: requested lease not found"),
    "LeaseExists": (C.FAILED_PRECONDITION, "etcdserver: lease already exists"),
    "StateError": (C.INVALID_ARGUMENT, None),
    # consensus and runtime
    "NoLeader": (C.UNAVAILABLE, "etcdserver: no leader"),
    "NotLeader": (C.FAILED_PRECONDITION, "etcdserver: not leader"),
    "TransferInProgress": (C.UNAVAILABLE, "etcdserver: leader changed"),
    "UncommittedLogFull": (C.RESOURCE_EXHAUSTED, "etcdserver: too many requests"),
    # transient: another membership change is in flight; etcd clients retry UNAVAILABLE
    "ConfChangePending": (C.UNAVAILABLE, "etcdserver: unhealthy cluster"),
    "ProposalDropped": (C.UNAVAILABLE, "etcdserver: no leader"),
    "LeaderChanged": (C.UNAVAILABLE, "etcdserver: leader changed"),
    "RequestTimeout": (C.UNAVAILABLE, "etcdserver: request timed out"),
    "NodeStopped": (C.UNAVAILABLE, "etcdserver: server stopped"),
    "DiskFullError": (C.RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded"),
    # membership
    "MemberNotFound": (C.NOT_FOUND, "etcdserver: member not found"),
    "MemberExists": (C.FAILED_PRECONDITION, "etcdserver: member ID already exist"),
    "PeerURLExists": (C.FAILED_PRECONDITION, "etcdserver: Peer URLs already exists"),
    "MemberNotLearner": (C.FAILED_PRECONDITION, "etcdserver: can only promote a learner member"),
    "LearnerNotReady": (
        C.FAILED_PRECONDITION,
        "etcdserver: can only promote a learner member which is in sync with leader",
    ),
    "TooManyLearners": (C.FAILED_PRECONDITION, "etcdserver: too many learner members in cluster"),
    "InvalidConfChange": (C.FAILED_PRECONDITION, None),
    "BadLeaderTransferee": (C.FAILED_PRECONDITION, "etcdserver: bad leader transferee"),
    "NotSupported": (C.UNIMPLEMENTED, None),
}


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC code and message for ``exc``. Unknown exceptions become UNKNOWN (and are
    logged: they are bugs, not client errors)."""
    for cls in type(exc).__mro__:
        entry = _TABLE.get(cls.__name__)
        if entry is not None:
            code, message = entry
            return code, message if message is not None else str(exc)
    if isinstance(exc, QuorumError):
        return C.UNKNOWN, str(exc)
    log.exception("etcd api: unexpected error", exc_info=exc)
    return C.UNKNOWN, f"etcdserver: internal error: {type(exc).__name__}"


async def abort_with(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    """End the RPC with the status for ``exc`` (raises, as grpc.aio's abort does)."""
    code, message = status_of(exc)
    await context.abort(code, message)

"""The one error tree of quorum.

Every error the project raises on purpose derives from :class:`QuorumError`. The tree::

    QuorumError
    ├── ConfigError                 a configuration value breaks a rule of ``validate()``
    ├── UsageError                  the caller misused an API (advance without ready, ...);
    │                               the object stays usable unless the docstring says otherwise
    ├── RaftError                   errors of the consensus core
    │   ├── ProposalDropped         a proposal was not appended (retriable elsewhere/later)
    │   │   ├── NoLeader            no leader is known to forward to
    │   │   ├── NotLeader           forwarding is disabled and this node is not the leader
    │   │   ├── TransferInProgress  the leader is handing over leadership
    │   │   ├── UncommittedLogFull  back-pressure: too many uncommitted bytes
    │   │   └── ConfChangePending   a membership change is already in flight, or the leader
    │   │                           has not yet committed an entry of its own term
    │   ├── StepLocalMessage        a local-only message type was passed to step()
    │   ├── StepPeerNotFound        a response from a peer that is not in the configuration
    │   └── InvalidConfChange       a membership change that can never be valid
    ├── StorageError                errors of the storage layer (log and snapshots)
    │   ├── Compacted               requested entries are below the first retained index
    │   ├── Unavailable             requested entries are above the last index
    │   ├── SnapshotOutOfDate       a snapshot older than the one already held
    │   ├── SnapshotTemporarilyUnavailable  the snapshot is being produced; retry later
    │   ├── CorruptionError         a checksum mismatch, gap or missing file (names file, offset)
    │   ├── DiskFullError           ENOSPC: nothing already written was damaged
    │   └── FatalIOError            fsync or write failed in a way the node must stop for
    ├── StateError                  errors of the replicated state machine (typed, state unchanged)
    └── TransportError              errors of the peer transport
        ├── FrameError              a frame from a peer is unusable (closes only that connection)
        │   ├── BadFrame            bad magic/version/type, CRC mismatch, undecodable body
        │   └── FrameTooLarge       body longer than the configured maximum frame size
        ├── HandshakeRejected       the peer refused our HELLO (carries ``reason``)
        └── SnapshotSendFailed      streaming a snapshot to a peer failed
    NodeError (also under QuorumError)  errors of the node runtime
        ├── LeaderChanged           the leader changed while a request was pending: a write's
        │                           outcome is unknown (retry with the same session sequence)
        ├── RequestTimeout          no answer in time: a write's outcome is unknown
        └── NodeStopped             the node is shutting down or has stopped
    ClientError (also under QuorumError)  raised by the client library itself
        ├── ConnectionLost          the connection dropped before the answer arrived
        ├── NoEndpointAvailable     no endpoint accepted a connection in time
        │   └── TlsHandshakeFailed  endpoints answered, but no TLS session could be set up
        ├── ServerError             the server sent an error code this client does not know
        └── LockLost                a recipe's lease expired or its key vanished
    ServiceError (also under QuorumError)  reported by a service (an api Backend) to API surfaces
        ├── MemberError             membership requests that cannot be done
        │   ├── MemberNotFound      no member with that id
        │   ├── MemberExists        a member with that id exists already
        │   ├── PeerURLExists       another member uses one of the peer URLs
        │   ├── MemberNotLearner    only a learner can be promoted
        │   ├── LearnerNotReady     the learner has not caught up with the leader's log
        │   └── TooManyLearners     the cluster has the maximum number of learners
        ├── BadLeaderTransferee     the leadership transfer target is unknown or a learner
        └── NotSupported            this backend cannot do that (e.g. member_add without Raft)

Errors carry a short message meant for people and, where useful, fields for programs.
"""

from __future__ import annotations


class QuorumError(Exception):
    """Base of every error quorum raises on purpose."""


class ConfigError(QuorumError):
    """A configuration value breaks a rule stated in the config's ``validate()``."""


class UsageError(QuorumError):
    """The caller used an API wrongly; the object stays usable."""


# --- consensus core -------------------------------------------------------------------------


class RaftError(QuorumError):
    """Base of the consensus core's errors."""


class ProposalDropped(RaftError):
    """A proposal was not appended to the log. Retrying later or elsewhere may succeed."""


class NoLeader(ProposalDropped):
    """No leader is known, so the proposal cannot be forwarded."""


class NotLeader(ProposalDropped):
    """This node is not the leader and proposal forwarding is disabled."""

    def __init__(self, message: str = "not the leader", leader_id: int = 0) -> None:
        super().__init__(message)
        self.leader_id = leader_id


class TransferInProgress(ProposalDropped):
    """The leader is transferring leadership and takes no proposals meanwhile."""


class UncommittedLogFull(ProposalDropped):
    """The uncommitted tail of the log exceeds its byte cap (back-pressure)."""


class ConfChangePending(ProposalDropped):
    """A membership change is pending, or the leader has not committed in its term yet."""


class StepLocalMessage(RaftError):
    """A message type reserved for local use arrived through ``step()`` from a peer."""


class StepPeerNotFound(RaftError):
    """A response came from a peer that is not part of the configuration."""


class InvalidConfChange(RaftError):
    """A membership change that cannot be applied to the current configuration."""


# --- storage --------------------------------------------------------------------------------


class StorageError(QuorumError):
    """Base of the storage layer's errors."""


class Compacted(StorageError):
    """The requested index lies below the first retained index (compacted away)."""


class Unavailable(StorageError):
    """The requested index lies beyond the last index in storage."""


class SnapshotOutOfDate(StorageError):
    """The snapshot is older than the one already held."""


class SnapshotTemporarilyUnavailable(StorageError):
    """A snapshot is being produced; the caller should retry later."""


class CorruptionError(StorageError):
    """Stored data failed a check. Never repaired silently; the node refuses to start."""

    def __init__(self, message: str, path: str = "", offset: int = -1) -> None:
        where = f" ({path} at offset {offset})" if path else ""
        super().__init__(message + where)
        self.path = path
        self.offset = offset


class DiskFullError(StorageError):
    """The disk is full. The write failed; nothing already written was damaged."""


class FatalIOError(StorageError):
    """An fsync or write failed such that the page cache may have dropped data: stop."""


class DataFormatTooNew(StorageError):
    """The data directory was written by a newer quorum than this one (a downgrade): this
    code could misread what it wrote, so it refuses to start on it."""


# --- state machine --------------------------------------------------------------------------


class StateError(QuorumError):
    """Base of the replicated state machine's typed errors; the state is unchanged.

    ``code`` is a stable, machine-readable name the API layers translate (etcd error texts are
    used as messages where etcd has one). Subclasses added for ``quorum.state``::

        StateError
        ├── InvalidRequest          a request breaks a static rule (checked before any change)
        │   ├── KeyEmpty            "etcdserver: key is not provided"
        │   ├── RequestTooLarge     "etcdserver: request is too large"
        │   ├── TooManyOps          "etcdserver: too many operations in txn request"
        │   ├── DuplicateKey        "etcdserver: duplicate key given in txn request"
        │   ├── InvalidRange        range end sorts before the key
        │   ├── InvalidRevision     a negative revision where none is allowed
        │   ├── InvalidTTL          lease TTL <= 0 or above the configured maximum
        │   ├── ValueProvided       ignore_value with a value
        │   ├── LeaseProvided       ignore_lease with a lease
        │   └── InvalidCommand      bytes that do not decode as a command of a known version
        ├── RevisionCompacted       "etcdserver: mvcc: required revision has been compacted"
        ├── FutureRevision          "etcdserver: mvcc: required revision is a future revision"
        ├── KeyNotFound             "etcdserver: key not found" (ignore_value/ignore_lease)
        ├── LeaseNotFound           "etcdserver: requested lease not found"
        ├── LeaseExists             "etcdserver: lease already exists"
        ├── SessionNotFound         the client session is unknown (never opened, closed, evicted)
        ├── StaleSequence           a session sequence below the last one applied
        └── WatchNotFound           no watcher with that id on this node
    """

    code = "state_error"
    default_message = "state machine error"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message if message is not None else self.default_message)
        self.message = message if message is not None else self.default_message


class InvalidRequest(StateError):
    code = "invalid_request"
    default_message = "etcdserver: invalid request"


class KeyEmpty(InvalidRequest):
    code = "key_empty"
    default_message = "etcdserver: key is not provided"


class RequestTooLarge(InvalidRequest):
    code = "request_too_large"
    default_message = "etcdserver: request is too large"


class TooManyOps(InvalidRequest):
    code = "too_many_ops"
    default_message = "etcdserver: too many operations in txn request"


class DuplicateKey(InvalidRequest):
    code = "duplicate_key"
    default_message = "etcdserver: duplicate key given in txn request"


class InvalidRange(InvalidRequest):
    code = "invalid_range"
    default_message = "etcdserver: range end sorts before the key"


class InvalidRevision(InvalidRequest):
    code = "invalid_revision"
    default_message = "etcdserver: revision must not be negative"


class InvalidTTL(InvalidRequest):
    code = "invalid_ttl"
    default_message = "etcdserver: lease TTL must be positive and within the maximum"


class ValueProvided(InvalidRequest):
    code = "value_provided"
    default_message = "etcdserver: value is provided"


class LeaseProvided(InvalidRequest):
    code = "lease_provided"
    default_message = "etcdserver: lease is provided"


class InvalidCommand(InvalidRequest):
    code = "invalid_command"
    default_message = "state: command does not decode"


class RevisionCompacted(StateError):
    """The requested revision lies below the compacted revision (``compact_revision``)."""

    code = "compacted"
    default_message = "etcdserver: mvcc: required revision has been compacted"

    def __init__(self, compact_revision: int = 0, message: str | None = None) -> None:
        super().__init__(message)
        self.compact_revision = compact_revision


class FutureRevision(StateError):
    """The requested revision lies beyond the store's current revision (``current_revision``)."""

    code = "future_revision"
    default_message = "etcdserver: mvcc: required revision is a future revision"

    def __init__(self, current_revision: int = 0, message: str | None = None) -> None:
        super().__init__(message)
        self.current_revision = current_revision


class KeyNotFound(StateError):
    code = "key_not_found"
    default_message = "etcdserver: key not found"


class LeaseNotFound(StateError):
    code = "lease_not_found"
    default_message = "etcdserver: requested lease not found"


class LeaseExists(StateError):
    code = "lease_exists"
    default_message = "etcdserver: lease already exists"


class SessionNotFound(StateError):
    code = "session_not_found"
    default_message = "state: client session not found (never opened, closed or evicted)"


class StaleSequence(StateError):
    code = "stale_sequence"
    default_message = "state: stale sequence: a later command of this session was applied"


class WatchNotFound(StateError):
    code = "watch_not_found"
    default_message = "state: no watcher with that id"


# --- transport ------------------------------------------------------------------------------


class TransportError(QuorumError):
    """Base of the peer transport's errors."""


class FrameError(TransportError):
    """A frame read from a peer is unusable; only that connection is closed."""


class BadFrame(FrameError):
    """Bad magic, unsupported version, unknown type, CRC mismatch or an undecodable body."""


class FrameTooLarge(FrameError):
    """A frame's body exceeds the configured maximum frame size (checked both ways)."""

    def __init__(self, message: str, length: int = 0, limit: int = 0) -> None:
        super().__init__(message)
        self.length = length
        self.limit = limit


class HandshakeRejected(TransportError):
    """The peer refused the handshake (wrong cluster id, wrong member id, bad version)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"handshake rejected: {reason}")
        self.reason = reason


class SnapshotSendFailed(TransportError):
    """Streaming a snapshot to a peer failed; the runtime reports ``report_snapshot(False)``."""


# --- node runtime ---------------------------------------------------------------------------


class NodeError(QuorumError):
    """Base of the node runtime's errors."""


class LeaderChanged(NodeError):
    """The leader changed while the request was pending. A write may or may not have been
    applied: retry it with the same session sequence number so it is applied at most once."""


class RequestTimeout(NodeError):
    """The request got no answer in time. A write may or may not have been applied."""


class NodeStopped(NodeError):
    """The node is shutting down or has stopped; the request was not served."""


# --- client library -------------------------------------------------------------------------
# The native protocol reuses FrameError/BadFrame/FrameTooLarge for bad frames and the node's
# RequestTimeout for deadlines, so one condition has one class wherever it is detected.


class ClientError(QuorumError):
    """Errors raised by the client library itself (not reported by a server)."""


class ConnectionLost(ClientError):
    """The connection dropped before the answer arrived. For a write the outcome is unknown
    unless it is retried within its session (then it is applied at most once)."""


class NoEndpointAvailable(ClientError):
    """None of the configured endpoints accepted a connection before the deadline."""


class TlsHandshakeFailed(NoEndpointAvailable):
    """An endpoint was reached but no TLS session came about: its certificate is not trusted
    or does not name the endpoint, it refused the client's certificate, or one side does not
    speak TLS. Nothing was applied. Retrying does not help until the settings change."""


class ServerError(ClientError):
    """The server reported an error code this client does not know."""

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code


class LockLost(ClientError):
    """A recipe's ownership ended: its lease expired or its key was deleted while waiting or
    holding. Nothing may be done under the lock after this is raised."""


# --- service (api backends) -----------------------------------------------------------------
# Raised by implementations of quorum.api.backend.Backend (the node runtime, LocalBackend);
# the API surfaces translate them (etcd: gRPC codes with etcd's texts).


class ServiceError(QuorumError):
    """Base of the errors a service reports to its API surfaces; the service stays usable."""


class MemberError(ServiceError):
    """A membership request that cannot be done; the membership is unchanged."""


class MemberNotFound(MemberError):
    """No member with the given id."""


class MemberExists(MemberError):
    """A member with the given id exists already."""


class PeerURLExists(MemberError):
    """Another member already uses one of the given peer URLs."""


class MemberNotLearner(MemberError):
    """Only a learner can be promoted."""


class LearnerNotReady(MemberError):
    """The learner has not caught up with the leader's log yet; promotion is refused."""


class TooManyLearners(MemberError):
    """The cluster already has the maximum number of learners."""


class BadLeaderTransferee(ServiceError):
    """The target of a leadership transfer is not a voting member of the cluster."""


class NotSupported(ServiceError):
    """This backend cannot perform the operation (e.g. membership changes without Raft)."""

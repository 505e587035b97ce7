"""Safety invariants of Raft, checked incrementally while a harness cluster runs.

The cluster reports every observable event (a node's term, its role, what it persisted, its
commit index, what it applied, ReadIndex answers) to one :class:`InvariantChecker`, which raises
:class:`SafetyViolation` the moment a property of Raft's Figure 3 breaks:

- election safety: at most one leader per term (§5.2);
- log matching: two logs holding an entry with the same index and term are identical up to it
  (§5.3). Each node's persisted log is mirrored as a chain of hashes, ``chain[i] =
  hash(chain[i-1], entry i)``, so the whole prefix is compared in O(1) per entry;
- leader completeness: an entry committed in term U is in the log of every leader of a term
  above U (§5.4);
- state machine safety: no two nodes apply different entries at one index (§5.4.3), and one
  node's applied index only grows by one (or jumps forward to a snapshot), also across restarts;
- commit bound: a node's persisted commit index never exceeds its persisted last index;
- linearizable reads: a ReadIndex answer is at least the highest index a leader acknowledged to
  a client before the read was issued (thesis §6.4).

The checker knows nothing of RawNode; tests feed it fabricated histories to prove each check
fires (tests/raft/harness/test_invariants.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from quorum.errors import QuorumError
from quorum.raft.types import Entry


class InvariantViolation(QuorumError):
    """A property of the protocol failed during a harness run. Carries ``invariant`` (a short
    name) and ``description`` (what was seen). The cluster must not be used afterwards."""

    def __init__(self, invariant: str, description: str) -> None:
        super().__init__(f"{invariant}: {description}")
        self.invariant = invariant
        self.description = description


class SafetyViolation(InvariantViolation):
    """A safety property (something bad happened)."""


class LivenessViolation(InvariantViolation):
    """A liveness property (something good did not happen within its tick bound)."""


class CoreError(InvariantViolation):
    """The consensus core raised an error while being used as its contract allows."""


ELECTION_SAFETY = "election-safety"
LOG_MATCHING = "log-matching"
LEADER_COMPLETENESS = "leader-completeness"
STATE_MACHINE_SAFETY = "state-machine-safety"
APPLIED_MONOTONIC = "applied-monotonic"
COMMIT_BOUND = "commit-within-log"
STALE_READ = "linearizable-read"


def entry_chain(prev_chain: int, entry: Entry) -> int:
    """The hash of a log prefix ending with ``entry``, given the hash of the prefix before it."""
    return hash((prev_chain, entry.term, int(entry.type), entry.data))


@dataclass
class _LogMirror:
    """The chain hashes of one node's persisted log: entries ``offset..last_index()``; the
    entry at ``offset - 1`` is the snapshot (or the empty log's index 0)."""

    offset: int = 1
    terms: list[int] = field(default_factory=list)
    chains: list[int] = field(default_factory=list)
    snap_term: int = 0
    snap_chain: int = 0

    def last_index(self) -> int:
        return self.offset - 1 + len(self.terms)

    def term_at(self, index: int) -> int | None:
        if index == self.offset - 1:
            return self.snap_term
        if self.offset <= index <= self.last_index():
            return self.terms[index - self.offset]
        return None

    def chain_at(self, index: int) -> int | None:
        if index == self.offset - 1:
            return self.snap_chain
        if self.offset <= index <= self.last_index():
            return self.chains[index - self.offset]
        return None


@dataclass
class _NodeView:
    log: _LogMirror = field(default_factory=_LogMirror)
    term: int = 0
    commit: int = 0
    applied: int = 0


class InvariantChecker:
    """Collects the events of a run and raises :class:`SafetyViolation` on the first breach."""

    def __init__(self) -> None:
        self._nodes: dict[int, _NodeView] = {}
        self.leader_of_term: dict[int, int] = {}
        self._chain_of: dict[tuple[int, int], int] = {(0, 0): 0}  # (index, term) -> chain
        self._committed_chain: dict[int, int] = {0: 0}  # index -> chain of a committed prefix
        self._commit_in_term: dict[int, int] = {}  # term learned in -> highest commit index
        self._applied: dict[int, tuple[int, bytes]] = {}  # index -> (term, data) applied
        self.acked_index = 0  # highest index a leader acknowledged to a client
        self._pending_reads: dict[tuple[int, bytes], int] = {}  # (node, ctx) -> required
        self.reads_checked = 0

    def _node(self, node: int) -> _NodeView:
        view = self._nodes.get(node)
        if view is None:
            view = self._nodes[node] = _NodeView()
        return view

    # --- terms and leaders ------------------------------------------------------------------

    def term_persisted(self, node: int, term: int) -> None:
        self._node(node).term = term

    def leader_elected(self, node: int, term: int) -> None:
        """``node`` became leader in ``term`` (call after persisting that Ready's entries)."""
        holder = self.leader_of_term.setdefault(term, node)
        if holder != node:
            raise SafetyViolation(
                ELECTION_SAFETY, f"term {term} has two leaders: {holder} and {node}"
            )
        self._check_leader_completeness(node, term)

    def leader_acted(self, node: int, term: int) -> None:
        """``node`` sent a message only a leader of ``term`` sends (append, heartbeat, snapshot)."""
        holder = self.leader_of_term.setdefault(term, node)
        if holder != node:
            raise SafetyViolation(
                ELECTION_SAFETY, f"term {term} has two leaders: {holder} and {node}"
            )

    def _check_leader_completeness(self, node: int, term: int) -> None:
        # The highest index known committed in a term before `term`: by log matching, holding
        # the committed prefix hash at that index means holding every earlier committed entry.
        needed = max((i for t, i in self._commit_in_term.items() if t < term), default=0)
        log = self._node(node).log
        if needed <= log.offset - 1:
            return  # covered by the node's snapshot (snapshots hold only committed state)
        if log.chain_at(needed) != self._committed_chain[needed]:
            raise SafetyViolation(
                LEADER_COMPLETENESS,
                f"node {node} became leader of term {term} without the entry at index "
                f"{needed} committed before that term (its last index is {log.last_index()})",
            )

    # --- persisted log ----------------------------------------------------------------------

    def entries_persisted(self, node: int, entries: Sequence[Entry]) -> None:
        """``node`` appended ``entries`` (contiguous), truncating its log at the first one."""
        if not entries:
            return
        log = self._node(node).log
        first = entries[0].index
        if first > log.last_index() + 1:
            raise SafetyViolation(
                LOG_MATCHING,
                f"node {node} appended index {first} after last index {log.last_index()}",
            )
        skip = max(0, log.offset - first)  # entries already covered by the snapshot
        start = first + skip
        if skip >= len(entries):
            return
        del log.terms[start - log.offset :]
        del log.chains[start - log.offset :]
        prev = log.chain_at(start - 1)
        assert prev is not None  # start - 1 lies within offset - 1 .. last_index
        for entry in entries[skip:]:
            prev = entry_chain(prev, entry)
            self._record_chain(node, entry.index, entry.term, prev)
            log.terms.append(entry.term)
            log.chains.append(prev)

    def _record_chain(self, node: int, index: int, term: int, chain: int) -> None:
        known = self._chain_of.setdefault((index, term), chain)
        if known != chain:
            raise SafetyViolation(
                LOG_MATCHING,
                f"node {node} holds an entry at index {index}, term {term} whose log prefix "
                f"differs from another node's entry with the same index and term",
            )

    def snapshot_persisted(self, node: int, index: int, term: int) -> None:
        """``node`` replaced its log by a snapshot at (index, term)."""
        chain = self._chain_of.get((index, term))
        if chain is None:  # never seen in any log (e.g. a bootstrap snapshot): name it
            chain = self._chain_of[(index, term)] = hash(("snapshot", index, term))
        committed = self._committed_chain.get(index)
        if committed is not None and committed != chain:
            raise SafetyViolation(
                STATE_MACHINE_SAFETY,
                f"node {node} installed a snapshot at index {index}, term {term} that "
                f"disagrees with the committed entry at that index",
            )
        self._committed_chain.setdefault(index, chain)
        view = self._node(node)
        view.log = _LogMirror(offset=index + 1, snap_term=term, snap_chain=chain)
        view.commit = max(view.commit, index)

    def log_compacted(self, node: int, index: int) -> None:
        """``node``'s storage dropped entries up to ``index`` (kept as the snapshot point)."""
        log = self._node(node).log
        if index < log.offset or index > log.last_index():
            return
        cut = index - log.offset + 1
        log.snap_term, log.snap_chain = log.terms[cut - 1], log.chains[cut - 1]
        del log.terms[:cut]
        del log.chains[:cut]
        log.offset = index + 1

    def commit_persisted(self, node: int, commit: int) -> None:
        """``node`` persisted commit index ``commit`` (with this Ready's entries and term)."""
        view = self._node(node)
        log = view.log
        if commit > log.last_index():
            raise SafetyViolation(
                COMMIT_BOUND,
                f"node {node} commit {commit} exceeds its last index {log.last_index()}",
            )
        if commit <= view.commit:
            return
        for index in range(max(view.commit + 1, log.offset - 1), commit + 1):
            self._check_committed(node, index, log.chain_at(index))
        view.commit = commit
        if commit > self._commit_in_term.get(view.term, 0):
            self._commit_in_term[view.term] = commit

    def _check_committed(self, node: int, index: int, chain: int | None) -> None:
        if chain is None:
            return
        known = self._committed_chain.setdefault(index, chain)
        if known != chain:
            raise SafetyViolation(
                STATE_MACHINE_SAFETY,
                f"node {node} committed index {index} with an entry (or prefix) different "
                f"from the one committed there before",
            )

    # --- application ------------------------------------------------------------------------

    def entry_applied(self, node: int, entry: Entry) -> None:
        view = self._node(node)
        if entry.index != view.applied + 1:
            raise SafetyViolation(
                APPLIED_MONOTONIC,
                f"node {node} applied index {entry.index} after {view.applied}",
            )
        view.applied = entry.index
        seen = self._applied.setdefault(entry.index, (entry.term, entry.data))
        if seen != (entry.term, entry.data):
            raise SafetyViolation(
                STATE_MACHINE_SAFETY,
                f"node {node} applied (term {entry.term}, {entry.data[:24]!r}) at index "
                f"{entry.index} where another node applied (term {seen[0]}, {seen[1][:24]!r})",
            )

    def snapshot_applied(self, node: int, index: int) -> None:
        """``node``'s application state was replaced by a snapshot taken at ``index``."""
        view = self._node(node)
        if index < view.applied:
            raise SafetyViolation(
                APPLIED_MONOTONIC,
                f"node {node} restored a snapshot at {index} below its applied {view.applied}",
            )
        view.applied = index

    def restarted(self, node: int, applied: int) -> None:
        """``node`` restarted with its application state persisted at ``applied``."""
        view = self._node(node)
        if applied < view.applied:
            raise SafetyViolation(
                APPLIED_MONOTONIC,
                f"node {node} restarted at applied {applied} below its applied {view.applied}",
            )
        view.applied = applied

    def restarted_from_scratch(self, node: int, applied: int) -> None:
        """``node`` restarted with a volatile application rebuilt from its snapshot at
        ``applied``; it will re-apply the log above, which must match what was applied."""
        self._node(node).applied = applied

    def applied_index(self, node: int) -> int:
        return self._node(node).applied

    def applied_entry(self, index: int) -> tuple[int, bytes] | None:
        return self._applied.get(index)

    def max_applied_index(self) -> int:
        return max(self._applied, default=0)

    # --- linearizable reads -----------------------------------------------------------------

    def write_acked(self, index: int) -> None:
        """A leader told a client its write at ``index`` is done."""
        self.acked_index = max(self.acked_index, index)

    def read_issued(self, node: int, context: bytes) -> None:
        self._pending_reads[(node, context)] = self.acked_index

    def read_answered(self, node: int, context: bytes, index: int) -> None:
        """A ReadState came back; every write acknowledged before the read must be visible."""
        required = self._pending_reads.pop((node, context), None)
        if required is None:
            return  # a read issued before a restart, or an answer we did not ask for
        self.reads_checked += 1
        if index < required:
            raise SafetyViolation(
                STALE_READ,
                f"node {node} answered read {context!r} at index {index}, but index "
                f"{required} was acknowledged to a client before the read was issued",
            )

    def forget_reads(self, node: int) -> None:
        self._pending_reads = {k: v for k, v in self._pending_reads.items() if k[0] != node}

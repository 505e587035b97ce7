"""Configuration of one Raft node (`Config`) and its validation rules."""

from __future__ import annotations

import dataclasses
import enum

from quorum.errors import ConfigError


class ReadOnlyOption(enum.IntEnum):
    """How a leader confirms it is still the leader before answering a ReadIndex request."""

    SAFE = 0  # a heartbeat round acknowledged by a quorum (Raft thesis §6.4)
    # Trust the leader lease kept by check-quorum (thesis §6.4.1). Assumes bounded clock drift
    # between nodes: a follower's election timeout must not elapse faster than the leader's.
    LEASE_BASED = 1


# Test-only switches that break a safety rule on purpose; see docs/raft.md "Planted bugs".
PLANTED_BUGS = frozenset(
    {
        "commit_old_term",  # count replicas for entries of older terms (breaks Figure 8)
        "skip_vote_log_check",  # grant votes without the §5.4.1 up-to-date check
        "forget_vote",  # the Ready's hard state never carries the vote
        "read_index_no_quorum",  # answer ReadIndex at once: no heartbeat round, no own-term rule
    }
)

MIB = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Config:
    """Parameters of one node. Call :meth:`validate` (``RawNode`` does) before use.

    Sizes are in bytes (entry size = len(data) + a fixed overhead), times in ticks.
    ``planted_bugs`` is for tests only: every name in it breaks safety on purpose.
    """

    id: int
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    applied: int = 0  # the last index the application applied before a restart
    max_size_per_msg: int = MIB
    max_entries_per_msg: int = 4096
    max_inflight_msgs: int = 256
    max_inflight_bytes: int = 0  # 0 = no byte budget for the in-flight window
    max_uncommitted_entries_size: int = 64 * MIB  # 0 = unlimited
    max_committed_size_per_ready: int = 64 * MIB
    pre_vote: bool = True
    check_quorum: bool = True
    read_only_option: ReadOnlyOption = ReadOnlyOption.SAFE
    disable_proposal_forwarding: bool = False
    step_down_on_removal: bool = True
    planted_bugs: frozenset[str] = frozenset()

    def validate(self) -> None:
        """Raise ConfigError naming the first broken rule; return None when all hold."""
        rules: list[tuple[bool, str]] = [
            (self.id > 0, "id must be a positive integer (0 means 'no node')."),
            (self.heartbeat_ticks > 0, "heartbeat_ticks must be positive."),
            (
                self.election_ticks > self.heartbeat_ticks,
                "election_ticks must be greater than heartbeat_ticks.",
            ),
            (self.applied >= 0, "applied must not be negative."),
            (self.max_size_per_msg > 0, "max_size_per_msg must be positive."),
            (self.max_entries_per_msg > 0, "max_entries_per_msg must be positive."),
            (self.max_inflight_msgs > 0, "max_inflight_msgs must be positive."),
            (self.max_inflight_bytes >= 0, "max_inflight_bytes must not be negative."),
            (
                self.max_uncommitted_entries_size >= 0,
                "max_uncommitted_entries_size must not be negative (0 = unlimited).",
            ),
            (
                self.max_committed_size_per_ready > 0,
                "max_committed_size_per_ready must be positive.",
            ),
            (
                self.read_only_option != ReadOnlyOption.LEASE_BASED or self.check_quorum,
                "read_only_option LEASE_BASED requires check_quorum (the lease is the "
                "check-quorum guarantee).",
            ),
            (
                self.planted_bugs <= PLANTED_BUGS,
                f"planted_bugs must be a subset of {sorted(PLANTED_BUGS)}.",
            ),
        ]
        for ok, sentence in rules:
            if not ok:
                raise ConfigError(sentence)

    def bug(self, name: str) -> bool:
        """True iff the test-only planted bug ``name`` is switched on."""
        return name in self.planted_bugs

"""Quorum arithmetic: majority configurations and joint configurations (Raft thesis §4.3).

Pure functions over sets of voter ids; no state. ``committed_index`` answers "which index is
acknowledged by a quorum" and ``vote_result`` answers "did the election succeed".
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping

# A lookup from voter id to its acknowledged index (None = no information, counts as 0).
IndexLookup = Callable[[int], "int | None"]

INFINITE_INDEX = 2**63 - 1  # the committed index of an empty configuration (joint min is neutral)


class VoteResult(enum.IntEnum):
    PENDING = 0  # neither enough yes nor enough no votes yet
    LOST = 1
    WON = 2


class MajorityConfig(frozenset[int]):
    """A set of voter ids; a quorum is any strict majority of them."""

    def committed_index(self, lookup: IndexLookup) -> int:
        """The largest index acknowledged by a majority.

        Sorting descending, the value at position n//2 is acknowledged by at least n//2+1
        voters. An empty configuration returns INFINITE_INDEX so a joint config with an empty
        half behaves like its other half.
        """
        if not self:
            return INFINITE_INDEX
        acked = sorted((lookup(v) or 0 for v in self), reverse=True)
        return acked[len(acked) // 2]

    def vote_result(self, votes: Mapping[int, bool]) -> VoteResult:
        """WON if a majority voted yes, LOST if a majority can no longer be reached."""
        if not self:
            return VoteResult.WON  # by convention, so a joint config reduces to one half
        yes = sum(1 for v in self if votes.get(v) is True)
        missing = sum(1 for v in self if v not in votes)
        need = len(self) // 2 + 1
        if yes >= need:
            return VoteResult.WON
        if yes + missing >= need:
            return VoteResult.PENDING
        return VoteResult.LOST

    def describe(self) -> str:
        return "(" + " ".join(str(v) for v in sorted(self)) + ")"


class JointConfig:
    """Two majority configs; during a joint change both must agree (Raft thesis §4.3)."""

    __slots__ = ("incoming", "outgoing")

    def __init__(self, incoming: Iterable[int] = (), outgoing: Iterable[int] = ()) -> None:
        self.incoming = MajorityConfig(incoming)
        self.outgoing = MajorityConfig(outgoing)

    def is_joint(self) -> bool:
        return bool(self.outgoing)

    def ids(self) -> frozenset[int]:
        return self.incoming | self.outgoing

    def committed_index(self, lookup: IndexLookup) -> int:
        # Invariant: an index is committed only when both halves acknowledge it.
        return min(self.incoming.committed_index(lookup), self.outgoing.committed_index(lookup))

    def vote_result(self, votes: Mapping[int, bool]) -> VoteResult:
        first = self.incoming.vote_result(votes)
        second = self.outgoing.vote_result(votes)
        if first == second:
            return first
        if VoteResult.LOST in (first, second):
            return VoteResult.LOST  # one half lost: the whole election is lost
        return VoteResult.PENDING

    def describe(self) -> str:
        if self.outgoing:
            return f"{self.incoming.describe()}&&{self.outgoing.describe()}"
        return self.incoming.describe()

    def copy(self) -> JointConfig:
        return JointConfig(self.incoming, self.outgoing)

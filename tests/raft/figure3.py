"""Checks of the Raft paper's Figure 3 properties over observed cluster states.

The checker is fed snapshots of every node after each step of a run; it raises
AssertionError naming the property that broke.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class NodeView:
    node_id: int
    term: int
    is_leader: bool
    log: list[tuple[int, int]]  # (index, term), contiguous
    applied: list[tuple[int, int, bytes]]  # (index, term, data) in apply order


@dataclasses.dataclass
class Figure3Checker:
    step: int = 0
    leaders: dict[int, int] = dataclasses.field(default_factory=dict)  # term -> leader id
    leader_logs: dict[tuple[int, int], list[tuple[int, int]]] = dataclasses.field(
        default_factory=dict)  # (id, term) -> log when last seen leading
    leader_since: dict[tuple[int, int], int] = dataclasses.field(default_factory=dict)
    applied: dict[int, tuple[int, bytes]] = dataclasses.field(default_factory=dict)
    applied_at: dict[int, int] = dataclasses.field(default_factory=dict)  # index -> step

    def observe(self, views: list[NodeView]) -> None:
        self.step += 1
        for v in views:
            self._state_machine_safety(v)
            if v.is_leader:
                self._election_safety(v)
                self._leader_append_only(v)
        for v in views:
            if v.is_leader:
                self._leader_completeness(v)
        self._log_matching(views)

    def _election_safety(self, v: NodeView) -> None:
        holder = self.leaders.setdefault(v.term, v.node_id)
        assert holder == v.node_id, f"election safety: {holder} and {v.node_id} lead {v.term}"

    def _leader_append_only(self, v: NodeView) -> None:
        key = (v.node_id, v.term)
        before = self.leader_logs.get(key, [])
        assert v.log[: len(before)] == before, f"leader append-only broken by {key}"
        self.leader_logs[key] = list(v.log)
        self.leader_since.setdefault(key, self.step)

    def _leader_completeness(self, v: NodeView) -> None:
        since = self.leader_since[(v.node_id, v.term)]
        log = dict(v.log)
        for index, (term, _) in self.applied.items():
            if self.applied_at[index] < since:  # committed before this leader was elected
                assert log.get(index) == term, (
                    f"leader completeness: leader {v.node_id} of term {v.term} lacks "
                    f"committed {index}/{term}")

    def _state_machine_safety(self, v: NodeView) -> None:
        for index, term, data in v.applied:
            first = self.applied.setdefault(index, (term, data))
            self.applied_at.setdefault(index, self.step)
            assert first == (term, data), (
                f"state machine safety: node {v.node_id} applied {term}/{index} {data!r}, "
                f"another node applied {first}")

    @staticmethod
    def _log_matching(views: list[NodeView]) -> None:
        for i, a in enumerate(views):
            for b in views[i + 1 :]:
                ours, theirs = dict(a.log), dict(b.log)
                same = [idx for idx, term in ours.items() if theirs.get(idx) == term]
                if not same:
                    continue
                top = max(same)
                for idx in range(min(min(ours), min(theirs)), top + 1):
                    if idx in ours and idx in theirs:
                        assert ours[idx] == theirs[idx], (
                            f"log matching: nodes {a.node_id},{b.node_id} agree at {top} "
                            f"but differ at {idx}")

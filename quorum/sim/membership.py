"""Membership changes driven by the nemesis, one step per call, during faults.

The cycle keeps the cluster near its configured size while exercising every kind of change the
node runtime supports (``NodeCore.propose_conf_change``, Raft thesis chapter 4 and etcd's joint
consensus):

- remove a voter (sometimes the leader, which then steps down), retire its process and disk;
- add a fresh node (empty disk, new id) as a learner, then promote it to voter;
- remove a learner instead of promoting it;
- demote a voter to learner;
- replace a voter in one joint change (add the new voter and remove the old one together),
  leaving the joint configuration automatically or by an explicit empty change.

Raft allows one pending change at a time; a step that the leader refuses, or that dies with a
leader change, is simply tried again later. A removed node is retired only after the change
that removed it was applied on the leader (committed), as an operator would do.
"""

from __future__ import annotations

import random
from typing import Any

from quorum.raft.types import (
    ConfChange,
    ConfChangeSingle,
    ConfChangeTransition,
    ConfChangeType,
    ConfState,
)
from quorum.sim.world import World

ADD, REMOVE, LEARNER = (ConfChangeType.ADD_NODE, ConfChangeType.REMOVE_NODE,
                        ConfChangeType.ADD_LEARNER)


class _Outcome:
    """Traces what became of one proposed change (no client waits on it)."""

    def __init__(self, world: World, what: str) -> None:
        self.world = world
        self.what = what

    def resolve(self, value: Any) -> None:
        self.world.trace(f"conf change applied: {self.what} -> {value}")

    def fail(self, exc: BaseException) -> None:
        self.world.trace(f"conf change failed: {self.what}: {exc!r}")


class Reconfigurer:
    def __init__(self, world: World, rng: random.Random, size: int) -> None:
        self.world = world
        self.rng = rng
        self.size = size  # voters the cluster should have (it drops by one transiently)
        self.joining: set[int] = set()  # started with an empty disk, not yet in a config
        # proposed for removal -> the proposing leader's applied index: a leader whose applied
        # configuration is at least that new and lacks the node has committed the removal
        self.removing: dict[int, int] = {}
        self.changes = 0

    def step(self) -> None:
        leader_id = self.world.leader()
        node = self.world.nodes.get(leader_id)
        core = node.core if node is not None else None
        if core is None:
            return
        cs = core.conf_state  # applied (committed) configuration on the leader
        members = set(cs.voters) | set(cs.learners) | set(cs.voters_outgoing)
        self.joining -= members
        self._retire_removed(members, core.applied)
        if core.applied < core.rn.raft.pending_conf_index:
            return  # a change is still in flight: Raft accepts one at a time
        if cs.voters_outgoing:
            if not cs.auto_leave:
                self._propose(ConfChange(), "leave joint configuration")
            return
        self._choose(cs)

    def retire_removed(self) -> None:
        """Shut down the nodes whose removal the current leader has applied (no proposal)."""
        leader = self.world.nodes.get(self.world.leader())
        if leader is not None and leader.core is not None:
            cs = leader.core.conf_state
            members = set(cs.voters) | set(cs.learners) | set(cs.voters_outgoing)
            self._retire_removed(members, leader.core.applied)

    def _retire_removed(self, members: set[int], applied: int) -> None:
        for node_id, since in sorted(self.removing.items()):
            if node_id not in members and applied >= since:
                self.world.retire(node_id)
                del self.removing[node_id]

    def _choose(self, cs: ConfState) -> None:
        voters, learners = sorted(cs.voters), sorted(cs.learners)
        roll = self.rng.random()
        if learners:
            target = self.rng.choice(learners)
            if roll < 0.75:
                self._propose(ConfChange((ConfChangeSingle(ADD, target),)),
                              f"promote n{target}")
            else:
                self._propose(ConfChange((ConfChangeSingle(REMOVE, target),)),
                              f"remove learner n{target}", removed=target)
        elif len(voters) < self.size:
            new = self._new_node()
            self._propose(ConfChange((ConfChangeSingle(LEARNER, new),)),
                          f"add learner n{new}", new)
        elif len(voters) >= 3 and roll < 0.45:
            target = self.rng.choice(voters)
            self._propose(ConfChange((ConfChangeSingle(REMOVE, target),)),
                          f"remove voter n{target}", removed=target)
        elif len(voters) >= 3 and roll < 0.6:
            target = self.rng.choice(voters)
            self._propose(ConfChange((ConfChangeSingle(LEARNER, target),)),
                          f"demote n{target}")
        else:
            old, new = self.rng.choice(voters), self._new_node()
            explicit = self.rng.random() < 0.5
            transition = (ConfChangeTransition.JOINT_EXPLICIT if explicit
                          else ConfChangeTransition.JOINT_IMPLICIT)
            cc = ConfChange((ConfChangeSingle(ADD, new), ConfChangeSingle(REMOVE, old)),
                            transition)
            self._propose(cc, f"joint: n{new} replaces n{old}"
                              f"{' (explicit leave)' if explicit else ''}", new, old)

    def _new_node(self) -> int:
        """Reuse a joining node whose add never committed, else start a fresh one."""
        for node_id in sorted(self.joining):
            if node_id in self.world.nodes:
                return node_id
        node_id = self.world.add_node()
        self.joining.add(node_id)
        return node_id

    def _propose(self, cc: ConfChange, what: str, added: int = 0, removed: int = 0) -> None:
        leader = self.world.nodes.get(self.world.leader())
        if leader is None or leader.core is None:
            return
        self.changes += 1
        if removed:
            self.removing[removed] = leader.core.applied
        self.world.trace(f"propose conf change on n{leader.id}: {what}")
        members = (self.world.member(added),) if added else ()
        leader.core.propose_conf_change(cc, _Outcome(self.world, what), members)
        self.world.drive(leader)

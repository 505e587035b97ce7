"""Membership changes driven by the nemesis, one step per call, during faults.

The cycle keeps the cluster near its configured size while exercising every kind of change the
node runtime supports (``NodeCore.propose_conf_change``, Raft thesis chapter 4 and etcd's joint
consensus):

- remove a voter (sometimes the leader, which then steps down), retire its process and disk;
- add a fresh node (empty disk, new id) as a learner, then promote it to voter;
- remove a learner instead of promoting it;
- demote a voter to learner;
- replace a voter in one joint change (add the new voter and remove the old one together),
  leaving the joint configuration automatically or by an explicit empty change;
- as the server runtime does, every member records its own addresses once it knows a leader,
  with a change that names the role it sees itself in (NodeCore proposes it as UPDATE_NODE).
  A new learner does so in the step that promotes it, the race of a learner whose record
  reaches the leader after the leader applied its promotion.

Checked here (``member-role``): in the leader's applied configuration a voter becomes a learner
only after a demotion was proposed for it (a stale address record must not demote it).

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
from quorum.sim.world import Violation, World

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


class _Published(_Outcome):
    """An address record: once applied, the member stops publishing."""

    def __init__(self, world: World, what: str, done: set[int], node_id: int) -> None:
        super().__init__(world, what)
        self.done = done
        self.node_id = node_id

    def resolve(self, value: Any) -> None:
        super().resolve(value)
        self.done.add(self.node_id)


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
        self.demoting: set[int] = set()  # a demotion was proposed for these (ever)
        self.published: set[int] = set()  # members whose address record was applied
        # the newest configuration seen on a leader: (its applied index, its voters)
        self._newest: tuple[int, frozenset[int]] = (0, frozenset())
        self._publish_rng = random.Random(rng.getrandbits(64))
        self._publishing = False

    def step(self) -> None:
        if not self._publishing:  # from the first step on, on a timer of its own
            self._publishing = True
            self.world.at(0, self._publish_round)
        leader_id = self.world.leader()
        node = self.world.nodes.get(leader_id)
        core = node.core if node is not None else None
        if core is None:
            return
        cs = core.conf_state  # applied (committed) configuration on the leader
        self._check_roles(core.applied, cs)
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

    def _check_roles(self, applied: int, cs: ConfState) -> None:
        """Compare with the newest configuration seen so far (a configuration applied at a
        higher index is newer: one log orders them). A voter that turned learner without a
        proposed demotion was demoted by a change that meant something else."""
        seen_at, voters = self._newest
        if applied < seen_at:
            return  # this leader has not applied as far as an earlier observation
        demoted = (voters & set(cs.learners)) - self.demoting
        if demoted:
            raise Violation("member-role", f"voters {sorted(demoted)} became learners at "
                                           f"applied {applied} with no demotion proposed")
        self._newest = (applied, frozenset(cs.voters) | frozenset(cs.voters_outgoing))

    def _publish_round(self) -> None:
        """Every 2-12 ms: check the roles on the leader and let members publish. Publishing
        does not wait for earlier attempts (a runtime retries after a timeout, and the timed
        out attempt may still commit)."""
        leader = self.world.nodes.get(self.world.leader())
        voters: set[int] = set()
        if leader is not None and leader.core is not None:
            self._check_roles(leader.core.applied, leader.core.conf_state)
            voters = set(leader.core.conf_state.voters)
        self._publish(voters)
        self.world.at(self._publish_rng.randint(2, 12), self._publish_round)

    def _publish(self, leader_voters: set[int]) -> None:
        """Every member that knows a leader and has not recorded its addresses yet proposes
        the record from its own node, naming the role its own configuration gives it. A
        learner publishes only once the leader has applied its promotion (biased toward the
        race: the runtime's learner publishes once it has caught up, which is also when
        ``member promote`` succeeds), so its record names a role it no longer has."""
        for node_id, node in sorted(self.world.nodes.items()):
            core = node.core
            if (core is None or node.paused or node_id in self.published
                    or not core.leader_id):
                continue
            cs = core.conf_state
            if node_id in cs.voters:
                kind = ADD
            elif node_id in cs.learners and node_id in leader_voters:
                kind = LEARNER
            else:
                continue
            what = f"n{node_id} records its addresses as a {kind.name.lower()}"
            self.world.trace(f"propose conf change on n{node_id}: {what}")
            core.propose_conf_change(ConfChange((ConfChangeSingle(kind, node_id),)),
                                     _Published(self.world, what, self.published, node_id),
                                     (self.world.member(node_id),))
            self.world.drive(node)

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
            self.demoting.add(target)
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

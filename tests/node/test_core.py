"""NodeCore driven synchronously: three nodes, in-memory storage, an instant network."""

from __future__ import annotations

import random
from typing import Any

import pytest

from quorum.errors import LeaderChanged, NodeStopped, NoLeader, RequestTimeout
from quorum.node.core import NodeCore, bootstrap_data
from quorum.node.envelope import MemberInfo
from quorum.node.ready import process_ready, run_sync
from quorum.node.statemachine import CounterStateMachine
from quorum.node.storage import MemoryNodeStorage, bootstrap
from quorum.raft import Config, Message, Ready


class Box:
    """A Waiter that records its one outcome."""

    def __init__(self) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self.calls = 0

    def resolve(self, value: Any) -> None:
        self.calls += 1
        self.value = value

    def fail(self, exc: BaseException) -> None:
        self.calls += 1
        self.error = exc


async def _persist_now(core: NodeCore, rd: Ready) -> None:
    core.persist(rd)


class Net:
    def __init__(self, n: int, seed: int = 1) -> None:
        self.queue: list[Message] = []
        self.down: set[int] = set()
        ids = tuple(range(1, n + 1))
        members = tuple(MemberInfo(i, peer_url=f"127.0.0.1:{9000 + i}") for i in ids)
        self.storages = {i: MemoryNodeStorage() for i in ids}
        self.sms = {i: CounterStateMachine() for i in ids}
        self.cores: dict[int, NodeCore] = {}
        for i in ids:
            bootstrap(self.storages[i], ids, bootstrap_data(members, CounterStateMachine()))
            self.cores[i] = self._make(i, seed)

    def _make(self, i: int, seed: int) -> NodeCore:
        cfg = Config(id=i, election_ticks=10, heartbeat_ticks=1)
        return NodeCore(cfg, self.storages[i], self.sms[i], random.Random(seed * 100 + i),
                        self.queue.extend, request_timeout_ticks=30)

    def pump(self, rounds: int = 50) -> None:
        for _ in range(rounds):
            for i, core in self.cores.items():
                if i in self.down:
                    continue
                core.drain()
                while core.has_ready():
                    run_sync(process_ready(core, core.ready(), lambda rd, c=core: _persist_now(c, rd)))
                    core.drain()
            msgs, self.queue[:] = list(self.queue), []
            if not msgs:
                return
            for m in msgs:
                if m.to not in self.down and m.from_ not in self.down:
                    self.cores[m.to].receive([m])

    def tick(self, n: int = 1) -> None:
        for _ in range(n):
            for i, core in self.cores.items():
                if i not in self.down:
                    core.tick()
            self.pump()

    def leader(self) -> int:
        leaders = [i for i, c in self.cores.items() if c.is_leader and i not in self.down]
        return leaders[0] if len(leaders) == 1 else 0

    def elect(self) -> int:
        for _ in range(100):
            self.tick()
            if self.leader():
                return self.leader()
        raise AssertionError("no leader elected")


def add(n: int) -> bytes:
    return n.to_bytes(8, "big", signed=True)


def test_proposal_resolves_with_state_machine_result_on_every_node() -> None:
    net = Net(3)
    leader = net.elect()
    follower = 1 if leader != 1 else 2
    boxes = [Box() for _ in range(5)]
    for k, box in enumerate(boxes):
        net.cores[follower if k % 2 else leader].propose(add(k + 1), box)
    net.pump()
    assert [b.error for b in boxes] == [None] * 5
    # Each result is the counter after that command: the results are the prefix sums of the
    # order the log chose, so their successive differences are the addends, each once.
    results = sorted(b.value for b in boxes)
    assert sorted(b - a for a, b in zip([0, *results], results)) == [1, 2, 3, 4, 5]
    for k, box in enumerate(boxes):
        assert (k + 1) in {box.value - r for r in [0, *results]}
    assert all(b.calls == 1 for b in boxes)
    assert {sm.value for sm in net.sms.values()} == {15}


def test_read_barrier_resolves_at_applied_index() -> None:
    net = Net(3)
    leader = net.elect()
    w = Box()
    net.cores[leader].propose(add(7), w)
    net.pump()
    follower = 1 if leader != 1 else 2
    r = Box()
    net.cores[follower].read(r)
    net.pump()
    assert r.error is None
    assert r.value >= net.cores[leader].applied - 0
    assert net.sms[follower].value == 7


def test_no_leader_fails_fast_and_minority_times_out() -> None:
    net = Net(3)
    box = Box()
    net.cores[1].propose(add(1), box)
    net.pump()
    assert isinstance(box.error, NoLeader)
    leader = net.elect()
    net.down = {i for i in net.cores if i != leader}
    late = Box()
    net.cores[leader].propose(add(1), late)
    net.tick(40)
    assert isinstance(late.error, (RequestTimeout, LeaderChanged))


def test_stop_fails_pending_and_new_requests() -> None:
    net = Net(3)
    leader = net.elect()
    net.down = {i for i in net.cores if i != leader}
    box = Box()
    net.cores[leader].propose(add(1), box)
    net.pump()
    net.cores[leader].stop()
    assert isinstance(box.error, NodeStopped)
    after = Box()
    net.cores[leader].read(after)
    assert isinstance(after.error, NodeStopped)


def test_snapshot_and_compaction_bound_the_log() -> None:
    net = Net(3)
    for core in net.cores.values():
        core.snapshot_entries, core.snapshot_catchup_entries = 20, 5
    leader = net.elect()
    for _k in range(60):
        net.cores[leader].propose(add(1), Box())
        net.pump()
    for i, core in net.cores.items():
        assert core.snapshot_index >= 40, i
        assert net.storages[i].log.first_index() > 30
        assert net.sms[i].value == 60


@pytest.mark.parametrize("seed", range(3))
def test_lagging_follower_catches_up_by_snapshot(seed: int) -> None:
    net = Net(3, seed)
    for core in net.cores.values():
        core.snapshot_entries, core.snapshot_catchup_entries = 10, 2
    leader = net.elect()
    lagging = 1 if leader != 1 else 2
    net.down = {lagging}
    for _ in range(40):
        net.cores[leader].propose(add(2), Box())
        net.pump()
    net.down = set()
    net.tick(5)
    assert net.sms[lagging].value == 80
    assert net.cores[lagging].snapshot_index > 0
    assert net.cores[lagging].members.keys() == {1, 2, 3}


def test_a_node_added_to_a_quiet_cluster_catches_up_by_snapshot() -> None:
    """No writes after the change: the new member still gets a snapshot naming it."""
    from quorum.node.core import NodeCore as _NodeCore
    from quorum.raft.types import ConfChange, ConfChangeSingle, ConfChangeType

    net = Net(3)
    leader = net.elect()
    net.cores[leader].propose(add(5), Box())
    net.pump()
    net.storages[4] = MemoryNodeStorage()  # joins empty
    net.sms[4] = CounterStateMachine()
    net.cores[4] = net._make(4, 1)
    assert isinstance(net.cores[4], _NodeCore)
    box = Box()
    member = MemberInfo(4, peer_url="127.0.0.1:9004")
    cc = ConfChange((ConfChangeSingle(ConfChangeType.ADD_LEARNER, 4),))
    net.cores[leader].propose_conf_change(cc, box, (member,))
    net.pump()
    assert box.error is None
    net.tick(30)
    assert net.sms[4].value == 5
    assert 4 in net.cores[4].conf_state.learners


def test_leader_only_proposals_are_never_forwarded() -> None:
    """A deposed leader's lease decision must not reach the new leader through forwarding."""
    from quorum.errors import NotLeader

    net = Net(3)
    leader = net.elect()
    follower = 1 if leader != 1 else 2
    refused = Box()
    net.cores[follower].propose(add(100), refused, leader_only=True)
    net.pump()
    assert isinstance(refused.error, NotLeader)
    assert {sm.value for sm in net.sms.values()} == {0}
    accepted = Box()
    net.cores[leader].propose(add(7), accepted, leader_only=True)
    net.pump()
    assert accepted.error is None and accepted.value == 7
    # control: the same proposal without the flag is forwarded and applied
    forwarded = Box()
    net.cores[follower].propose(add(1), forwarded)
    net.pump()
    assert forwarded.error is None and forwarded.value == 8


def test_the_duplicate_filter_survives_a_snapshot() -> None:
    from quorum.node.core import RecentRequests

    recent = RecentRequests(window=3)
    assert not recent.seen(1, 10) and recent.seen(1, 10)
    for rid in (11, 12, 13):
        recent.seen(1, rid)
    assert not recent.seen(1, 10)  # beyond the window: forgotten (documented bound)
    copy = RecentRequests.restore(recent.dump())
    assert copy.dump() == recent.dump()
    assert copy.seen(1, 13)

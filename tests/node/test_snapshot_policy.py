"""When NodeCore takes periodic snapshots: every ``snapshot_entries`` commands, and with
``snapshot_log_ratio`` r > 0 not before the log applied since the previous snapshot holds r
times that snapshot's bytes (once snapshots reach ``snapshot_ratio_floor``)."""

from __future__ import annotations

from quorum.node.core import NodeCore
from quorum.node.statemachine import CounterStateMachine
from quorum.raft import Entry

from .test_core import Box, Net, add


def _configure(net: Net, *, ratio: float, floor: int) -> None:
    for core in net.cores.values():
        _tune(core, ratio=ratio, floor=floor)


def _tune(core: NodeCore, *, ratio: float, floor: int) -> None:
    core.snapshot_entries, core.snapshot_catchup_entries = 1, 0
    core.snapshot_log_ratio, core.snapshot_ratio_floor = ratio, floor


class SnapshotLog:
    """Follows one node: the log bytes applied so far, and (bytes applied, snapshot size) at
    each new snapshot."""

    def __init__(self, net: Net, node: int) -> None:
        self.net, self.node = net, node
        self.applied_bytes = 0
        self.largest_entry = 0
        self.taken: list[tuple[int, int]] = []
        self._index = net.storages[node].log.snapshot().metadata.index
        net.cores[node].on_entry_applied = self._on_entry

    def _on_entry(self, entry: Entry) -> None:
        self.applied_bytes += len(entry.data)
        self.largest_entry = max(self.largest_entry, len(entry.data))

    def check(self) -> None:
        snap = self.net.storages[self.node].log.snapshot()
        if snap.metadata.index != self._index:
            self._index = snap.metadata.index
            self.taken.append((self.applied_bytes, len(snap.data)))


def _write(net: Net, leader: int, count: int, logs: list[SnapshotLog]) -> None:
    for k in range(count):
        net.cores[leader].propose(add(k), Box())
        net.pump()
        for sl in logs:
            sl.check()


def test_ratio_spaces_snapshots_by_log_bytes_on_every_node() -> None:
    ratio = 3.0
    net = Net(3)
    _configure(net, ratio=ratio, floor=0)
    logs = [SnapshotLog(net, i) for i in net.cores]
    leader = net.elect()
    _write(net, leader, 300, logs)
    for sl in logs:
        assert len(sl.taken) >= 3, sl.taken
        for (b0, s0), (b1, _s1) in zip(sl.taken, sl.taken[1:]):
            logged = b1 - b0
            assert logged >= ratio * s0, (sl.node, sl.taken)
            # taken as soon as it is due: at most one entry past the threshold
            assert logged < ratio * s0 + sl.largest_entry, (sl.node, sl.taken)


def test_without_ratio_every_interval_snapshots() -> None:
    """The same run with ratio 0 snapshots at each command (the plain interval), so what
    spaced the snapshots above is the ratio."""
    net = Net(3)
    _configure(net, ratio=0.0, floor=0)
    sl = SnapshotLog(net, 1)
    leader = net.elect()
    _write(net, leader, 60, [sl])
    assert len(sl.taken) >= 55, len(sl.taken)


def test_snapshots_below_the_floor_ignore_the_ratio() -> None:
    net = Net(3)
    _configure(net, ratio=3.0, floor=1 << 20)  # every snapshot here is far below 1 MiB
    sl = SnapshotLog(net, 1)
    leader = net.elect()
    _write(net, leader, 60, [sl])
    assert len(sl.taken) >= 55, len(sl.taken)


def test_a_restarted_node_keeps_waiting_for_the_ratio() -> None:
    """After a restart the size of the restored snapshot still counts, and the log replayed
    above it counts toward the next one."""
    ratio = 4.0
    net = Net(3)
    _configure(net, ratio=ratio, floor=0)
    leader = net.elect()
    _write(net, leader, 100, [])
    node = 1 if leader != 1 else 2
    snap = net.storages[node].log.snapshot()
    net.sms[node] = CounterStateMachine()
    net.cores[node] = net._make(node, 1)
    _tune(net.cores[node], ratio=ratio, floor=0)
    core = net.cores[node]
    assert core.snapshot_index == snap.metadata.index
    sl = SnapshotLog(net, node)
    net.tick(3)  # the restarted node re-applies the log above its snapshot
    replayed = sl.applied_bytes
    _write(net, leader, 100, [sl])
    assert sl.taken, "no snapshot after the restart"
    first_bytes, _ = sl.taken[0]
    assert first_bytes >= ratio * len(snap.data), (replayed, sl.taken, len(snap.data))
    assert net.sms[node].value == net.sms[leader].value

"""Several proposals per Raft entry (ProposalBatch): packing, order, the duplicate filter per
command, old single-proposal entries, the size limit and the snapshot interval in commands."""

from __future__ import annotations

import contextlib
import random
from typing import Any

import pytest

from quorum.errors import InvalidCommand, QuorumError
from quorum.node import envelope
from quorum.node.core import NodeCore, RecentRequests, bootstrap_data
from quorum.node.envelope import BATCH_MARKER, MemberInfo
from quorum.node.kv import KvStateMachine
from quorum.node.ready import process_ready, run_sync
from quorum.node.statemachine import CounterStateMachine
from quorum.node.storage import MemoryNodeStorage, bootstrap
from quorum.raft import Config, Ready
from quorum.raft.types import EntryType, MessageType
from quorum.state import commands as sc

from .test_core import Box, Net, add


class BatchCounter(CounterStateMachine):
    """The counter with apply_batch: records each call's (index, number of commands)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, int]] = []

    def apply_batch(self, index: int, commands: list[bytes]) -> list[Any]:
        self.calls.append((index, len(commands)))
        out: list[Any] = []
        for command in commands:
            if len(command) != 8:  # a command the counter refuses: state unchanged
                out.append(InvalidCommand("not an 8-byte addend"))
                continue
            out.append(self.apply(index, command))
        return out


class BatchNet(Net):
    """Net whose nodes run BatchCounter (so the runtime packs proposals)."""

    def __init__(self, n: int, seed: int = 1, **core_args: Any) -> None:
        self.core_args = core_args
        super().__init__(n, seed)
        for i in self.cores:
            self.sms[i] = BatchCounter()
            self.cores[i] = self._make(i, seed)

    def _make(self, i: int, seed: int) -> NodeCore:
        cfg = Config(id=i, election_ticks=10, heartbeat_ticks=1)
        return NodeCore(cfg, self.storages[i], self.sms[i], random.Random(seed * 100 + i),
                        self.queue.extend, request_timeout_ticks=30,
                        **getattr(self, "core_args", {}))


def _forward(core: NodeCore) -> None:
    """Feed the core's queued proposals and hand out its Readies (the messages go to the
    net's queue), without delivering anything."""
    core.drain()
    while core.has_ready():
        run_sync(process_ready(core, core.ready(), lambda rd: _persist(core, rd)))
        core.drain()


async def _persist(core: NodeCore, rd: Ready) -> None:
    core.persist(rd)


def _entries(net: Net, node: int) -> list[bytes]:
    log = net.storages[node].log
    return [e.data for e in log.entries(log.first_index(), log.last_index() + 1)
            if e.type == EntryType.NORMAL and e.data]


def test_one_loop_turn_of_proposals_is_one_entry_applied_in_order() -> None:
    net = BatchNet(3)
    leader = net.elect()
    boxes = [Box() for _ in range(6)]
    for k, box in enumerate(boxes):
        net.cores[leader].propose(add(k + 1), box)
    net.pump()
    # in proposal order: each result is the running sum up to that command
    assert [b.value for b in boxes] == [1, 3, 6, 10, 15, 21]
    assert all(b.error is None and b.calls == 1 for b in boxes)
    for i in net.cores:
        batches = [d for d in _entries(net, i) if d[0] == BATCH_MARKER]
        assert len(batches) == 1, i
        assert envelope.decode_batch(batches[0]).payloads == tuple(add(k + 1) for k in range(6))
        assert net.sms[i].value == 21
        assert [n for _, n in net.sms[i].calls] == [6]


def test_a_failed_command_fails_alone_and_the_rest_of_its_batch_applies() -> None:
    net = BatchNet(3)
    leader = net.elect()
    good1, bad, good2 = Box(), Box(), Box()
    net.cores[leader].propose(add(2), good1)
    net.cores[leader].propose(b"junk", bad)
    net.cores[leader].propose(add(5), good2)
    net.pump()
    assert isinstance(bad.error, InvalidCommand)
    assert (good1.value, good2.value) == (2, 7)
    assert {sm.value for sm in net.sms.values()} == {7}


def test_a_batch_forwarded_twice_applies_once() -> None:
    """A follower's batch whose forwarded proposal message is delivered twice is appended
    twice; the second copy is skipped command by command (the duplicate filter)."""
    net = BatchNet(3)
    leader = net.elect()
    follower = 1 if leader != 1 else 2
    boxes = [Box() for _ in range(3)]
    for k, box in enumerate(boxes):
        net.cores[follower].propose(add(k + 1), box)
    _forward(net.cores[follower])  # the follower forwards its batch as one PROP message
    props = [m for m in net.queue if m.type == MessageType.PROP]
    assert len(props) == 1 and len(props[0].entries) == 1
    net.queue.extend(props)  # delivered twice
    net.pump()
    batches = [d for d in _entries(net, leader) if d[0] == BATCH_MARKER]
    assert len(batches) == 2  # both copies committed
    assert {sm.value for sm in net.sms.values()} == {6}
    assert [b.value for b in boxes] == [1, 3, 6]


def test_planted_bug_without_the_duplicate_filter_a_twice_forwarded_batch_applies_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The check above fails when the filter is broken: this is what it protects against."""
    monkeypatch.setattr(RecentRequests, "fresh",
                        lambda self, origin, first, count: list(range(count)))
    net = BatchNet(3)
    leader = net.elect()
    follower = 1 if leader != 1 else 2
    for k in range(3):
        net.cores[follower].propose(add(k + 1), Box())
    _forward(net.cores[follower])
    net.queue.extend([m for m in net.queue if m.type == MessageType.PROP])
    net.pump()
    assert {sm.value for sm in net.sms.values()} == {12}


def test_fresh_matches_seen_one_by_one_including_the_window() -> None:
    """The batch form of the filter leaves the same state as ``seen`` per id, also when a
    batch is longer than the window or overlaps ids applied before."""
    one, many = RecentRequests(window=5), RecentRequests(window=5)
    for origin, first, count in [(1, 1, 3), (1, 3, 4), (2, 10, 8), (1, 100, 2), (1, 2, 1)]:
        expected = [i for i in range(count) if not one.seen(origin, first + i)]
        assert many.fresh(origin, first, count) == expected
        assert many.dump() == one.dump()


def test_only_the_commands_already_applied_are_skipped() -> None:
    core = BatchNet(1).cores[1]
    sm = core.sm
    assert isinstance(sm, BatchCounter)
    assert not core._recent.seen(7, 11)  # request 11 of node 7 was applied before
    data = envelope.encode(envelope.ProposalBatch(7, 10, (add(1), add(10), add(100))))
    from quorum.raft.types import Entry

    core._apply_entry(Entry(term=1, index=core.applied + 1, type=EntryType.NORMAL, data=data))
    assert sm.value == 101
    assert sm.calls[-1][1] == 2


def test_entries_written_without_batches_still_apply() -> None:
    """A log written by the previous release (one Proposal per entry) replays into a node
    that packs batches, and new batches follow it in the same log."""
    net = Net(3)  # CounterStateMachine: no apply_batch, one entry per proposal
    leader = net.elect()
    for k in range(4):
        net.cores[leader].propose(add(k + 1), Box())
    net.pump()
    assert all(d[0] != BATCH_MARKER for d in _entries(net, leader))
    # "upgrade": every node restarts on the same storage with a batching state machine
    for i in net.cores:
        net.sms[i] = BatchCounter()
        cfg = Config(id=i, election_ticks=10, heartbeat_ticks=1)
        net.cores[i] = NodeCore(cfg, net.storages[i], net.sms[i], random.Random(i),
                                net.queue.extend, request_timeout_ticks=30, incarnation=1)
    leader = net.elect()
    boxes = [Box() for _ in range(3)]
    for box in boxes:
        net.cores[leader].propose(add(100), box)
    net.pump()
    assert [b.value for b in boxes] == [110, 210, 310]
    assert {sm.value for sm in net.sms.values()} == {310}
    assert any(d[0] == BATCH_MARKER for d in _entries(net, leader))


def test_max_batch_bytes_splits_a_loop_turn_into_several_entries() -> None:
    net = BatchNet(3, max_batch_bytes=20)  # two 8-byte addends per entry
    leader = net.elect()
    boxes = [Box() for _ in range(5)]
    for box in boxes:
        net.cores[leader].propose(add(1), box)
    net.pump()
    assert [b.value for b in boxes] == [1, 2, 3, 4, 5]
    datas = _entries(net, leader)
    sizes = [len(envelope.decode_batch(d).payloads) if d[0] == BATCH_MARKER else 1
             for d in datas]
    assert sizes == [2, 2, 1]


def test_the_snapshot_interval_counts_commands_not_entries() -> None:
    net = BatchNet(3)
    for core in net.cores.values():
        core.snapshot_entries, core.snapshot_catchup_entries = 50, 5
    leader = net.elect()
    for _ in range(4):  # 4 entries of 20 commands: 80 commands since the start
        for _ in range(20):
            net.cores[leader].propose(add(1), Box())
        net.pump()
    for i, core in net.cores.items():
        assert core.snapshot_index > 0, i
        assert net.sms[i].value == 80


def test_kv_batch_applies_in_order_and_fails_commands_alone() -> None:
    """The key-value state machine through the batch path: sessions, an error in the middle,
    the same index for every command, and one on_apply per applied command."""
    kv = KvStateMachine()
    seen: list[str] = []
    kv.on_apply = lambda req, resp: seen.append(type(req).__name__)
    open_resp = kv.apply(1, sc.encode_envelope(sc.Envelope(sc.SessionOpenRequest())))
    sid = open_resp.session_id
    cmds = [
        sc.encode_envelope(sc.Envelope(sc.PutRequest(b"a", b"1"), sid, 1)),
        sc.encode_envelope(sc.Envelope(sc.LeaseRevokeRequest(99))),  # no such lease
        b"\xffgarbage",  # does not decode
        sc.encode_envelope(sc.Envelope(sc.PutRequest(b"a", b"2"), sid, 2)),
        sc.encode_envelope(sc.Envelope(sc.PutRequest(b"a", b"2"), sid, 2)),  # a retry
    ]
    results = kv.apply_batch(2, cmds)
    assert [type(r).__name__ for r in results] == [
        "PutResponse", "LeaseNotFound", "InvalidCommand", "PutResponse", "PutResponse"]
    assert isinstance(results[1], QuorumError)
    assert results[0].revision + 1 == results[3].revision == kv.store.revision
    assert results[4] == results[3]  # the retry returned the recorded outcome
    assert kv.store.applied_index == 2
    assert seen == ["SessionOpenRequest", "PutRequest", "PutRequest", "PutRequest"]
    # the batch path and the one-by-one path give the same state
    other = KvStateMachine()
    other.apply(1, sc.encode_envelope(sc.Envelope(sc.SessionOpenRequest())))
    for i, cmd in enumerate(cmds):
        with contextlib.suppress(QuorumError):
            other.apply(2 + i, cmd)
    assert other.store.store.digest == kv.store.store.digest


def test_kv_nodes_pack_batches_and_agree() -> None:
    ids = (1, 2, 3)
    members = tuple(MemberInfo(i) for i in ids)
    net = Net(3)
    for i in ids:
        net.storages[i] = MemoryNodeStorage()
        bootstrap(net.storages[i], ids, bootstrap_data(members, KvStateMachine()))
        net.sms[i] = KvStateMachine()  # type: ignore[assignment]
        net.cores[i] = NodeCore(Config(id=i, election_ticks=10, heartbeat_ticks=1),
                                net.storages[i], net.sms[i], random.Random(i),
                                net.queue.extend, request_timeout_ticks=30)
    leader = net.elect()
    boxes = [Box() for _ in range(50)]
    for k, box in enumerate(boxes):
        req = sc.PutRequest(b"k%d" % (k % 7), b"v%d" % k)
        net.cores[ids[k % 3]].propose(sc.encode_envelope(sc.Envelope(req)), box)
    net.pump()
    assert all(b.error is None for b in boxes)
    assert sorted(b.value.revision for b in boxes) == list(range(2, 52))  # the store began at 1
    hashes = {net.sms[i].store.state_hash() for i in ids}  # type: ignore[attr-defined]
    assert len(hashes) == 1
    assert sum(d[0] == BATCH_MARKER for d in _entries(net, leader)) == 3  # one per origin


def test_compaction_keeps_the_catchup_tail_in_commands() -> None:
    """The log kept below a snapshot for lagging followers is counted in commands, as the
    interval is: counted in entries, a tail of 20 entries of 30 commands each would keep 600
    commands, and nothing would be compacted here."""
    net = BatchNet(3)
    for core in net.cores.values():
        core.snapshot_entries, core.snapshot_catchup_entries = 50, 40
    leader = net.elect()
    for _ in range(10):  # 10 entries of 30 commands
        for _ in range(30):
            net.cores[leader].propose(add(1), Box())
        net.pump()
    for i, core in net.cores.items():
        log = net.storages[i].log
        assert core.snapshot_index > 0, i
        assert log.first_index() > 5, i  # compacted well past the first batches
        kept = [e for e in log.entries(log.first_index(), core.snapshot_index + 1)
                if e.type == EntryType.NORMAL and e.data]
        commands = sum(len(envelope.decode_batch(e.data).payloads) if e.data[0] == BATCH_MARKER
                       else 1 for e in kept)
        # at least the tail (40) survives below the snapshot, and not much more than one
        # entry beyond it (compaction stops at an entry boundary)
        assert 40 <= commands < 40 + 30, (i, commands)
        assert net.sms[i].value == 300


def test_compaction_without_batches_is_index_arithmetic() -> None:
    """One command per entry: compaction lands exactly where it did before batches."""
    net = Net(3)
    for core in net.cores.values():
        core.snapshot_entries, core.snapshot_catchup_entries = 20, 5
    leader = net.elect()
    for _ in range(45):
        net.cores[leader].propose(add(1), Box())
        net.pump()
    for i, core in net.cores.items():
        assert net.storages[i].log.first_index() == core.snapshot_index - 5 + 1, i


def test_planted_bug_a_tail_counted_in_entries_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The tail check above fails when compaction counts entries (the rule before batches)."""
    monkeypatch.setattr(NodeCore, "_catchup_start",
                        lambda self, job: job.index - self.snapshot_catchup_entries)
    with pytest.raises(AssertionError):
        test_compaction_keeps_the_catchup_tail_in_commands()

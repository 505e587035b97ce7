"""Embedded mode (quorum.node.embedded): three real nodes in one event loop on loopback, each
with its own durable WAL (fsync on), replicating CounterStateMachine."""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from quorum.errors import ConfigError, LeaderChanged, NodeStopped, RequestTimeout
from quorum.node.embedded import (
    EmbeddedNode,
    EmbeddedOptions,
    loopback_peers,
    propose_with_retry,
    start_embedded,
)
from quorum.node.statemachine import CounterStateMachine

Node = EmbeddedNode[CounterStateMachine]
FAST = EmbeddedOptions(tick_ms=20, election_ticks=10)
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "counter.py"


def inc(delta: int = 1) -> bytes:
    return delta.to_bytes(8, "big", signed=True)


def run(coro: Awaitable[Any], timeout_s: float = 60) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


async def start_cluster(tmp: Path, ids: tuple[int, ...] = (1, 2, 3)) -> list[Node]:
    peers = loopback_peers(ids)
    return [await start_embedded(i, peers, str(tmp / f"n{i}"), CounterStateMachine(), FAST)
            for i in ids]


async def with_cluster(tmp: Path, body: Callable[[list[Node]], Awaitable[Any]]) -> Any:
    nodes = await start_cluster(tmp)
    try:
        await nodes[0].wait_for_leader()
        return await body(nodes)
    finally:
        for n in nodes:
            await n.stop()


async def read_values(nodes: list[Node]) -> list[int]:
    return [await n.read(lambda sm: sm.value) for n in nodes]


def test_increments_from_many_tasks_on_every_node_agree(tmp_path: Path) -> None:
    async def body(nodes: list[Node]) -> tuple[list[int], list[int], list[int]]:
        results: list[int] = []

        async def task(node: Node, delta: int) -> None:
            for _ in range(20):
                results.append(await node.propose(inc(delta)))

        # 4 tasks per node, followers included (they forward to the leader); deltas differ
        # so a lost or doubled command changes the sum.
        await asyncio.gather(*(task(n, d) for n in nodes for d in (1, 2, 3, 5)))
        values = await read_values(nodes)
        applied = [n.applied_index for n in nodes]
        return values, applied, results

    values, applied, results = run(with_cluster(tmp_path, body))
    expected = 20 * 3 * (1 + 2 + 3 + 5)
    assert values == [expected] * 3
    assert len(set(applied)) == 1
    # every proposer got the counter value right after its own command: all distinct and the
    # largest is the final value (each result is a prefix sum of the one applied order)
    assert len(set(results)) == len(results) == 20 * 3 * 4 and max(results) == expected


class NodeBiasedCounter(CounterStateMachine):
    """Planted bug: apply depends on which node runs it (not deterministic across replicas)."""

    def __init__(self, bias: int) -> None:
        super().__init__()
        self.bias = bias

    def apply(self, index: int, data: bytes) -> int:
        self.value += self.bias
        return super().apply(index, data)


def test_planted_nondeterministic_state_machine_is_caught_by_the_agreement_check(
        tmp_path: Path) -> None:
    """The agreement check above reads each node's own state: a replica that applies the same
    log differently shows up as disagreement."""
    peers = loopback_peers((1, 2, 3))

    async def scenario() -> list[int]:
        nodes = [await start_embedded(i, peers, str(tmp_path / f"n{i}"), NodeBiasedCounter(i),
                                      FAST) for i in peers]
        try:
            await nodes[0].wait_for_leader()
            for _ in range(5):
                await nodes[0].propose(inc())
            return [await n.read(lambda sm: sm.value) for n in nodes]
        finally:
            for n in nodes:
                await n.stop()

    values = run(scenario())
    assert len(set(values)) == 3  # 5 + 5 * bias on each node


def test_leader_stop_then_survivors_elect_and_continue(tmp_path: Path) -> None:
    async def body(nodes: list[Node]) -> tuple[int, int, int, list[int], int]:
        # "acked" counts increments whose propose returned; "unknown" those that failed
        # with an outcome-unknown error (LeaderChanged, RequestTimeout, NodeStopped).
        acked = unknown = 0
        stop = asyncio.Event()

        async def writer(node: Node) -> None:
            nonlocal acked, unknown
            while not stop.is_set():
                try:
                    await propose_with_retry(node, inc())
                    acked += 1
                except (LeaderChanged, RequestTimeout, NodeStopped):
                    unknown += 1  # the command may or may not have committed
                    await asyncio.sleep(0.02)

        leader_id = nodes[0].leader_id
        old = next(n for n in nodes if n.id == leader_id)
        survivors = [n for n in nodes if n is not old]
        tasks = [asyncio.create_task(writer(n)) for n in nodes for _ in range(3)]
        await asyncio.sleep(0.5)
        before = acked
        await old.stop()
        assert await survivors[0].wait_for_leader() != old.id
        acked_at_election = acked
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*tasks)
        values = await read_values(survivors)
        return before, acked_at_election, acked, values, unknown

    before, at_election, acked, values, unknown = run(with_cluster(tmp_path, body))
    assert before > 0 and acked > at_election  # writes went on under the new leader
    assert values[0] == values[1]
    # every acknowledged increment is in, and nothing beyond what might have committed
    assert acked <= values[0] <= acked + unknown


def test_restart_recovers_the_counter_from_disk(tmp_path: Path) -> None:
    peers = loopback_peers((1, 2, 3))

    async def scenario() -> tuple[int, int]:
        nodes = [await start_embedded(i, peers, str(tmp_path / f"n{i}"),
                                      CounterStateMachine(), FAST) for i in peers]
        try:
            await nodes[0].wait_for_leader()
            for _ in range(30):
                await nodes[0].propose(inc(7))
            victim = next(n for n in nodes if not n.is_leader)
            await victim.stop()
            await next(n for n in nodes if n.is_leader).propose(inc(1))  # while it is down
            # a fresh state machine is rebuilt from the WAL and the peers' log
            again = await start_embedded(victim.id, peers, victim.data_dir,
                                         CounterStateMachine(), FAST)
            nodes[nodes.index(victim)] = again
            await again.wait_for_leader()
            after = await again.read(lambda sm: sm.value)
            leader_value = await next(n for n in nodes if n.is_leader).read(lambda sm: sm.value)
            return after, leader_value
        finally:
            for n in nodes:
                await n.stop()

    after, leader_value = run(scenario())
    assert after == leader_value == 211


def test_snapshot_catches_up_a_node_that_missed_compacted_entries(tmp_path: Path) -> None:
    """With a tiny snapshot interval the leader compacts past what a stopped follower has;
    on return it must be sent a snapshot (over the chunked snapshot stream) to catch up."""
    opts = EmbeddedOptions(tick_ms=20, snapshot_entries=10, snapshot_catchup_entries=2)
    peers = loopback_peers((1, 2, 3))

    async def scenario() -> list[int]:
        nodes = [await start_embedded(i, peers, str(tmp_path / f"n{i}"),
                                      CounterStateMachine(), opts) for i in peers]
        try:
            leader = nodes[await nodes[0].wait_for_leader() - 1]
            lagging = next(n for n in nodes if n is not leader)
            lagging_last = lagging.storage.log.last_index()
            await lagging.stop()
            for _ in range(60):
                await leader.propose(inc())
            # the entries it lacks are gone from the leader's log: only a snapshot helps
            assert leader.storage.log.first_index() > lagging_last + 1
            back = await start_embedded(lagging.id, peers, lagging.data_dir,
                                        CounterStateMachine(), opts)
            nodes[nodes.index(lagging)] = back
            await back.wait_for_leader()
            return await read_values(nodes)
        finally:
            for n in nodes:
                await n.stop()

    assert run(scenario()) == [60, 60, 60]


def test_submit_with_callbacks_on_every_node(tmp_path: Path) -> None:
    """submit: no future per command; every callback runs once with its command's result."""

    async def body(nodes: list[Node]) -> tuple[list[int], list[tuple[int, Any, Any]]]:
        outcomes: list[tuple[int, Any, Any]] = []
        all_done = asyncio.Event()
        total = 3 * 50

        def make_callback(node_id: int) -> Callable[[Any, BaseException | None], None]:
            def callback(result: Any, error: BaseException | None) -> None:
                outcomes.append((node_id, result, error))
                if len(outcomes) == total:
                    all_done.set()
            return callback

        # one loop turn submits everything (a batch per node; followers forward theirs)
        for n in nodes:
            for _ in range(50):
                n.submit(inc(n.id), make_callback(n.id))
        await asyncio.wait_for(all_done.wait(), 30)
        await asyncio.sleep(0.1)  # a second call of any callback would show up here
        return await read_values(nodes), outcomes

    values, outcomes = run(with_cluster(tmp_path, body))
    expected = 50 * (1 + 2 + 3)
    assert values == [expected] * 3
    assert len(outcomes) == 150 and all(err is None for _, _, err in outcomes)
    results = [r for _, r, _ in outcomes]
    # each result is the counter right after that command: distinct prefix sums of one order
    assert len(set(results)) == 150 and max(results) == expected


def test_submit_on_a_stopped_node_calls_back_with_node_stopped(tmp_path: Path) -> None:
    async def scenario() -> list[tuple[Any, Any]]:
        node = await start_embedded(1, loopback_peers((1,)), str(tmp_path / "solo"),
                                    CounterStateMachine(), FAST)
        await node.wait_for_leader()
        await node.stop()
        got: list[tuple[Any, Any]] = []
        node.submit(inc(1), lambda r, e: got.append((r, e)))
        return got

    got = run(scenario())
    assert len(got) == 1 and got[0][0] is None and isinstance(got[0][1], NodeStopped)


def test_a_raising_callback_does_not_stop_the_node(tmp_path: Path) -> None:
    async def scenario() -> tuple[int, int, BaseException | None]:
        node = await start_embedded(1, loopback_peers((1,)), str(tmp_path / "solo"),
                                    CounterStateMachine(), FAST)
        try:
            await node.wait_for_leader()
            calls = 0

            def bad(result: Any, error: BaseException | None) -> None:
                nonlocal calls
                calls += 1
                raise RuntimeError("application bug")

            for _ in range(3):
                node.submit(inc(1), bad)
            after: int = await node.propose(inc(10))  # applied after the three
            return calls, after, node.fatal_error
        finally:
            await node.stop()

    calls, after, fatal = run(scenario())
    assert (calls, after, fatal) == (3, 13, None)


def test_callback_waiter_calls_back_only_once() -> None:
    """Planted double outcome (resolve, then fail, then resolve): one call, the first."""
    from quorum.node.embedded import _CallbackWaiter

    got: list[tuple[Any, Any]] = []
    w = _CallbackWaiter(lambda r, e: got.append((r, e)))
    w.resolve(7)
    w.fail(NodeStopped("late"))
    w.resolve(8)
    assert got == [(7, None)]


def test_stopped_node_rejects_calls(tmp_path: Path) -> None:
    async def scenario() -> None:
        node = await start_embedded(1, loopback_peers((1,)), str(tmp_path / "solo"),
                                    CounterStateMachine(), FAST)
        await node.wait_for_leader()
        assert await node.propose(inc(4)) == 4
        await node.stop()
        with pytest.raises(NodeStopped):
            await node.propose(inc(1))

    run(scenario())


def test_taken_peer_port_fails_start_and_releases_the_storage(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from quorum.node.storage import DurableNodeStorage

    closed: list[object] = []
    real_close = DurableNodeStorage.close

    def counting_close(self: DurableNodeStorage) -> None:
        closed.append(self)
        real_close(self)

    monkeypatch.setattr(DurableNodeStorage, "close", counting_close)

    async def scenario() -> int:
        with socket.socket() as blocker:
            blocker.bind(("127.0.0.1", 0))
            blocker.listen()
            taken = {1: f"127.0.0.1:{blocker.getsockname()[1]}"}
            with pytest.raises(OSError):
                await start_embedded(1, taken, str(tmp_path / "n"), CounterStateMachine(), FAST)
        assert len(closed) == 1  # the failed start closed its WAL and snapshot files
        # the same data dir opens again once the port is free
        node = await start_embedded(1, loopback_peers((1,)), str(tmp_path / "n"),
                                    CounterStateMachine(), FAST)
        try:
            await node.wait_for_leader()
            result: int = await node.propose(inc(3))
            return result
        finally:
            await node.stop()

    assert run(scenario()) == 3


@pytest.mark.parametrize(
    ("node_id", "peers", "options"),
    [
        (4, {1: "127.0.0.1:1", 2: "127.0.0.1:2"}, None),  # own id missing
        (0, {0: "127.0.0.1:1"}, None),
        (1, {1: "localhost"}, None),  # no port
        (1, {1: "127.0.0.1:1"}, EmbeddedOptions(election_ticks=1, heartbeat_ticks=1)),
        (1, {1: "127.0.0.1:1"}, EmbeddedOptions(lease_reads=True, check_quorum=False)),
    ],
)
def test_bad_configuration_is_refused(node_id: int, peers: dict[int, str],
                                      options: EmbeddedOptions | None) -> None:
    with pytest.raises(ConfigError):
        EmbeddedNode(node_id, peers, "unused", CounterStateMachine(), options)


def _load_example() -> Any:
    spec = importlib.util.spec_from_file_location("counter_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_counter_example_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    example = _load_example()
    values = run(example.run_in_process(str(tmp_path), proposers=2, each=10, burst=10))
    assert values == [90, 90, 90]  # 3 nodes x (2 proposers x 10 + a burst of 10)
    out = capsys.readouterr().out
    assert out.count("reads counter = 90") == 3 and "burst: 30 of 30" in out


def test_counter_example_three_processes(tmp_path: Path) -> None:
    example = _load_example()
    values = example.run_processes(str(tmp_path), each=10)
    assert values == [30, 30, 30]

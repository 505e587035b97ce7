"""A replicated counter: quorum as an embedded Raft library for your own state machine.

Three nodes on loopback, each with its own durable WAL (fsync on), replicate a
CounterStateMachine (commands are signed 8-byte integers added to the counter). Increments are
proposed on every node (followers forward them to the leader), by tasks awaiting ``propose``
and by a burst of ``submit`` callbacks; each node then reads the counter linearizably
(ReadIndex) and they all see the same value.

    .venv/bin/python examples/counter.py                  # 3 nodes in this process
    .venv/bin/python examples/counter.py --processes      # 3 nodes, one process each

Your own state machine only needs apply/snapshot/restore (quorum.node.statemachine).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import subprocess
import sys
import tempfile

from quorum.node.embedded import (
    EmbeddedNode,
    loopback_peers,
    propose_with_retry,
    start_embedded,
)
from quorum.node.statemachine import CounterStateMachine

NODE_IDS = (1, 2, 3)


def increment(delta: int = 1) -> bytes:
    """The command CounterStateMachine understands: a signed 8-byte big-endian integer."""
    return delta.to_bytes(8, "big", signed=True)


async def proposer(node: EmbeddedNode[CounterStateMachine], count: int) -> None:
    for _ in range(count):
        await propose_with_retry(node, increment())


async def submit_burst(node: EmbeddedNode[CounterStateMachine], count: int) -> int:
    """Submit ``count`` increments at once with callbacks (no task or future each: the way to
    keep many commands in flight); wait for every callback; return how many succeeded."""
    if count == 0:
        return 0
    loop = asyncio.get_running_loop()
    all_done: asyncio.Future[None] = loop.create_future()
    outcomes: list[BaseException | None] = []

    def callback(result: object, error: BaseException | None) -> None:
        outcomes.append(error)
        if len(outcomes) == count and not all_done.done():
            all_done.set_result(None)

    for _ in range(count):
        node.submit(increment(), callback)
    await all_done
    return sum(error is None for error in outcomes)


async def run_in_process(data_dir: str, proposers: int = 4, each: int = 25,
                         burst: int = 100) -> list[int]:
    """Start three nodes here, increment from ``proposers`` tasks per node and in one burst of
    ``burst`` callbacks per node, then read on each."""
    peers = loopback_peers(NODE_IDS)
    nodes = [await start_embedded(i, peers, f"{data_dir}/node{i}", CounterStateMachine())
             for i in NODE_IDS]
    try:
        leader = await nodes[0].wait_for_leader()
        print(f"leader: node {leader}")
        await asyncio.gather(*(proposer(n, each) for n in nodes for _ in range(proposers)))
        ok = await asyncio.gather(*(submit_burst(n, burst) for n in nodes))
        print(f"burst: {sum(ok)} of {burst * len(nodes)} submitted increments applied")
        values = [await n.read(lambda sm: sm.value) for n in nodes]
        for n, v in zip(nodes, values):
            print(f"node {n.id} reads counter = {v} (applied index {n.applied_index})")
        return values
    finally:
        for n in nodes:
            await n.stop()


# --- three processes ---------------------------------------------------------------------------


async def run_one_node(node_id: int, peers: dict[int, str], data_dir: str, each: int,
                       expected: int) -> None:
    """Child process: increment ``each`` times, wait until the counter reaches ``expected``
    (everyone's increments) reading linearizably, print it, then serve until stdin closes
    (the others may still need this node for their majority)."""
    node = await start_embedded(node_id, peers, data_dir, CounterStateMachine())
    try:
        await node.wait_for_leader()
        await proposer(node, each)
        value = await node.read(lambda sm: sm.value)
        while value < expected:
            await asyncio.sleep(0.05)
            value = await node.read(lambda sm: sm.value)
        print(f"node {node_id} reads counter = {value}", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    finally:
        await node.stop()


def run_processes(data_dir: str, each: int = 50) -> list[int]:
    """Parent: start one child per node, collect what each read, then stop them all."""
    peers = loopback_peers(NODE_IDS)
    spec = ",".join(f"{i}={a}" for i, a in peers.items())
    children = [
        subprocess.Popen(
            [sys.executable, __file__, "--node", str(i), "--peers", spec,
             "--data-dir", f"{data_dir}/node{i}", "--each", str(each),
             "--expected", str(each * len(NODE_IDS))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for i in NODE_IDS
    ]
    values = []
    try:
        for child in children:
            assert child.stdout is not None
            line = child.stdout.readline().strip()
            print(line)
            values.append(int(line.rpartition("=")[2]) if "=" in line else -1)
    finally:
        for child in children:
            assert child.stdin is not None
            child.stdin.close()
        for child in children:
            child.wait(timeout=30)
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", action="store_true", help="one process per node")
    parser.add_argument("--each", type=int, default=50, help="increments per proposer")
    parser.add_argument("--node", type=int, help=argparse.SUPPRESS)  # child mode
    parser.add_argument("--peers", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    parser.add_argument("--expected", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # links going down at shutdown are expected
    if args.node is not None:
        peers = {int(k): v for k, v in (p.split("=", 1) for p in args.peers.split(","))}
        asyncio.run(run_one_node(args.node, peers, args.data_dir, args.each, args.expected))
        return
    with tempfile.TemporaryDirectory(prefix="counter-") as tmp:
        if args.processes:
            values = run_processes(tmp, args.each)
        else:
            values = asyncio.run(run_in_process(tmp, each=args.each))
    print("all nodes agree" if len(set(values)) == 1 else f"DISAGREEMENT: {values}")


if __name__ == "__main__":
    main()

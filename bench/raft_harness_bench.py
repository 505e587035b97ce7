"""Throughput of the Raft core on the in-memory harness: 3 voters in one process, no faults.

Proposals of ``--size`` bytes (an 8-byte command id + payload) are proposed at the leader in
batches of ``--batch``; after each batch the cluster settles (every Ready is persisted into
MemoryStorage, messages are delivered, committed entries applied) and every ``--tick-every``
batches one tick passes (heartbeats). Reported: entries committed and applied on all three
nodes per second, and AppendEntries messages per follower per batch in steady state.
``--check`` keeps the invariant checker on (off by default: it is test machinery);
``--profile`` prints the top cProfile entries.

    .venv/bin/python bench/raft_harness_bench.py [--entries N] [--batch B] [--size BYTES]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

from quorum.raft.harness.cluster import ID_BYTES, Cluster
from quorum.raft.types import MessageType


def setup(check: bool, snapshot_every: int) -> tuple[Cluster, int]:
    c = Cluster(
        seed=1, voters=3, check=check, record_applied=False, snapshot_every=snapshot_every
    )
    leader = c.wait_leader(100)
    assert leader is not None
    c.one(b"warm-up", 3)
    return c, leader


def run(
    c: Cluster,
    leader: int,
    entries: int,
    batch: int,
    size: int,
    tick_every: int,
    pipelined: bool,
    one_step: bool = False,
) -> dict[str, float]:
    raw = c.nodes[leader].raw
    assert raw is not None
    payload = b"x" * (size - ID_BYTES)
    first_cid = 1_000_000
    target = c.applied_index(leader) + entries
    apps_before = c.messages_sent(MessageType.APP)
    batches = 0
    propose_s = 0.0
    start, cpu_start = time.perf_counter(), time.process_time()
    cid = first_cid
    while cid < first_cid + entries:
        t0 = time.perf_counter()
        count = min(batch, first_cid + entries - cid)
        if one_step:  # the whole batch in one step (RawNode.propose_batch)
            raw.propose_batch([(cid + k).to_bytes(ID_BYTES, "big") + payload for k in range(count)])
            cid += count
        else:
            for _ in range(count):
                raw.propose(cid.to_bytes(ID_BYTES, "big") + payload)
                cid += 1
        propose_s += time.perf_counter() - t0
        batches += 1
        if pipelined:
            c.turn(one_ready=True)  # the next batch goes out before this one settles
        else:
            c.settle()
        if batches % tick_every == 0:
            c.tick()
    c.settle()
    while min(c.applied_index(i) for i in c.ids) < target:
        c.tick()
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    apps = c.messages_sent(MessageType.APP) - apps_before
    return {
        "entries_per_s": entries / elapsed,
        "entries_per_cpu_s": entries / cpu,
        "apps_per_follower_per_batch": apps / (len(c.ids) - 1) / batches,
        "elapsed_s": elapsed,
        "propose_share": propose_s / elapsed,
        "batches": batches,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--tick-every", type=int, default=10)
    parser.add_argument("--snapshot-every", type=int, default=20_000)
    parser.add_argument("--check", action="store_true", help="keep the invariant checker on")
    parser.add_argument(
        "--pipelined",
        action="store_true",
        help="one Ready per node and one delivery round per batch (no settling in between), "
        "so commit notices ride on the next batch's appends",
    )
    parser.add_argument("--profile", action="store_true", help="print the top cProfile costs")
    parser.add_argument(
        "--propose-batch",
        action="store_true",
        help="propose each batch with one RawNode.propose_batch call instead of one propose each",
    )
    args = parser.parse_args()
    c, leader = setup(args.check, args.snapshot_every)
    profiler = cProfile.Profile() if args.profile else None
    if profiler:
        profiler.enable()
    result = run(
        c, leader, args.entries, args.batch, args.size, args.tick_every, args.pipelined,
        args.propose_batch,
    )
    if profiler:
        profiler.disable()
    print(
        f"3 voters, batch {args.batch}, {args.size} B, checker {'on' if args.check else 'off'}"
        f"{', pipelined' if args.pipelined else ''}"
        f"{', propose_batch' if args.propose_batch else ''}: "
        f"{result['entries_per_s']:,.0f} entries/s committed+applied on all nodes "
        f"({result['entries_per_cpu_s']:,.0f} per CPU second); "
        f"{result['apps_per_follower_per_batch']:.2f} appends per follower per batch "
        f"({result['batches']} batches, {result['elapsed_s']:.2f} s, "
        f"{result['propose_share']:.0%} of it proposing)"
    )
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()

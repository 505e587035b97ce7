"""What automatic compaction buys and costs, on the state machine alone (see docs/benchmarks.md).

    .venv/bin/python bench/compaction_bench.py [--keys 10000] [--writes 300000] [--retention-s 30]

A write workload (100-byte values, the keys overwritten round-robin, one write per simulated
millisecond) runs under each policy of quorum.api.compactor; its CompactionPlanner decides on
the simulated clock, and its compactions are applied as the leader's command would be. Per
policy: the snapshot size at the end (what every snapshot and follower catch-up would carry),
the number of compactions, the CPU time of one (it is applied on the event loop: the stall
it causes), and the compactions' CPU time relative to applying the writes. The last row
applies each compaction as several commands of at most 10,000 revisions, an alternative the
compactor does not take (docs/benchmarks.md says why). Times are process CPU time (the VM is shared).
"""

from __future__ import annotations

import argparse
import statistics
import time

from quorum.api.compactor import CompactionPlanner, CompactionPolicy
from quorum.state import CompactionRequest, PutRequest, StateMachine

VALUE = b"v" * 100
WRITE_S = 0.001  # simulated time per write


def steps(compacted: int, target: int, max_step: int) -> list[int]:
    """Compact revisions from ``compacted`` to ``target``, at most ``max_step`` per command."""
    return [*range(compacted + max_step, target, max_step), target]


def run(policy: CompactionPolicy | None, keys: int, writes: int,
        max_step: int = 0) -> dict[str, float]:
    """``max_step`` > 0 applies each compaction as several commands (an alternative the
    compactor does not use; measured here to show why)."""
    sm = StateMachine()
    planner = CompactionPlanner(policy, 0.0) if policy is not None else None
    pauses: list[float] = []  # CPU time of each compaction command
    compactions = 0
    apply_s = 0.0
    index = 0
    for i in range(writes):
        index += 1
        t0 = time.process_time()
        sm.apply(index, PutRequest(b"key/%08d" % (i % keys), VALUE))
        apply_s += time.process_time() - t0
        if planner is None:
            continue
        target = planner.decide((i + 1) * WRITE_S, sm.revision, sm.compact_revision)
        if target is None:
            continue
        compactions += 1
        for rev in steps(sm.compact_revision, target, max_step) if max_step else [target]:
            index += 1
            t0 = time.process_time()
            sm.apply(index, CompactionRequest(rev))
            pauses.append(time.process_time() - t0)
    snapshot_bytes = sum(len(chunk) for chunk in sm.snapshot())
    return {
        "snapshot_mb": snapshot_bytes / 1e6,
        "compactions": compactions,
        "commands": len(pauses),
        "pause_ms_median": statistics.median(pauses) * 1000 if pauses else 0.0,
        "pause_ms_max": max(pauses) * 1000 if pauses else 0.0,
        "overhead_pct": 100 * sum(pauses) / apply_s,
        "retained_revisions": sm.revision - sm.compact_revision,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--writes", type=int, default=300_000)
    parser.add_argument("--retention-s", type=float, default=30.0,
                        help="periodic retention, in simulated seconds")
    args = parser.parse_args()
    ret = args.retention_s
    periodic = CompactionPolicy(mode="periodic", retention_s=ret)
    policies: list[tuple[str, CompactionPolicy | None, int]] = [
        ("off", None, 0),
        ("revision 10000, checked every 10 s",
         CompactionPolicy(mode="revision", retention_revisions=10_000, revision_check_s=10.0), 0),
        (f"periodic {ret:g}s (default: every {ret:g} s)", periodic, 0),
        (f"periodic {ret:g}s, every {ret / 10:g} s",
         CompactionPolicy(mode="periodic", retention_s=ret, compact_every_s=ret / 10), 0),
        (f"periodic {ret:g}s, each compaction in steps of 10,000 revisions", periodic, 10_000),
    ]
    print(f"{args.writes:,} writes over {args.keys:,} keys, 1 write per simulated ms")
    print("policy | snapshot MB | compactions (commands) | ms per command median / max | "
          "CPU overhead | revisions kept")
    for name, policy, max_step in policies:
        r = run(policy, args.keys, args.writes, max_step)
        print(f"{name} | {r['snapshot_mb']:.1f} | {r['compactions']:.0f} ({r['commands']:.0f}) | "
              f"{r['pause_ms_median']:.1f} / {r['pause_ms_max']:.1f} | "
              f"{r['overhead_pct']:.1f} % | {r['retained_revisions']:,.0f}")


if __name__ == "__main__":
    main()

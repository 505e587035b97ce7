"""Minimal reproductions of consensus-core problems the harness found, kept as regressions.

Each test states the expected (correct) behaviour. A bug still open in the core is marked
xfail(strict=True) with the reason, so the mark has to go once the core is fixed.
"""

from __future__ import annotations

import dataclasses

from quorum.raft import ReadOnlyOption
from quorum.raft.harness.cluster import Cluster
from quorum.raft.harness.scenario import PROFILES, run_seed


def lagging_follower_after_partition(window: int, proposals: int, report: bool) -> list[int]:
    """Isolate a follower while the leader sends ``proposals`` appends, heal, wait; return
    every node's applied index."""
    c = Cluster(
        seed=1, voters=3, config={"max_inflight_msgs": window}, report_unreachable=report
    )
    leader = c.wait_leader(100)
    assert leader is not None
    c.one(b"first", 3)
    follower = next(i for i in c.ids if i != leader)
    c.net.isolate(follower)
    for k in range(proposals):
        c.propose(leader, b"p%d" % k)
        c.tick()
    c.net.heal()
    c.tick(200)
    return [c.applied_index(i) for i in c.ids]


def test_follower_catches_up_when_the_transport_reports_it_unreachable() -> None:
    applied = lagging_follower_after_partition(window=4, proposals=20, report=True)
    assert len(set(applied)) == 1, applied


def test_follower_catches_up_after_lost_appends_fill_the_window() -> None:
    # Found by the figure8 profile: a REPLICATE progress whose in-flight window filled with
    # lost appends stayed paused forever (fixed in the core: a heartbeat response now lets one
    # empty append through). No report_unreachable here: only the protocol may recover.
    applied = lagging_follower_after_partition(window=4, proposals=20, report=False)
    assert len(set(applied)) == 1, applied


def test_lease_reads_are_linearizable_under_partitions() -> None:
    # Found with the reads profile switched to lease reads: check-quorum ran once per election
    # timeout on recent_active flags, so a cut-off leader kept answering lease reads for up to
    # two election timeouts while the others elected a new leader and acknowledged writes
    # after a little more than one (seed 0: cut off at tick 56, new leader acks index 13 at
    # 71, old leader answers a read at index 11 at 72). Fixed in the core: lease reads only
    # while a quorum answered within the last check-quorum period.
    profile = dataclasses.replace(
        PROFILES["reads"],
        config={"read_only_option": ReadOnlyOption.LEASE_BASED},
        transfer_rate=0.0,
    )
    result = run_seed(0, profile)
    assert result.ok, result.summary()


# Fixed in the core: a follower refuses a snapshot while committed entries it handed out
# are not yet applied (the leader sends it again), so restoring never switches the
# configuration under an application that is still applying older conf changes.
def test_snapshot_during_outstanding_ready_keeps_configuration_consistent() -> None:
    profile = dataclasses.replace(
        PROFILES["mixed"],
        voters=(7,),
        learners=2,
        remove_rate=0.03,
        conf_change_rate=0.05,
        snapshot_every=12,
        crash_rate=0.02,
        partition_rate=0.03,
    )
    result = run_seed(2050, profile, cluster_options={"restart_at": "applied"})
    assert result.ok, result.summary()

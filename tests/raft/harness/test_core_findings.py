"""Minimal reproductions of consensus-core problems the harness found (kept until fixed).

Each test states the expected (correct) behaviour; a known core bug is marked
xfail(strict=True), so the test starts failing loudly, as a reminder to drop the mark, once
the core is fixed.
"""

from __future__ import annotations

import pytest

from quorum.raft.harness.cluster import Cluster


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


@pytest.mark.xfail(
    strict=True,
    reason="core: a REPLICATE progress whose in-flight window filled with lost appends stays "
    "paused forever; heartbeat responses do not free a slot or fall back to probing, so the "
    "follower never catches up unless the runtime calls report_unreachable",
)
def test_follower_catches_up_after_lost_appends_fill_the_window() -> None:
    applied = lagging_follower_after_partition(window=4, proposals=20, report=False)
    assert len(set(applied)) == 1, applied

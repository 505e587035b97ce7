"""The Raft states of the 20 s election stall seen once in the SIGKILL campaign (docs/upgrade.md,
"What the campaign found"), rebuilt in the core's test network.

At the second step of a leader-first rolling upgrade the two new nodes are: the first old
leader (restarted at the first step, cut off from the old pair since, so at its old term with
a shorter log) and the leader of the old pair (restarted with its vote for itself at a later
term). These tests pin down what the diagnosis relies on:

* with messages flowing both ways the two elect at once (the restarted leader refuses the
  other's pre-votes at its own term, and that answer alone moves the other's term; the other
  grants its pre-votes for the next term), so a stall needs lost messages, not a rule;
* with ONE direction lost, nothing moves for good: no stored term changes and both report no
  leader, exactly what the stalled run left behind.
"""

from __future__ import annotations

import pytest
from raft.net import Net  # tests/raft: the core's synchronous test network

from quorum.raft import StateRole

pytestmark = pytest.mark.timeout(60)

FIRST_LEADER = 2  # led the old cluster, upgraded first (as in the stalled run)
TICKS = 400  # 40 election timeouts


def stall_state() -> tuple[Net, int, int]:
    """The two new nodes at the moment the second one is back; returns the network, the
    restarted leader of the old pair, and the old node that is left (now cut off)."""
    net = Net(check_quorum=True, pre_vote=True)  # as `quorum serve` runs
    net.elect(FIRST_LEADER)
    for i in range(3):
        net.node(FIRST_LEADER).propose(b"before-%d" % i)
        net.stabilize()
    # step 1: the leader is restarted on the new code; the old pair cannot hear it
    net.isolate(FIRST_LEADER)
    net.restart(FIRST_LEADER)
    net.tick_all(30)
    second = next(i for i in (1, 3) if net.node(i).raft.role == StateRole.LEADER)
    for i in range(5):
        net.node(second).propose(b"step1-%d" % i)
        net.stabilize()
    # step 2: the old pair's leader is restarted on the new code; the third node is old now
    third = ({1, 3} - {second}).pop()
    net.restart(second)
    net.heal()
    net.isolate(third)
    return net, second, third


def stored_terms(net: Net, *ids: int) -> dict[int, int]:
    return {i: net.members[i].storage.hard_state.term for i in ids}


def test_the_stall_state_is_what_the_run_left() -> None:
    net, second, _ = stall_state()
    first, restarted = net.node(FIRST_LEADER).raft, net.node(second).raft
    assert restarted.vote == second  # it restarts with its vote for itself ...
    assert restarted.term > first.term  # ... at a later term than the first leader's
    assert restarted.raft_log.last_term() > first.raft_log.last_term()


def test_both_directions_open_elect_at_once() -> None:
    net, second, _ = stall_state()
    before = stored_terms(net, FIRST_LEADER, second)
    net.tick_all(TICKS)
    leaders = {net.node(i).raft.lead for i in (FIRST_LEADER, second)}
    assert leaders in ({FIRST_LEADER}, {second})
    after = stored_terms(net, FIRST_LEADER, second)
    assert all(after[i] > before[i] for i in after)


@pytest.mark.parametrize("lost", ["second->first", "first->second"])
def test_one_direction_lost_leaves_the_stalled_state(lost: str) -> None:
    net, second, _ = stall_state()
    net.cut |= {(second, FIRST_LEADER) if lost == "second->first" else (FIRST_LEADER, second)}
    before = stored_terms(net, FIRST_LEADER, second)
    net.tick_all(TICKS)
    assert stored_terms(net, FIRST_LEADER, second) == before  # no vote round, for good
    assert {net.node(i).raft.lead for i in (FIRST_LEADER, second)} == {0}

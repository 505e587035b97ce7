"""The simulator's continuous checks can fail: state-hash and applied-monotonic, planted."""

from __future__ import annotations

import pytest

from quorum.sim.world import SimNode, Violation, World
from quorum.state import commands as sc


class _Box:
    def __init__(self) -> None:
        self.done = False

    def resolve(self, _value: object) -> None:
        self.done = True

    def fail(self, _exc: BaseException) -> None:
        self.done = True


def _leader(world: World) -> SimNode:
    for _ in range(200):
        world.run_until(world.now + 10)
        if world.leader():
            return world.nodes[world.leader()]
    raise AssertionError("no leader")


def test_state_hash_check_catches_a_replica_that_diverged() -> None:
    world = World(5, 3)
    leader = _leader(world)
    victim = next(n for n in world.nodes.values() if n.id != leader.id)
    assert victim.kv is not None
    # planted: change one replica's state behind the log's back (its applied index jumps
    # too, so it refuses later entries: the replica diverges, which the hash check must see)
    victim.kv.store.apply(10_000_000, sc.PutRequest(b"rogue", b"x"))
    with pytest.raises(Violation) as err:
        for i in range(200):
            assert leader.core is not None
            leader.core.propose(sc.encode_command(sc.PutRequest(b"k%d" % i, b"v")), _Box())
            world.drive(leader)
            world.run_until(world.now + 20)
    assert err.value.kind == "state-hash"


def test_applied_monotonic_check_catches_a_regression() -> None:
    world = World(6, 3)
    node = _leader(world)
    assert node.core is not None
    node.last_applied = node.core.applied + 5  # planted: as if applied went backwards
    with pytest.raises(Violation) as err:
        world.drive(node)
    assert err.value.kind == "applied-monotonic"


def test_member_role_check_catches_a_stale_address_record_demoting_a_voter() -> None:
    """Planted: a member's address record proposed as the role it saw (``stale_role_record``)
    commits after its promotion and demotes it; the reconfig profile's role check flags it.
    The same seed without the planted bug (records proposed as UPDATE_NODE) holds."""
    from quorum.sim.run import profile_options, run_seed

    planted = run_seed(4, profile_options("reconfig", bugs=frozenset({"stale_role_record"})))
    assert not planted.ok and planted.violation == "member-role", planted.detail
    fixed = run_seed(4, profile_options("reconfig"))
    assert fixed.ok, f"{fixed.violation}: {fixed.detail}"

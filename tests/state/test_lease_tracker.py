"""LeaseTracker: clock-free leader-side expiry bookkeeping."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from quorum.errors import LeaseNotFound
from quorum.state import (
    LeaseCheckpoint,
    LeaseCheckpointRequest,
    LeaseExpireRequest,
    LeaseGrantRequest,
    LeaseTracker,
    PutRequest,
    RangeRequest,
    StateMachine,
    encode_command,
)
from quorum.state.lease import LeaseInfo


def test_expiry_follows_deadlines_and_keepalive_restarts_them() -> None:
    t = LeaseTracker()
    t.promote(0.0, [])
    t.granted(1, 10, now=0.0)
    t.granted(2, 5, now=0.0)
    assert t.expired(4.9) == []
    assert t.keepalive(2, now=4.0) == 5
    assert t.expired(8.9) == []
    assert t.expired(9.0) == [2]
    assert t.expired(10.0) == [1]
    assert t.remaining(1, 10.0) == 3  # held back for retry_s (3 s) while the expire is proposed
    t.revoked(2)
    assert t.expired(100.0) == [1] and t.remaining(2, 100.0) is None


def test_failover_never_expires_a_lease_early() -> None:
    # The old leader granted a 10 s lease at t=0 and the client kept it alive until t=8.
    # The new leader takes over at t=20 (its own clock): the lease restarts in full.
    t = LeaseTracker(extend_s=1.0)
    t.promote(20.0, [LeaseInfo(1, granted_ttl=10, remaining_ttl=0)])
    assert t.expired(30.9) == []
    assert t.expired(31.0) == [1]


def test_promote_uses_the_checkpointed_remaining_ttl() -> None:
    t = LeaseTracker()
    t.promote(0.0, [LeaseInfo(1, granted_ttl=3600, remaining_ttl=600)])
    assert t.remaining(1, 0.0) == 600
    assert t.expired(599.0) == [] and t.expired(600.0) == [1]


def test_followers_track_nothing_and_reject_keepalives() -> None:
    t = LeaseTracker()
    t.granted(1, 10, now=0.0)
    assert t.expired(1e9) == []
    with pytest.raises(LeaseNotFound):
        t.keepalive(1, 0.0)
    t.promote(0.0, [LeaseInfo(1, 10, 0)])
    t.demote()
    assert t.expired(1e9) == [] and t.checkpoints(1e9) == []


def test_checkpoints_for_long_leases_and_clearing_after_keepalive() -> None:
    t = LeaseTracker(checkpoint_interval_s=60.0, checkpoint_min_ttl_s=100)
    t.promote(0.0, [LeaseInfo(1, 3600, 0), LeaseInfo(2, 30, 0)])
    assert t.checkpoints(10.0) == []
    assert t.checkpoints(60.0) == [LeaseCheckpoint(1, 3540)]
    t.checkpoint_applied(LeaseCheckpoint(1, 3540))
    assert not t.clear_pending(1)
    t.keepalive(1, 70.0)
    assert t.clear_pending(1)  # the keepalive must not be acknowledged yet
    assert t.checkpoints(71.0) == [LeaseCheckpoint(1, 0)]  # clear the stale checkpoint
    assert t.clear_pending(1)
    t.checkpoint_applied(LeaseCheckpoint(1, 0))
    assert not t.clear_pending(1)
    t.keepalive(1, 80.0)
    assert not t.clear_pending(1)  # nothing checkpointed any more: acknowledge at once


def test_runtime_loop_with_the_state_machine() -> None:
    """How the runtime wires it: grant through the log, expire through the log."""
    sm = StateMachine()
    t = LeaseTracker()
    t.promote(0.0, [])
    resp = sm.apply(1, encode_command(LeaseGrantRequest(5)))
    t.granted(resp.id, resp.ttl, now=0.0)  # type: ignore[union-attr]
    sm.apply(2, encode_command(PutRequest(b"a", b"", lease=1)))
    sm.apply(3, encode_command(PutRequest(b"b", b"", lease=1)))
    sm.apply(4, encode_command(LeaseCheckpointRequest((LeaseCheckpoint(1, 2),))))
    expired = t.expired(6.0)
    assert expired == [1]
    out = sm.apply(5, encode_command(LeaseExpireRequest(tuple(expired))))
    assert out.expired == (1,)  # type: ignore[union-attr]
    for lease_id in out.expired:  # type: ignore[union-attr]
        t.revoked(lease_id)
    assert sm.range(RangeRequest(b"\0", b"\0")).kvs == ()
    assert sm.revision == 4  # both keys vanished at one revision (puts at 2 and 3)
    again = sm.apply(6, encode_command(LeaseExpireRequest((1,))))  # a duplicate proposal
    assert again.expired == () and sm.revision == 4  # type: ignore[union-attr]


def test_same_instant_grant_and_keepalive_is_reported_once() -> None:
    t = LeaseTracker()
    t.promote(0.0, [])
    t.granted(1, 1, now=0.0)
    t.keepalive(1, 0.0)
    assert t.expired(1.0) == [1]
    assert t.expired(1.5) == []


def test_acknowledging_before_the_clearing_checkpoint_would_expire_early() -> None:
    """Why clear_pending exists: checkpoint (remaining 100 of 1000), keepalive, failover
    before the clearing checkpoint commits -> the new leader restarts from 100 s."""
    t = LeaseTracker(checkpoint_interval_s=1.0, checkpoint_min_ttl_s=10)
    t.promote(0.0, [LeaseInfo(1, 1000, 0)])
    [cp] = t.checkpoints(900.0)
    assert cp == LeaseCheckpoint(1, 100)
    t.checkpoint_applied(cp)
    state = LeaseInfo(1, 1000, cp.remaining_ttl)
    t.keepalive(1, 950.0)  # an immediate ack would promise the client 950 + 1000
    assert t.clear_pending(1)
    successor = LeaseTracker()
    successor.promote(960.0, [state])  # the clearing checkpoint never committed
    assert successor.expired(1061.0) == [1]  # long before 1950: so the ack had to wait


events = st.lists(st.tuples(st.sampled_from(["keepalive", "failover", "tick", "checkpoint"]),
                            st.integers(1, 3), st.floats(0.0, 4.0)), max_size=60)


@settings(max_examples=400, deadline=None)
@given(ttls=st.lists(st.integers(1, 30), min_size=3, max_size=3), script=events)
def test_a_lease_never_expires_before_its_client_deadline(ttls: list[int],
                                                          script: list[tuple[str, int, float]]) -> None:
    """Whatever the keepalives, failovers and checkpoints, a lease is reported expired only
    after the client's last acknowledged keepalive (or the grant) plus the TTL. A runtime
    acknowledges a keepalive only once no clearing checkpoint is pending, as documented."""
    now = 0.0
    tracker = LeaseTracker(checkpoint_interval_s=1.0, checkpoint_min_ttl_s=2)
    tracker.promote(now, [])
    state: dict[int, LeaseInfo] = {}
    client_deadline: dict[int, float] = {}
    for lease_id, ttl in enumerate(ttls, start=1):
        tracker.granted(lease_id, ttl, now)
        state[lease_id] = LeaseInfo(lease_id, ttl, 0)
        client_deadline[lease_id] = now + ttl
    pending_acks: dict[int, float] = {}
    for kind, lease_id, dt in script:
        now += dt
        if kind == "keepalive" and lease_id in state:
            tracker.keepalive(lease_id, now)
            pending_acks[lease_id] = now + state[lease_id].granted_ttl
        elif kind == "failover":  # the new leader only knows the replicated state
            pending_acks.clear()  # unacknowledged keepalives are lost with the old leader
            tracker = LeaseTracker(checkpoint_interval_s=1.0, checkpoint_min_ttl_s=2)
            tracker.promote(now, list(state.values()))
        elif kind == "checkpoint":  # the proposed checkpoints commit and are applied
            for cp in tracker.checkpoints(now):
                if cp.id in state:
                    state[cp.id] = LeaseInfo(cp.id, state[cp.id].granted_ttl, cp.remaining_ttl)
                    tracker.checkpoint_applied(cp)
        for acked in [i for i in pending_acks if not tracker.clear_pending(i)]:
            client_deadline[acked] = pending_acks.pop(acked)
        for expired in tracker.expired(now):
            assert now >= client_deadline[expired] - 1e-9, (expired, now, client_deadline)
            tracker.revoked(expired)
            del state[expired]

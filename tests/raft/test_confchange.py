"""Membership change rules (Changer) and restoring a tracker from a ConfState."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quorum.errors import InvalidConfChange
from quorum.raft.confchange import Changer, TrackerConfig, apply_to_tracker, restore
from quorum.raft.progress import ProgressTracker
from quorum.raft.types import ConfChangeSingle, ConfChangeType, ConfState

V, L, R = ConfChangeType.ADD_NODE, ConfChangeType.ADD_LEARNER, ConfChangeType.REMOVE_NODE
U = ConfChangeType.UPDATE_NODE


def tracker(cs: ConfState) -> ProgressTracker:
    trk = ProgressTracker(8)
    apply_to_tracker(trk, restore(trk, cs, last_index=10))
    return trk


def changes(*pairs: tuple[ConfChangeType, int]) -> list[ConfChangeSingle]:
    return [ConfChangeSingle(t, n) for t, n in pairs]


def test_simple_add_and_remove_one_voter() -> None:
    trk = tracker(ConfState(voters=(1, 2, 3)))
    cfg = Changer(trk, 10).simple(changes((V, 4)))
    assert cfg.conf_state().voters == (1, 2, 3, 4)
    assert cfg.progress[4].next == 10 and cfg.progress[4].recent_active
    cfg = Changer(trk, 10).simple(changes((R, 2)))
    assert cfg.conf_state().voters == (1, 3) and 2 not in cfg.progress
    assert trk.conf_state().voters == (1, 2, 3)  # the tracker itself is untouched


def test_simple_refuses_two_voter_changes_and_empty_config() -> None:
    trk = tracker(ConfState(voters=(1, 2, 3)))
    with pytest.raises(InvalidConfChange, match="more than one voter"):
        Changer(trk, 10).simple(changes((V, 4), (V, 5)))
    with pytest.raises(InvalidConfChange, match="removed all voters"):
        Changer(tracker(ConfState(voters=(1,))), 10).simple(changes((R, 1)))
    with pytest.raises(InvalidConfChange):
        Changer(trk, 10).simple(changes((V, 0)))


def test_learner_add_promote_demote() -> None:
    trk = tracker(ConfState(voters=(1, 2, 3)))
    cfg = Changer(trk, 10).simple(changes((L, 4)))
    assert cfg.conf_state().learners == (4,)
    assert cfg.progress[4].is_learner
    apply_to_tracker(trk, cfg)
    promoted = Changer(trk, 10).simple(changes((V, 4)))
    assert promoted.conf_state().voters == (1, 2, 3, 4) and not promoted.progress[4].is_learner
    demoted = Changer(trk, 10).simple(changes((L, 3)))
    assert demoted.conf_state().voters == (1, 2) and demoted.conf_state().learners == (3, 4)


def test_update_node_changes_no_role_and_no_membership() -> None:
    trk = tracker(ConfState(voters=(1, 2, 3), learners=(4,)))
    before = trk.conf_state()
    for node_id in (1, 4, 9):  # a voter, a learner, a non-member
        cfg = Changer(trk, 10).simple(changes((U, node_id)))
        assert cfg.conf_state() == before
        assert {n: p.is_learner for n, p in cfg.progress.items()} == {
            1: False, 2: False, 3: False, 4: True}
    joint = Changer(trk, 10).enter_joint(True, changes((V, 4), (U, 3)))
    assert joint.conf_state().voters == (1, 2, 3, 4)


def test_an_address_record_committed_after_a_promotion_keeps_the_voter() -> None:
    """Why UPDATE_NODE exists: a learner records its addresses while it still sees itself
    as a learner, and the record commits after its promotion. Repeating the role (ADD_LEARNER)
    demotes the new voter; UPDATE_NODE commutes with the promotion."""
    trk = tracker(ConfState(voters=(1, 2), learners=(4,)))
    apply_to_tracker(trk, Changer(trk, 10).simple(changes((V, 4))))
    demoted = Changer(trk, 10).simple(changes((L, 4)))
    assert demoted.conf_state().voters == (1, 2) and demoted.conf_state().learners == (4,)
    kept = Changer(trk, 10).simple(changes((U, 4)))
    assert kept.conf_state().voters == (1, 2, 4) and not kept.conf_state().learners


def test_enter_joint_and_leave() -> None:
    trk = tracker(ConfState(voters=(1, 2, 3)))
    cfg = Changer(trk, 10).enter_joint(True, changes((V, 4), (R, 3), (L, 2)))
    cs = cfg.conf_state()
    assert cs.voters == (1, 4) and cs.voters_outgoing == (1, 2, 3)
    assert cs.learners_next == (2,) and cs.auto_leave
    assert 3 in cfg.progress  # still an outgoing voter
    apply_to_tracker(trk, cfg)
    with pytest.raises(InvalidConfChange, match="already joint"):
        Changer(trk, 10).enter_joint(False, changes((V, 5)))
    with pytest.raises(InvalidConfChange, match="simple config change in a joint"):
        Changer(trk, 10).simple(changes((V, 5)))
    left = Changer(trk, 10).leave_joint()
    cs = left.conf_state()
    assert cs == ConfState(voters=(1, 4), learners=(2,))
    assert 3 not in left.progress and left.progress[2].is_learner
    apply_to_tracker(trk, left)
    with pytest.raises(InvalidConfChange, match="non-joint"):
        Changer(trk, 10).leave_joint()


def test_invariant_check_fails_on_a_broken_config() -> None:
    """Planted inconsistency: a learner that is also a voter must be rejected."""
    from quorum.raft.confchange import check_invariants

    trk = tracker(ConfState(voters=(1, 2)))
    bad = TrackerConfig({1, 2}, set(), {2}, set(), False, dict(trk.progress))
    with pytest.raises(InvalidConfChange, match="both learner and voter"):
        check_invariants(bad)
    missing = TrackerConfig({1, 2, 9}, set(), set(), set(), False, dict(trk.progress))
    with pytest.raises(InvalidConfChange, match="no progress"):
        check_invariants(missing)


conf_states = st.builds(
    lambda voters, out, learners: ConfState(
        voters=tuple(sorted(voters)),
        voters_outgoing=tuple(sorted(out)),
        learners=tuple(sorted(learners - voters - out)),
    ),
    st.frozensets(st.integers(1, 6), min_size=1, max_size=4),
    st.frozensets(st.integers(1, 6), max_size=4),
    st.frozensets(st.integers(1, 8), max_size=3),
)


@given(conf_states)
def test_restore_round_trips(cs: ConfState) -> None:
    trk = tracker(cs)
    assert trk.conf_state() == cs


change_lists = st.lists(
    st.tuples(st.sampled_from([V, L, R]), st.integers(1, 6)), min_size=1, max_size=3)


@given(st.lists(st.tuples(st.booleans(), change_lists), max_size=8))
def test_every_reachable_configuration_passes_the_gateway_check(
    steps: list[tuple[bool, list[tuple[ConfChangeType, int]]]]
) -> None:
    """Snapshots carry configurations the Changer produced; the message gateway must accept
    every one of them (an over-strict check would stall followers forever)."""
    from quorum.raft.validate import _conf_state_reason

    trk = tracker(ConfState(voters=(1, 2, 3)))
    for joint, pairs in steps:
        changer = Changer(trk, 10)
        try:
            if trk.voters.is_joint():
                cfg = changer.leave_joint()
            elif joint:
                cfg = changer.enter_joint(False, changes(*pairs))
            else:
                cfg = changer.simple(changes(*pairs))
        except InvalidConfChange:
            continue
        apply_to_tracker(trk, cfg)
        assert _conf_state_reason(trk.conf_state()) is None, trk.conf_state()

"""Two clusters on one machine must never take each other's members for their own.

A member's peer address can end up pointing into another cluster (a port reused after a
restart, a wrong ``--initial-cluster``). The peer handshake refuses a member of another
cluster by its cluster id; that protects only if the clusters' ids differ, which is what
``--cluster-id`` (and ProcCluster's random id per cluster) is for.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from quorum.cli.serve import parse_cluster_id
from quorum.errors import ConfigError
from quorum.verify.procs import ProcCluster

pytestmark = [pytest.mark.timeout(120), pytest.mark.xdist_group("procs")]


def _stray_pointing_into(a: ProcCluster, base: Path, cluster_id: int) -> ProcCluster:
    """A one-process 'cluster' whose members 2 and 3 are, by mistake, a's members 2 and 3."""
    stray = ProcCluster(3, base, tick_ms=a.tick_ms, cluster_id=cluster_id)
    stray._initial = ",".join([stray.nodes[1].spec(), a.nodes[2].spec(), a.nodes[3].spec()])
    stray.start_node(1)
    return stray


def _log(cluster: ProcCluster, node_id: int) -> str:
    return (cluster.base_dir / f"node{node_id}.log").read_text(errors="replace")


def _within(timeout_s: float, predicate: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


@pytest.mark.parametrize("same_id", [False, True], ids=["own-ids", "shared-id-twin"])
def test_a_member_of_another_cluster_is_refused_only_when_the_ids_differ(
        tmp_path: Path, same_id: bool) -> None:
    with ProcCluster(3, tmp_path / "a") as a:
        other_id = a.cluster_id if same_id else a.cluster_id + 1
        stray = _stray_pointing_into(a, tmp_path / "b", other_id)
        try:
            refusal = f"cluster id {other_id} is not {a.cluster_id}"
            # The stray dials 'its' members 2 and 3 (to campaign) once it is up; wait until
            # its link to 2 has come up and gone down once, one way or the other.
            assert _within(15.0, lambda: "link 1->2 down" in _log(stray, 1)), _log(stray, 1)
            assert stray.nodes[1].alive
            stray_log = _log(stray, 1)
            a_logs = _log(a, 2) + _log(a, 3)
            if same_id:
                # The twin: one id for both clusters. a's members take the stray for their
                # member 1: they accept it, and its stream and the real member 1's keep
                # superseding each other (the stray's links are closed, never rejected).
                assert "link 1->2 down: EOFError" in stray_log
                assert "HandshakeRejected" not in stray_log
                assert "rejected connection" not in a_logs
            else:
                assert f"HandshakeRejected('handshake rejected: {refusal}')" in stray_log
                assert _within(5.0, lambda: all(refusal in _log(a, i) for i in (2, 3)))
        finally:
            stray.stop()


def test_each_proc_cluster_gets_its_own_id_and_passes_it_to_every_node(tmp_path: Path) -> None:
    one, two = ProcCluster(3, tmp_path / "one"), ProcCluster(3, tmp_path / "two")
    assert one.cluster_id != two.cluster_id
    for node in one.nodes.values():
        cmd = one._command(node)
        assert cmd[cmd.index("--cluster-id") + 1] == str(one.cluster_id)


@pytest.mark.parametrize("text, value", [("42", 42), ("0x51554f52", 0x51554F52)])
def test_cluster_id_flag_takes_decimal_and_hex(text: str, value: int) -> None:
    assert parse_cluster_id(text) == value


@pytest.mark.parametrize("text", ["0", "-3", "QUOR", ""])
def test_cluster_id_flag_refuses_what_is_not_a_positive_integer(text: str) -> None:
    with pytest.raises(ConfigError, match="--cluster-id"):
        parse_cluster_id(text)

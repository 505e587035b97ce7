"""`quorum verify` workloads (append, lock, watch, lease) and the member nemesis on real
processes, plus the pure checks the lock workload adds (hold overlaps; the lease expiry
check has its own tests in tests/verify/test_verify_lease.py).

Real-process runs: one short run of every workload under kill, pause, partition and member
changes must pass; planted bugs must be caught: stale reads on the server (by register,
append and watch), a lock resource that ignores fencing tokens (by the lock workload), and
leases kept alive by renewals the lease workload does not record (by its late check).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from quorum.verify.runner import VerifyOptions, run_verify
from quorum.verify.workloads import FencedWrite, check_fencing
from quorum.verify.workloads_lock import Hold, hold_overlaps, resource_order

ALL = ("register", "append", "lock", "watch", "lease")

# --- lock: overlaps and resource order ------------------------------------------------------


def test_hold_overlaps_are_explained_only_by_a_pause_or_a_lost_lease() -> None:
    a = Hold(client_id=1, token=5, acquired=0.0, released=4.0, paused=True)
    b = Hold(client_id=2, token=9, acquired=3.0, released=3.5)
    c = Hold(client_id=3, token=12, acquired=3.2, released=3.8)
    d = Hold(client_id=1, token=20, acquired=5.0, released=5.1)
    found = hold_overlaps([d, c, b, a])
    pairs = {(o.first.token, o.second.token): o.explained for o in found}
    # b and c overlap and b neither paused nor lost its lease: a mutual exclusion breach
    assert pairs == {(5, 9): True, (5, 12): True, (9, 12): False}


def test_resource_order_puts_a_refusal_after_the_write_it_saw() -> None:
    newer = FencedWrite(resource="r", token=9, accepted=True, client_id=2)
    stale = FencedWrite(resource="r", token=5, accepted=False, client_id=1)
    older = FencedWrite(resource="r", token=5, accepted=True, client_id=1)
    # the refusal reports the revision of the write that made the fence 9
    ordered = resource_order([(12, stale), (12, newer), (10, older)])
    assert ordered == [older, newer, stale]
    assert check_fencing(ordered).stale_count == 0
    unfenced = resource_order([(13, FencedWrite(resource="r", token=5, accepted=True)),
                               (12, newer)])
    assert check_fencing(unfenced).stale_count == 1


# --- real processes -------------------------------------------------------------------------


def _verdicts(report: object) -> dict[str, str]:
    return {w.name: w.verdict for w in report.workloads}  # type: ignore[attr-defined]


@pytest.mark.timeout(300)
@pytest.mark.xdist_group("procs")
def test_every_workload_under_kill_pause_partition_member_passes(tmp_path: Path) -> None:
    # lease runs without the pause nemesis (next test): a paused leader that resumes can
    # still expire a lease the new leader renewed (see docs/verify.md, "Findings")
    workloads = ("register", "append", "lock", "watch")
    opts = VerifyOptions(duration_s=25, workloads=workloads, clients=3,
                         nemesis=("kill", "pause", "partition", "member"),
                         fault_interval_s=(1.0, 3.0), fault_length_s=(0.5, 2.0),
                         report_dir=str(tmp_path / "report"), seed=11)
    report = asyncio.run(run_verify(opts, log=lambda _s: None))
    assert report.ok, (report.problems, _verdicts(report), report.faults)
    assert _verdicts(report) == dict.fromkeys(workloads, "PASS")
    assert report.converged and report.recovered
    kinds = {f.split()[1] for f in report.faults}
    assert "member" in kinds, report.faults
    assert any("member promote" in f for f in report.faults), report.faults
    by_name = {w.name: w for w in report.workloads}
    assert by_name["append"].details["transactions"] > 200
    lock = by_name["lock"].details
    # fencing was exercised: paused holders came back and the resource refused them
    assert lock["paused_holds"] > 0 and lock["accepted"] > 0
    assert lock["stale_accepted"] == 0
    watch = by_name["watch"].details
    assert watch["events_delivered"] > 100 and watch["progress_notices"] > 0
    index = Path(report.report_html).read_text()
    for name in workloads:
        assert f"href='{name}.html'" in index
        assert (tmp_path / "report" / f"{name}.html").exists()
    assert "faults timeline" in index
    data = json.loads(Path(report.report_json).read_text())
    assert [w["name"] for w in data["workloads"]] == list(workloads)


@pytest.mark.timeout(300)
@pytest.mark.xdist_group("procs")
def test_lease_under_kill_partition_member_passes(tmp_path: Path) -> None:
    opts = VerifyOptions(duration_s=15, workloads=("lease",),
                         nemesis=("kill", "partition", "member"),
                         fault_interval_s=(1.0, 3.0), fault_length_s=(0.5, 2.0),
                         report_dir=str(tmp_path / "report"), seed=12)
    report = asyncio.run(run_verify(opts, log=lambda _s: None))
    assert report.ok, (report.problems, _verdicts(report), report.faults)
    (lease,) = report.workloads
    assert lease.details["expired_seen"] > 3
    assert lease.details["violations"] == 0


@pytest.mark.timeout(300)
@pytest.mark.xdist_group("procs")
def test_planted_stale_reads_are_caught_by_register_append_and_watch(tmp_path: Path) -> None:
    # A read from a node cut off from the majority, served without ReadIndex, returns old
    # state: register sees a non-linearizable read, append a realtime cycle, watch a read
    # revision older than a write that had completed. Without the readers bound to each
    # node this was caught by only one or two of the three workloads in some runs.
    opts = VerifyOptions(duration_s=20, workloads=("register", "append", "watch"), clients=4,
                         nemesis=("partition",), fault_interval_s=(0.5, 2.0),
                         report_dir=str(tmp_path / "report"), data_dir=str(tmp_path / "data"),
                         seed=3, planted_bugs=("stale_read",))
    report = asyncio.run(run_verify(opts, log=lambda _s: None))
    assert not report.ok
    verdicts = _verdicts(report)
    caught = {name for name, v in verdicts.items() if v == "FAIL"}
    # each workload has readers bound to every node, so each sees the cut-off node's reads
    assert caught == {"register", "append", "watch"}, (verdicts, report.problems)
    assert report.verdict == "FAIL"


@pytest.mark.timeout(300)
@pytest.mark.xdist_group("procs")
def test_a_resource_ignoring_fencing_tokens_accepts_stale_writes(tmp_path: Path) -> None:
    opts = VerifyOptions(duration_s=10, workloads=("lock",), nemesis=(), lock_fencing=False,
                         lock_pause_probability=0.5, report_dir=str(tmp_path / "report"),
                         data_dir=str(tmp_path / "data"), seed=5)
    report = asyncio.run(run_verify(opts, log=lambda _s: None))
    (lock,) = report.workloads
    assert lock.verdict == "FAIL", lock.details
    assert lock.details["stale_accepted"] > 0
    assert lock.details["unexplained_overlaps"] == 0  # the lock itself did its job
    assert any("stale write accepted" in p for p in report.problems)


@pytest.mark.timeout(300)
@pytest.mark.xdist_group("procs")
def test_leases_kept_alive_unseen_are_found_late_under_faults(tmp_path: Path) -> None:
    # The planted bug: after its recorded renewals each lease is renewed 12 s more without
    # the observation knowing, as if the server's expiry sweep skipped it. The leaders
    # seen meanwhile cannot account for that, kills and partitions or not.
    opts = VerifyOptions(duration_s=12, workloads=("lease",), nemesis=("kill", "partition"),
                         fault_interval_s=(1.0, 3.0), fault_length_s=(0.5, 2.0),
                         lease_hidden_renewal_s=12.0, report_dir=str(tmp_path / "report"),
                         data_dir=str(tmp_path / "data"), seed=13)
    report = asyncio.run(run_verify(opts, log=lambda _s: None))
    (lease,) = report.workloads
    assert lease.verdict == "FAIL", lease.details
    assert any("expired late" in p for p in lease.problems), lease.problems
    assert not any("expired early" in p for p in lease.problems), lease.problems
    # most leases were judged, and most of those found late
    assert lease.details["late_judged"] >= lease.details["leases"] // 2 > 0, lease.details
    assert lease.details["violations"] >= lease.details["late_judged"] // 2, lease.details


@pytest.mark.torture
@pytest.mark.timeout(900)
@pytest.mark.xdist_group("procs")
def test_leases_survive_paused_leaders(tmp_path: Path) -> None:
    # The configuration that reproduced an early lease expiry when a paused node resumed
    # (in 3 of 4 runs with this seed, on two trees): see docs/verify.md, "Findings".
    opts = VerifyOptions(duration_s=40, workloads=("lease", "register"), clients=3,
                         nemesis=("pause", "partition"), report_dir=str(tmp_path / "report"),
                         seed=8)
    report = asyncio.run(run_verify(opts, log=lambda _s: None))
    assert report.ok, (report.problems, report.faults)


@pytest.mark.torture
@pytest.mark.timeout(900)
@pytest.mark.xdist_group("procs")
def test_long_campaign_every_workload_every_nemesis(tmp_path: Path) -> None:
    opts = VerifyOptions(duration_s=240, workloads=ALL,
                         nemesis=("kill", "pause", "partition", "clock", "member"),
                         report_dir=str(tmp_path / "report"), seed=21)
    report = asyncio.run(run_verify(opts, log=lambda _s: None))
    assert report.ok, (report.problems, _verdicts(report), report.faults)


def test_cli_rejects_unknown_workloads_before_starting_anything(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "quorum.cli.main", "verify", "--workload", "register,bogus",
         "--report-dir", str(tmp_path / "r"), "--data-dir", str(tmp_path / "d")],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert "unknown workload" in out.stderr and "bogus" in out.stderr
    assert not (tmp_path / "d" / "node1.log").exists()

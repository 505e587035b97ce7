"""`quorum verify` end to end with the register workload: real processes under kill, pause
and partition, checked.

One 60-second run must pass (part of ``make test``); the planted stale-read run is a
``make torture`` campaign, since tests/cluster/test_verify_workloads.py already catches
planted stale reads with register, append and watch inside the ``make test`` budget."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from quorum.verify.runner import VerifyOptions, run_verify

pytestmark = [pytest.mark.timeout(400), pytest.mark.xdist_group("procs")]


def test_sixty_seconds_of_kill_pause_partition_pass(tmp_path: Path) -> None:
    """With snapshots every 200 commands spaced by the log-size ratio at every size, so
    they fall among the faults at irregular points."""
    opts = VerifyOptions(duration_s=60, nemesis=("kill", "pause", "partition"),
                         report_dir=str(tmp_path / "report"), seed=1,
                         data_dir=str(tmp_path / "data"), snapshot_entries=200,
                         snapshot_log_ratio=1.0)
    report = asyncio.run(run_verify(opts, log=lambda _s: None))
    taken = [p for p in (tmp_path / "data").rglob("*.snap")
             if int(p.name.split("-")[0], 16) > 1]  # beyond the bootstrap snapshot
    assert taken, "no node took a snapshot"
    assert report.ok, report.problems
    assert report.linearizability == "OK"
    assert report.converged and report.recovered
    assert len(report.faults) >= 10
    assert report.ok_operations > 1000
    assert {f.split()[1] for f in report.faults} >= {"kill", "pause", "partition"}
    page = Path(report.report_html).read_text()
    assert "quorum verify" in page
    data = json.loads(Path(report.report_json).read_text())
    assert data


@pytest.mark.torture
def test_planted_stale_reads_are_caught(tmp_path: Path) -> None:
    # A budget of two 25-second runs: the bug shows only when a read reaches a node cut off
    # from the majority, which depends on where the partitions fall.
    for seed in (3, 4):
        opts = VerifyOptions(duration_s=25, nemesis=("partition",), clients=6,
                             fault_interval_s=(0.5, 2.0), report_dir=str(tmp_path / f"r{seed}"),
                             seed=seed, planted_bugs=("stale_read",),
                             data_dir=str(tmp_path / f"d{seed}"))
        report = asyncio.run(run_verify(opts, log=lambda _s: None))
        if not report.ok:
            break
    assert not report.ok
    assert report.linearizability == "ILLEGAL", report
    assert "not linearizable" in " ".join(report.problems)

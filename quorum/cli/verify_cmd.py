"""``quorum verify``: fault injection on a local cluster of real processes, checked."""

from __future__ import annotations

import asyncio
import sys

import click

from quorum.cli.output import emit_json, table


@click.command("verify")
@click.option("--nodes", default=3, show_default=True)
@click.option("--duration", "duration_s", default=60.0, show_default=True, help="Seconds of faults.")
@click.option("--nemesis", default="kill,pause,partition", show_default=True,
              help="Comma-separated: kill, pause, partition, clock, member.")
@click.option("--workload", "workload", default="register", show_default=True,
              help="Comma-separated: register, append, lock, watch, lease.")
@click.option("--clients", default=5, show_default=True)
@click.option("--keys", default=4, show_default=True)
@click.option("--report-dir", default="verify-report", show_default=True,
              type=click.Path(file_okay=False))
@click.option("--data-dir", default="", help="Keep server data here (default: a temp dir).")
@click.option("--seed", default=0, show_default=True, help="Seeds the nemesis and clients.")
@click.option("--snapshot-entries", default=0, show_default=True,
              help="Servers snapshot every N commands (0: their default, or 1,000 with the "
                   "member nemesis).")
@click.option("--snapshot-log-ratio", type=float, default=None,
              help="Servers' --snapshot-log-ratio, applied at every snapshot size (no 4 MiB "
                   "floor) so that it governs the small states of a run.")
@click.option("--planted-bugs", default="", hidden=True, help="TESTS ONLY: see docs/verify.md.")
@click.option("--unfenced-lock", is_flag=True, hidden=True,
              help="TESTS ONLY: the lock workload's resource ignores fencing tokens.")
@click.pass_obj
def verify(obj: object, nodes: int, duration_s: float, nemesis: str, workload: str,
           clients: int, keys: int, report_dir: str, data_dir: str, seed: int,
           snapshot_entries: int, snapshot_log_ratio: float | None, planted_bugs: str,
           unfenced_lock: bool) -> None:
    """Run real servers under faults with the chosen workloads; check each workload's history,
    convergence and recovery; write REPORT_DIR/verify.html (with one page per workload) and
    verify.json. Exit 0 on PASS, 1 otherwise."""
    from quorum.verify.runner import VerifyOptions, run_verify

    opts = VerifyOptions(
        nodes=nodes, duration_s=duration_s,
        nemesis=tuple(n.strip() for n in nemesis.split(",") if n.strip()),
        clients=clients, keys=keys, report_dir=report_dir, data_dir=data_dir, seed=seed,
        planted_bugs=tuple(b for b in planted_bugs.split(",") if b),
        workloads=tuple(w.strip() for w in workload.split(",") if w.strip()),
        lock_fencing=not unfenced_lock, snapshot_entries=snapshot_entries,
        snapshot_log_ratio=snapshot_log_ratio,
    )
    as_json = getattr(obj, "json", False)
    try:
        report = asyncio.run(run_verify(opts, log=(lambda _s: None) if as_json else
                                        (lambda s: click.echo(f"  {s}"))))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if as_json:
        emit_json(report)
    else:
        table(None, ("workload", "verdict", "ops", "ok ops"),
              [(w.name, w.verdict, w.operations, w.ok_operations) for w in report.workloads])
        table(None, ("verdict", "converged", "recovered", "ops", "ok ops", "indeterminate",
                     "faults", "seconds"),
              [(report.verdict, report.converged, report.recovered, report.operations,
                report.ok_operations, report.indeterminate, len(report.faults),
                f"{report.duration_s:.0f}")])
        for p in report.problems:
            click.echo(f"problem: {p}", err=True)
        click.echo(f"report: {report.report_html}")
    sys.exit(0 if report.ok else 1)

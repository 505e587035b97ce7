"""``quorum bench``: throughput and latency of put / get / mixed workloads."""

from __future__ import annotations

from typing import Any

import click
from rich.progress import Progress

from quorum.cli.output import emit_json, fail, table


@click.command("bench")
@click.option("--target", type=click.Choice(["quorum", "etcd"]), default="quorum",
              show_default=True, help="quorum = native protocol; etcd = any etcd v3 gRPC endpoint.")
@click.option("--bench-endpoints", "endpoints", default=None,
              help="host:port list for the target (default: the global --endpoints).")
@click.option("--workload", type=click.Choice(["put", "get", "mixed"]), default="put",
              show_default=True)
@click.option("--clients", default=256, show_default=True, help="Concurrent sequential clients.")
@click.option("--connections", default=8, show_default=True)
@click.option("--duration", "duration_s", default=10.0, show_default=True, help="Seconds measured.")
@click.option("--value-size", "value_bytes", default=100, show_default=True)
@click.option("--keys", default=100_000, show_default=True, help="Key space size.")
@click.option("--serializable", is_flag=True, help="Reads from the local replica (may be stale).")
@click.option("--pids", default="", help="Server pids (comma-separated) for CPU per operation.")
@click.pass_obj
def bench(obj: object, target: str, endpoints: str | None, workload: str, clients: int,
          connections: int, duration_s: float, value_bytes: int, keys: int,
          serializable: bool, pids: str) -> None:
    """Measure a running cluster (quorum's, or etcd's for comparison). TLS: the global
    options (--cacert, --cert, --key, --insecure-skip-tls-verify, --tls-server-name) or
    https:// endpoints, for either target."""
    from quorum.bench.load import BenchConfig
    from quorum.bench.load import run_bench_sync as run
    from quorum.errors import QuorumError

    eps = tuple(e.strip() for e in (endpoints or ",".join(obj.endpoints)).split(",")  # type: ignore[attr-defined]
                if e.strip())
    tls = obj.tls()  # type: ignore[attr-defined]  # a bad TLS file ends the command here
    cfg = BenchConfig(target=target, endpoints=eps, workload=workload, clients=clients,
                      connections=max(1, min(connections, clients)), duration_s=duration_s,
                      value_bytes=value_bytes, keys=keys, serializable=serializable,
                      pids=tuple(int(p) for p in pids.split(",") if p), tls=tls)
    try:
        _report(obj, cfg, run)
    except QuorumError as exc:  # a TLS setting the target cannot use
        fail(f"{type(exc).__name__}: {exc}")


def _report(obj: object, cfg: Any, run: Any) -> None:
    target, workload, clients = cfg.target, cfg.workload, cfg.clients
    as_json = getattr(obj, "json", False)
    if as_json:
        result = run(cfg)
        emit_json(result)
        return
    with Progress(transient=True) as progress:
        task = progress.add_task(f"{target} {workload} x{clients}", total=1.0)
        result = run(cfg, lambda f: progress.update(task, completed=f))
    cpu = f"{result.server_cpu_us_per_op:.0f}" if result.server_cpu_us_per_op else "-"
    own = f"{result.client_cpu_us_per_op:.1f}" if result.client_cpu_us_per_op else "-"
    table(None, ("target", "workload", "clients", "ops/s", "p50 ms", "p90 ms", "p99 ms",
                 "errors", "server CPU us/op", "client CPU us/op"),
          [(result.target, result.workload, result.clients, f"{result.ops_per_s:,.0f}",
            f"{result.p50_ms:.2f}", f"{result.p90_ms:.2f}", f"{result.p99_ms:.2f}",
            result.errors, cpu, own)])

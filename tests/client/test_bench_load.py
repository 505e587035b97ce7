"""The load generator behind ``quorum bench``, against an in-process LocalBackend server."""

from __future__ import annotations

from quorum.bench.load import BenchConfig, bench

from .helpers import run, serving


def _cfg(endpoint: str, workload: str) -> BenchConfig:
    return BenchConfig(endpoints=(endpoint,), workload=workload, clients=16, connections=2,
                       duration_s=0.3, warmup_s=0.05, keys=50)


def test_put_get_and_mixed_workloads_complete_without_errors() -> None:
    async def body() -> None:
        async with serving() as env:
            for workload in ("put", "get", "mixed"):
                r = await bench(_cfg(env.endpoint, workload))
                assert r.errors == 0 and r.operations > 0, (workload, r)
                assert r.p50_ms <= r.p99_ms <= r.max_ms
                assert r.client_cpu_us_per_op is not None and r.client_cpu_us_per_op > 0
            # every write (puts and the get runs' preload) stays inside the 50-key space
            got = await env.client().get_prefix(b"bench/")
            assert got.count == 50

    run(body())

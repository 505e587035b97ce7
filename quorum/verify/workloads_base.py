"""What every ``quorum verify`` workload shares: the run context, the verdict, the interface.

A workload runs its clients against the cluster while the nemesis injects faults
(:meth:`Workload.run`), then, once the runner has healed every fault and the cluster took
writes again, checks what its clients observed (:meth:`Workload.check`) and returns one
:class:`WorkloadVerdict`. Workloads never touch processes or the proxy: faults are the
nemesis's business, so every workload can run alongside every nemesis.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from quorum.client.aio import AsyncClient
from quorum.errors import NoEndpointAvailable, NoLeader, NotLeader, QuorumError
from quorum.verify.leaders import LeaderSample

# Errors a server returns before doing anything: the operation certainly did not happen.
NOT_APPLIED = (NoLeader, NotLeader, NoEndpointAvailable)
CALL_TIMEOUT_S = 5.0
# Pause between two reads of a pinned read-only worker: enough reads to see a fault of half
# a second, few enough that the histories stay cheap to check.
READER_PAUSE_S = 0.02
T = TypeVar("T")


async def persist(call: Callable[[], Awaitable[T]], within_s: float = 30.0) -> T:
    """Retry an idempotent setup or check-time call until it succeeds (faults may be in
    force); raises the last error after ``within_s``."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            return await asyncio.wait_for(call(), CALL_TIMEOUT_S)
        except (TimeoutError, QuorumError, OSError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


class FaultSpan(msgspec.Struct, frozen=True, kw_only=True):
    """One fault the nemesis applied, on the runner's monotonic clock: ``kind`` is the
    nemesis (kill, pause, partition, clock, member), ``nodes`` the nodes it hit (for a
    partition, the minority side), in force from ``start`` until ``end``."""

    kind: str
    nodes: tuple[int, ...]
    start: float
    end: float


class WorkloadVerdict(msgspec.Struct, kw_only=True):
    """One workload's outcome. ``verdict``: PASS, FAIL (a checker found a violation) or
    UNKNOWN (a checker could not decide, e.g. the linearizability search ran out of steps)."""

    name: str
    verdict: str
    operations: int = 0
    ok_operations: int = 0
    problems: list[str] = msgspec.field(default_factory=list)
    details: dict[str, Any] = msgspec.field(default_factory=dict)
    report_html: str = ""
    report_json: str = ""


class RunContext:
    """The handles a workload needs: endpoints, a shared clock, where to write its report.

    Every client made through :meth:`client` is remembered so that the membership nemesis
    can hand it the endpoint of a node that joined the cluster (a removed node's endpoint
    simply stops answering and the client fails over).
    """

    def __init__(self, endpoints: list[str], report_dir: Path, rng: random.Random,
                 log: Callable[[str], None], clock: Callable[[], float] = time.monotonic,
                 clock_rate_bound: float = 1.0, clock_rate_min: float = 1.0) -> None:
        self.endpoints = list(endpoints)
        self.report_dir = report_dir
        self.rng = rng
        self.log = log
        self.clock = clock
        # The fastest a server clock may run relative to real time in this run (the clock
        # nemesis skews clocks); time-based checks (lease expiry) allow for it.
        self.clock_rate_bound = clock_rate_bound
        # ... and the slowest: a timeout measured on a slow clock takes longer in real time
        self.clock_rate_min = clock_rate_min
        # Filled in by the runner while the run goes on, read by the checks afterwards: the
        # faults applied, and every node's view of the leader (quorum.verify.leaders).
        self.faults: list[FaultSpan] = []
        self.leader_samples: list[LeaderSample] = []
        self.clients: list[AsyncClient] = []
        self._pinned: set[int] = set()  # id() of clients bound to one node
        self._made = 0

    def client(self, timeout_s: float = 3.0) -> AsyncClient:
        """A new client; successive clients start on successive nodes, as real clients
        spread over a cluster."""
        i = self._made % len(self.endpoints)
        self._made += 1
        c = AsyncClient(self.endpoints[i:] + self.endpoints[:i], timeout_s=timeout_s)
        self.clients.append(c)
        return c

    def single_node_client(self, endpoint: str, timeout_s: float = 3.0) -> AsyncClient:
        """A client bound to one node only (reads that must come from that node): it never
        fails over, and a node that joins later is not added to it."""
        c = AsyncClient([endpoint], timeout_s=timeout_s)
        self.clients.append(c)
        self._pinned.add(id(c))
        return c

    def pinned_readers(self, timeout_s: float = 3.0) -> list[AsyncClient]:
        """One client bound to each node, for read-only workers. Clients that fail over leave
        a node cut off from the majority at their first failed write, so they rarely read
        from it; a reader that stays there for the whole fault is what shows whether such a
        node answers reads it must not (as Jepsen binds each client to one node)."""
        return [self.single_node_client(e, timeout_s) for e in self.endpoints]

    def add_endpoint(self, endpoint: str) -> None:
        if endpoint not in self.endpoints:
            self.endpoints.append(endpoint)
        for c in self.clients:
            if id(c) not in self._pinned and endpoint not in c.endpoints:
                c.endpoints.append(endpoint)

    def remove_endpoint(self, endpoint: str) -> None:
        """A node left the cluster: new clients and checks no longer use it (existing
        clients keep it in their rotation and fail over when it does not answer)."""
        if endpoint in self.endpoints and len(self.endpoints) > 1:
            self.endpoints.remove(endpoint)

    def rng_child(self) -> random.Random:
        return random.Random(self.rng.getrandbits(32))

    async def close(self) -> None:
        for c in self.clients:
            await c.close()


class Workload:
    """Base class: subclasses set ``name`` and implement ``run`` and ``check``."""

    name = ""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx

    async def run(self, until: float) -> None:
        raise NotImplementedError

    async def check(self) -> WorkloadVerdict:
        raise NotImplementedError

    def prefix(self, suffix: str) -> Path:
        """Where this workload writes ``<name>.<suffix>`` files in the report directory."""
        return self.ctx.report_dir / f"{self.name}{suffix}"


def verdict_of(problems: list[str], unknown: bool = False) -> str:
    if problems:
        return "FAIL"
    return "UNKNOWN" if unknown else "PASS"

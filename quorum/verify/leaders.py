"""Who led when: a monitor that samples every node's view of the leader during a run.

Time-based checks (lease expiry) need to know when the cluster had a leader able to act and
when a new leader took over: a lease restarts its TTL at every promotion, and nothing expires
while no leader exists. :class:`LeaderMonitor` asks each node for its status (member id,
leader id, term) every ``interval_s`` over a client bound to that node, and records one
:class:`LeaderSample` per answer, timed on the runner's monotonic clock. A node that does not
answer (killed, paused, overloaded) simply has no sample for that time.

Reading samples (:func:`leader_spans`): a sample in which a node names itself leader shows
that it led in that term at some instant of ``[call, ret]``. A term has at most one leader
(Raft §5.2) and a node leaves leadership only to a higher term or by stepping down, never to
regain it in the same term, so two such samples of one term bracket a span in which that node
led throughout. What the samples cannot show (a term that began and ended between two
rounds, a leader that did not answer) is left uncovered, and the checks that use the spans
read uncovered time in the lenient direction (see ``workloads_lease.check_lease_expiry``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable, Sequence

import msgspec

from quorum.client.aio import AsyncClient
from quorum.errors import QuorumError

SAMPLE_INTERVAL_S = 0.1
SAMPLE_TIMEOUT_S = 1.0


class LeaderSample(msgspec.Struct, frozen=True, kw_only=True):
    """One node's answer to a status request: ``leader_id == node_id`` means it led."""

    node_id: int
    call: float
    ret: float
    term: int
    leader_id: int
    applied: int = 0  # its applied index, and whether it is a learner (for reading reports)
    learner: bool = False


class LeaderSpan(msgspec.Struct, frozen=True, kw_only=True):
    """``leader_id`` led term ``term`` throughout ``[start, end]``: it named itself leader of
    that term in answers that returned at ``start`` and were asked at ``end``, with no two
    consecutive answers further apart than the gap allowed (:func:`leader_spans`)."""

    term: int
    leader_id: int
    start: float
    end: float


def leader_spans(samples: Sequence[LeaderSample], max_gap_s: float) -> list[LeaderSpan]:
    """When some node was seen leading, as spans of time, by term then start.

    Two consecutive answers of a leader in one term, the first returned at ``r`` and the next
    asked at ``c``, show it leading throughout ``[r, c]`` (it cannot lose and regain the
    leadership of one term). Only pairs with ``c - r <= max_gap_s`` count: a leader that did
    not answer for longer (paused, killed, its event loop stalled under load) is not shown to
    have been able to act meanwhile, so that time is left uncovered."""
    by_term: dict[tuple[int, int], list[LeaderSample]] = {}
    for s in samples:
        if s.leader_id == s.node_id and s.leader_id != 0:
            by_term.setdefault((s.term, s.leader_id), []).append(s)
    spans: list[LeaderSpan] = []
    for (term, leader), seen in sorted(by_term.items()):
        seen.sort(key=lambda s: s.call)
        current: LeaderSpan | None = None
        for prev, nxt in itertools.pairwise(seen):
            if nxt.call <= prev.ret or nxt.call - prev.ret > max_gap_s:
                if current is not None:  # concurrent answers show nothing; a gap ends cover
                    spans.append(current)
                    current = None
                continue
            # The previous pair ended at prev.call: leading then and at prev.ret, so also in
            # between (a term is led once); one span runs on.
            start = current.start if current is not None else prev.ret
            current = LeaderSpan(term=term, leader_id=leader, start=start, end=nxt.call)
        if current is not None:
            spans.append(current)
    return spans


class LeaderMonitor:
    """Samples every node's status until stopped. ``nodes`` returns the current
    node id -> client endpoint map (the membership nemesis adds and removes nodes)."""

    def __init__(self, nodes: Callable[[], dict[int, str]], *,
                 interval_s: float = SAMPLE_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.nodes = nodes
        self.interval_s = interval_s
        self.clock = clock
        self.samples: list[LeaderSample] = []
        self._clients: dict[int, AsyncClient] = {}

    async def run(self, stop: asyncio.Event) -> None:
        """Sample every node once per ``interval_s`` until ``stop`` is set (each node in its
        own task, so a paused node does not delay the others' samples)."""
        running: dict[int, asyncio.Task[None]] = {}
        try:
            while not stop.is_set():
                for node_id, endpoint in self.nodes().items():
                    if node_id not in running or running[node_id].done():
                        running[node_id] = asyncio.create_task(self._sample(node_id, endpoint))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.interval_s)
        finally:
            for task in running.values():
                task.cancel()
            for task in running.values():
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            for client in self._clients.values():
                await client.close()

    async def _sample(self, node_id: int, endpoint: str) -> None:
        client = self._clients.get(node_id)
        if client is None:
            client = self._clients[node_id] = AsyncClient([endpoint], timeout_s=SAMPLE_TIMEOUT_S)
        call = self.clock()
        try:
            st = await asyncio.wait_for(client.status(), SAMPLE_TIMEOUT_S)
        except (TimeoutError, QuorumError, OSError):
            return
        self.samples.append(LeaderSample(node_id=st.member_id or node_id, call=call,
                                         ret=self.clock(), term=st.raft_term,
                                         leader_id=st.leader_id, applied=st.raft_applied_index,
                                         learner=st.is_learner))

"""The watch workload: watchers on a prefix while a writer changes it, checked against the
committed history.

* a writer puts single keys, puts several keys in one txn (one revision, several events: the
  atomicity case), deletes keys, and mixes puts and deletes in one txn;
* each watcher has its own client and watches the prefix from the revision the run started
  at, with progress notifications, and asks for progress now and then (bookmarks). The
  client's watch resumes by itself after a lost connection from the last revision it
  delivered + 1; each resume starts a new recorded stream. If it cannot resume in time the
  workload opens a new watch from the same point (also a new stream);
* the same clients read the prefix every ~0.2 s; the revisions of those reads and of the
  writer's answers are checked for real-time monotonicity (``check_revisions``): a read from
  a node that fell behind (a stale read) reports an older revision than a write that had
  already completed. One more reader per node, bound to that node, reads the prefix every
  20 ms, so a node cut off from the majority is read during the whole fault.

After healing, each watcher is asked for progress until it has observed the final
revision. The committed history is then read back by watching the prefix from the start
revision on one node, and cross-checked: folding its events must give exactly what a range
of the prefix at the final revision returns on another node. ``check_watches`` then checks
every watcher (ordered, unique, atomic, reliable, resumable, bookmarkable, no phantoms).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from typing import Any

import msgspec

from quorum.client import txn as t
from quorum.client.aio import AsyncClient
from quorum.client.watch import Watcher
from quorum.errors import QuorumError, RevisionCompacted
from quorum.state.commands import EventType, prefix_end
from quorum.verify.workloads import (
    RevisionObservation,
    WatcherLog,
    WatchEvent,
    WatchResponse,
    WatchStream,
    check_revisions,
    check_watches,
)
from quorum.verify.workloads_base import (
    CALL_TIMEOUT_S,
    READER_PAUSE_S,
    RunContext,
    Workload,
    WorkloadVerdict,
    persist,
)
from quorum.verify.workloads_html import simple_page

PREFIX = b"watch/"
CATCH_UP_S = 20.0


def to_event(e: Any) -> WatchEvent:
    """A server event as the checker's WatchEvent (values as text)."""
    if e.type is EventType.PUT:
        return WatchEvent(revision=e.kv.mod_revision, key=e.kv.key.decode(), type="put",
                          value=e.kv.value.decode())
    return WatchEvent(revision=e.kv.mod_revision, key=e.kv.key.decode(), type="delete")


class _Watcher:
    """One logical watcher: a log of streams, kept going across faults."""

    def __init__(self, wid: int, client: AsyncClient, work: WatchWorkload,
                 rng: random.Random) -> None:
        self.client = client
        self.work = work
        self.rng = rng
        self.log = WatcherLog(watcher_id=f"w{wid}", key=PREFIX.decode(),
                              range_end=prefix_end(PREFIX).decode())
        self.next_revision = 0
        self.stream = WatchStream(start_revision=0)
        self.stopped = False

    @property
    def last_seen(self) -> int:
        return self.next_revision - 1

    async def follow(self, start: int) -> None:
        self.next_revision = start
        while not self.stopped:
            watcher = self.client.watch(PREFIX, prefix=True, start_revision=self.next_revision,
                                        progress_notify=True)
            self.stream = WatchStream(start_revision=self.next_revision)
            self.log.streams.append(self.stream)
            try:
                await self._drain(watcher)
            except RevisionCompacted as exc:
                self.stream.compact_revision = exc.compact_revision
                self.next_revision = max(self.next_revision, exc.compact_revision)
            except (QuorumError, OSError):
                self.work.watch_errors += 1
                await asyncio.sleep(0.1)
            finally:
                await watcher.cancel()

    async def _drain(self, watcher: Watcher) -> None:
        while not self.stopped:
            before, resumes = watcher.next_revision, watcher.resumes
            batch = await watcher.__anext__()
            if watcher.resumes != resumes:  # the client re-created the watch on a new stream
                self.stream = WatchStream(start_revision=before)
                self.log.streams.append(self.stream)
            resp = WatchResponse(events=[to_event(e) for e in batch.events],
                                 progress_revision=0 if batch.events else batch.revision)
            self.stream.responses.append(resp)
            self.next_revision = watcher.next_revision

    async def read_loop(self, until: float) -> None:
        """Prefix reads (revisions checked in real time) and progress requests."""
        while time.monotonic() < until:
            await asyncio.sleep(self.rng.uniform(0.1, 0.3))
            call = time.monotonic()
            try:
                if self.rng.random() < 0.3:
                    await asyncio.wait_for(self.client.request_progress(), CALL_TIMEOUT_S)
                    continue
                resp = await asyncio.wait_for(self.client.range(PREFIX, prefix_end(PREFIX)),
                                              CALL_TIMEOUT_S)
            except (TimeoutError, QuorumError, OSError):
                continue
            self.work.observe(call, resp.revision)


class _PinnedObserver:
    """Prefix reads from the one node its client is bound to, paced; each read's revision is
    checked in real time against completed writes (see RunContext.pinned_readers)."""

    def __init__(self, client: AsyncClient, work: WatchWorkload) -> None:
        self.client = client
        self.work = work

    async def read_loop(self, until: float) -> None:
        while time.monotonic() < until:
            await asyncio.sleep(READER_PAUSE_S)
            call = time.monotonic()
            try:
                resp = await asyncio.wait_for(self.client.range(PREFIX, prefix_end(PREFIX)),
                                              CALL_TIMEOUT_S)
            except (TimeoutError, QuorumError, OSError):
                continue
            self.work.observe(call, resp.revision)


class WatchWorkload(Workload):
    name = "watch"

    def __init__(self, ctx: RunContext, watchers: int = 2, keys: int = 6) -> None:
        super().__init__(ctx)
        self.keys = keys
        self.writer = ctx.client()
        self.watchers = [_Watcher(i, ctx.client(), self, ctx.rng_child())
                         for i in range(watchers)]
        self.rng = ctx.rng_child()
        self.observers = [_PinnedObserver(c, self) for c in ctx.pinned_readers()]
        self.observations: list[RevisionObservation] = []
        self.start_revision = 0
        self.writes = 0
        self.watch_errors = 0
        self._tasks: list[asyncio.Task[None]] = []

    def observe(self, call: float, revision: int) -> None:
        self.observations.append(RevisionObservation(
            client_id=0, op_id=len(self.observations), call_time=call,
            return_time=time.monotonic(), revision=revision))

    async def run(self, until: float) -> None:
        head = await persist(lambda: self.writer.range(PREFIX, prefix_end(PREFIX)))
        self.start_revision = head.revision + 1
        self._tasks = [asyncio.ensure_future(w.follow(self.start_revision))
                       for w in self.watchers]
        await asyncio.gather(self._write_loop(until), *(w.read_loop(until) for w in self.watchers),
                             *(o.read_loop(until) for o in self.observers))

    async def _write_loop(self, until: float) -> None:
        n = 0
        while time.monotonic() < until:
            n += 1
            key = PREFIX + b"%d" % self.rng.randrange(self.keys)
            other = PREFIX + b"%d" % self.rng.randrange(self.keys)
            value = b"%d" % n
            roll = self.rng.random()
            call = time.monotonic()
            try:
                if roll < 0.4:
                    rev = (await asyncio.wait_for(self.writer.put(key, value),
                                                  CALL_TIMEOUT_S)).revision
                elif roll < 0.7:
                    keys = sorted({key, other, PREFIX + b"%d" % self.rng.randrange(self.keys)})
                    rev = (await asyncio.wait_for(self.writer.txn(
                        [], [t.put(k, value) for k in keys], []), CALL_TIMEOUT_S)).revision
                elif roll < 0.85:
                    rev = (await asyncio.wait_for(self.writer.delete(key),
                                                  CALL_TIMEOUT_S)).revision
                else:
                    ops = [t.put(key, value)] + ([t.delete(other)] if other != key else [])
                    rev = (await asyncio.wait_for(self.writer.txn([], ops, []),
                                                  CALL_TIMEOUT_S)).revision
            except (TimeoutError, QuorumError, OSError):
                await asyncio.sleep(0.05)
                continue
            self.writes += 1
            self.observe(call, rev)

    async def _committed(self, final: int) -> tuple[dict[int, list[WatchEvent]], list[str]]:
        """The committed history in [start, final] from a watch on the first node, and the
        problems of cross-checking it against a range at ``final`` on the last node."""
        first, others = self.ctx.endpoints[0], self.ctx.endpoints[1:]
        committed: dict[int, list[WatchEvent]] = {}
        problems: list[str] = []
        async with AsyncClient([first], timeout_s=5.0) as c:
            watcher = c.watch(PREFIX, prefix=True, start_revision=self.start_revision)
            try:
                async with asyncio.timeout(CATCH_UP_S):
                    async for batch in watcher:
                        for e in batch.events:
                            committed.setdefault(e.kv.mod_revision, []).append(to_event(e))
                        if watcher.next_revision > final:
                            break
            except (TimeoutError, QuorumError) as exc:
                problems.append(f"reading the committed history on {first} stopped at "
                                f"revision {watcher.next_revision - 1} of {final}: {exc!r}")
            finally:
                await watcher.cancel()
        async with AsyncClient([*others, first], timeout_s=5.0) as c:  # another node first
            resp = await persist(lambda: c.range(PREFIX, prefix_end(PREFIX), revision=final))
            last = c.endpoint or "?"
        folded: dict[str, str] = {}
        for rev in sorted(committed):
            if rev > final:
                continue
            for ev in committed[rev]:
                if ev.type == "put":
                    folded[ev.key] = str(ev.value)
                else:
                    folded.pop(ev.key, None)
        ranged = {kv.key.decode(): kv.value.decode() for kv in resp.kvs}
        problems += [] if folded == ranged else [
            f"committed history read by watch on {first} folds to {folded}, but a range at "
            f"revision {final} on {last} gives {ranged}"]
        return committed, problems

    async def _catch_up(self, final: int) -> list[str]:
        deadline = time.monotonic() + CATCH_UP_S
        for w in self.watchers:
            while w.last_seen < final and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError, QuorumError, OSError):
                    await asyncio.wait_for(w.client.request_progress(), CALL_TIMEOUT_S)
                await asyncio.sleep(0.2)
        for w in self.watchers:
            w.stopped = True
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, QuorumError):
                await task
        return [f"watcher {w.log.watcher_id} observed revisions up to {w.last_seen} only, "
                f"final revision {final}" for w in self.watchers if w.last_seen < final]

    async def check(self) -> WorkloadVerdict:
        # a last write on the prefix: the final revision carries an event every watcher and
        # the committed-history read must reach (other workloads write other prefixes)
        final = (await persist(lambda: self.writer.put(PREFIX + b"end", b"end"))).revision
        problems = await self._catch_up(final)
        committed, cross = await self._committed(final)
        problems += cross
        logs = [w.log for w in self.watchers]
        violations = check_watches(committed, logs)
        problems += [f"{v.watcher_id} {v.kind} at {v.revision}: {v.detail}"
                     for v in violations[:20]]
        regressions = check_revisions(self.observations)
        problems += [f"revision went back in real time: {r.revision} after {r.earlier_revision}"
                     for r in regressions[:10]]
        details = {
            "start_revision": self.start_revision, "final_revision": final,
            "writes": self.writes, "watchers": len(self.watchers),
            "streams": sum(len(lg.streams) for lg in logs),
            "events_delivered": sum(len(r.events) for lg in logs for s in lg.streams
                                    for r in s.responses),
            "progress_notices": sum(bool(r.progress_revision) for lg in logs
                                    for s in lg.streams for r in s.responses),
            "watch_violations": len(violations), "revision_observations":
                len(self.observations), "revision_regressions": len(regressions),
            "watch_errors": self.watch_errors,
        }
        json_path, html_path = self.prefix(".json"), self.prefix(".html")
        json_path.write_bytes(msgspec.json.encode({
            "details": details, "violations": violations, "regressions": regressions,
            "watchers": logs}))
        rows = [(v.watcher_id, v.kind, v.revision, v.detail) for v in violations[:200]]
        html_path.write_text(simple_page("quorum verify: watch workload", problems, details,
                                         ("watcher", "kind", "revision", "detail"), rows),
                             encoding="utf-8")
        return WorkloadVerdict(
            name=self.name, verdict="FAIL" if problems else "PASS",
            operations=self.writes + len(self.observations),
            ok_operations=self.writes + len(self.observations), problems=problems,
            details=details, report_html=str(html_path), report_json=str(json_path))


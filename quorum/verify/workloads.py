"""Checkers for workloads other than registers and transactions: fencing tokens and watches.

Pure functions over recorded events; they never talk to a cluster. A harness (simulator or
real-process runner) records the events and calls these.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence

import msgspec

# --- fencing --------------------------------------------------------------------------------


class FencedWrite(msgspec.Struct, frozen=True, kw_only=True):
    """A write to a protected resource, in the order the resource processed it.

    ``token`` is the fencing token the writer held (for quorum locks: the lock key's
    revision); ``accepted`` is whether the resource took the write.
    """

    resource: str
    token: int
    accepted: bool
    client_id: int = 0
    op_id: int = 0


class FencingReport(msgspec.Struct, kw_only=True):
    accepted: int
    rejected: int
    stale_accepted: list[FencedWrite]
    current_rejected: list[FencedWrite]

    @property
    def stale_count(self) -> int:
        return len(self.stale_accepted)


def check_fencing(writes: Sequence[FencedWrite]) -> FencingReport:
    """Count writes a resource accepted although it had already accepted a higher token.

    That is the fencing rule (Kleppmann, "How to do distributed locking"): once the resource
    has seen token t, any write carrying a token below t comes from a holder whose lock has
    since been granted to someone else, and must be refused. With fencing in place
    ``stale_count`` must be 0; without it, a paused lock holder produces stale writes.
    ``current_rejected`` lists writes refused although their token was not stale (a liveness
    problem, not a safety one).
    """
    highest: dict[str, int] = {}
    stale: list[FencedWrite] = []
    refused: list[FencedWrite] = []
    accepted = 0
    for w in writes:
        top = highest.get(w.resource)
        is_stale = top is not None and w.token < top
        if w.accepted:
            accepted += 1
            if is_stale:
                stale.append(w)
            highest[w.resource] = max(w.token, top if top is not None else w.token)
        elif not is_stale:
            refused.append(w)
    return FencingReport(accepted=accepted, rejected=len(writes) - accepted,
                         stale_accepted=stale, current_rejected=refused)


# --- revisions ------------------------------------------------------------------------------


class RevisionObservation(msgspec.Struct, frozen=True, kw_only=True):
    """The store revision a completed call reported (e.g. an etcd response header)."""

    client_id: int
    op_id: int
    call_time: float
    return_time: float
    revision: int


class RevisionViolation(msgspec.Struct, frozen=True, kw_only=True):
    op_id: int
    revision: int
    earlier_op_id: int
    earlier_revision: int


def check_revisions(observations: Sequence[RevisionObservation]) -> list[RevisionViolation]:
    """The revision a linearizable store reports never goes backwards in real time.

    If call A returned before call B was invoked, B's revision must be >= A's (both read the
    store at a point inside their intervals, and revisions only grow). Each call reporting a
    lower revision than some call that completed before it began is returned, paired with the
    highest such earlier call. O(n log n).
    """
    calls = sorted(observations, key=lambda o: o.call_time)
    done = sorted(observations, key=lambda o: o.return_time)
    best: RevisionObservation | None = None  # highest revision among calls returned so far
    out: list[RevisionViolation] = []
    j = 0
    for obs in calls:
        # strictly before: touching intervals are concurrent (closed intervals)
        while j < len(done) and done[j].return_time < obs.call_time:
            if best is None or done[j].revision > best.revision:
                best = done[j]
            j += 1
        if best is not None and obs.revision < best.revision:
            out.append(RevisionViolation(op_id=obs.op_id, revision=obs.revision,
                                         earlier_op_id=best.op_id,
                                         earlier_revision=best.revision))
    return out


# --- watches --------------------------------------------------------------------------------


class WatchEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One change to one key at one revision (``type`` is "put" or "delete")."""

    revision: int
    key: str
    type: str = "put"
    value: str | bytes | None = None


class WatchResponse(msgspec.Struct, kw_only=True):
    """One message on a watch stream: events, or a progress notification at a revision
    (``progress_revision`` > 0: the server promises every event up to it was sent)."""

    events: list[WatchEvent] = msgspec.field(default_factory=list)
    progress_revision: int = 0


class WatchStream(msgspec.Struct, kw_only=True):
    """One connection of a watcher, opened at ``start_revision``.

    ``compact_revision`` > 0 records that the server cancelled the stream because its start
    revision was compacted (etcd's ``compact_revision``): revisions below it can no longer be
    delivered, so the watcher resumes at it and the gap is not a reliability violation.
    """

    start_revision: int
    responses: list[WatchResponse] = msgspec.field(default_factory=list)
    compact_revision: int = 0


class WatcherLog(msgspec.Struct, kw_only=True):
    """Everything one logical watcher received, across reconnects, in order.

    The range follows etcd: ``range_end == ""`` watches ``key`` alone, ``"\\0"`` every key
    >= ``key``, otherwise the half-open range [key, range_end).
    """

    watcher_id: str
    key: str
    range_end: str = ""
    streams: list[WatchStream] = msgspec.field(default_factory=list)

    def matches(self, key: str) -> bool:
        if self.range_end == "":
            return key == self.key
        if self.range_end == "\0":
            return key >= self.key
        return self.key <= key < self.range_end


class WatchViolation(msgspec.Struct, frozen=True, kw_only=True):
    """kind: ordered | unique | atomic | reliable | resumable | bookmarkable | phantom."""

    watcher_id: str
    kind: str
    revision: int
    detail: str


def check_watches(committed: Mapping[int, Sequence[WatchEvent]],
                  watchers: Sequence[WatcherLog]) -> list[WatchViolation]:
    """Check the watch guarantees (as etcd documents them) for every watcher.

    ``committed`` is the committed history: revision -> the events of that revision, for all
    keys. Guarantees, each reported under its own kind:

    * ordered: event revisions never go down along the watcher's sequence;
    * unique: no event is delivered twice;
    * atomic: a revision's matching events arrive together in one response;
    * reliable: from the first start revision up to the last revision observed (event or
      progress notification), every committed matching event was delivered;
    * resumable: a reconnect resumes at the last observed revision + 1, and a stream never
      delivers events below its start revision;
    * bookmarkable: a progress notification at R comes after every matching event <= R and
      before every event > R;
    * phantom: a delivered event that the committed history does not have.
    """
    out: list[WatchViolation] = []
    for log in watchers:
        out.extend(_WatcherCheck(committed, log).run())
    return out


class _WatcherCheck:
    def __init__(self, committed: Mapping[int, Sequence[WatchEvent]], log: WatcherLog) -> None:
        self.log = log
        self.expected: dict[int, list[WatchEvent]] = {}
        for rev in sorted(committed):
            evs = [e for e in committed[rev] if log.matches(e.key)]
            if evs:
                self.expected[rev] = evs
        self.expected_revs = sorted(self.expected)
        self.first = log.streams[0].start_revision if log.streams else 0
        self.delivered: set[WatchEvent] = set()
        self.response_of: dict[int, tuple[int, int]] = {}  # revision -> first response seen
        self.split: set[int] = set()
        self.last_event_rev = 0
        self.last_seen = self.first - 1  # highest revision observed (events or progress)
        self.bookmark_checked = self.first - 1  # revisions <= this were checked at a notify
        self.excused: list[tuple[int, int]] = []  # revision ranges lost to compaction
        self.out: list[WatchViolation] = []

    def flag(self, kind: str, revision: int, detail: str) -> None:
        self.out.append(WatchViolation(watcher_id=self.log.watcher_id, kind=kind,
                                       revision=revision, detail=detail))

    def run(self) -> list[WatchViolation]:
        for si, stream in enumerate(self.log.streams):
            if si > 0 and stream.start_revision != self.last_seen + 1:
                self.flag("resumable", stream.start_revision,
                          f"stream {si} resumed at {stream.start_revision}, "
                          f"last observed revision was {self.last_seen}")
            for ri, resp in enumerate(stream.responses):
                self._response(si, ri, stream.start_revision, resp)
            if stream.compact_revision:
                self._compacted(si, stream)
        self._missing(self.first, self.last_seen, "reliable", "never delivered")
        return self.out

    def _compacted(self, si: int, stream: WatchStream) -> None:
        """The stream's start was compacted: what lies below the compaction is excused."""
        if stream.start_revision >= stream.compact_revision:
            self.flag("resumable", stream.start_revision,
                      f"stream {si} at {stream.start_revision} cancelled as compacted at "
                      f"{stream.compact_revision}, which it is not below")
            return
        self.excused.append((self.last_seen + 1, stream.compact_revision - 1))
        self.last_seen = max(self.last_seen, stream.compact_revision - 1)
        self.bookmark_checked = max(self.bookmark_checked, self.last_seen)

    def _response(self, si: int, ri: int, start: int, resp: WatchResponse) -> None:
        for e in resp.events:
            self._event(si, ri, start, e)
        for rev in sorted({e.revision for e in resp.events}):
            want = self.expected.get(rev, [])
            got = [e for e in resp.events if e.revision == rev and e in want]
            # Part of a revision's real events in one response: the rest come later or never.
            if got and rev not in self.split and len(set(got)) < len(want):
                self.split.add(rev)
                self.flag("atomic", rev, f"response {si}.{ri} has {len(set(got))} of the "
                          f"{len(want)} events of revision {rev}")
        if resp.progress_revision:
            self._progress(resp.progress_revision)

    def _event(self, si: int, ri: int, start: int, e: WatchEvent) -> None:
        if e.revision < start:
            self.flag("resumable", e.revision, f"stream {si} opened at {start} sent revision "
                      f"{e.revision}")
        if e.revision < self.last_event_rev:
            self.flag("ordered", e.revision,
                      f"revision {e.revision} after revision {self.last_event_rev}")
        if e in self.delivered:
            self.flag("unique", e.revision, f"{e.key!r}@{e.revision} delivered again")
        if e not in self.expected.get(e.revision, []):
            self.flag("phantom", e.revision, f"{e.key!r}@{e.revision} ({e.type}) not committed")
        first = self.response_of.setdefault(e.revision, (si, ri))
        if first != (si, ri) and e.revision not in self.split:
            self.split.add(e.revision)
            self.flag("atomic", e.revision, f"revision {e.revision} split across responses "
                      f"{first[0]}.{first[1]} and {si}.{ri}")
        self.delivered.add(e)
        self.last_event_rev = max(self.last_event_rev, e.revision)
        self.last_seen = max(self.last_seen, e.revision)

    def _progress(self, rev: int) -> None:
        if rev < self.last_event_rev:
            self.flag("bookmarkable", rev, f"progress at {rev} after an event at "
                      f"{self.last_event_rev}")
        # Revisions up to the previous notification were checked then (and flagged if lost).
        self._missing(self.bookmark_checked + 1, rev, "bookmarkable",
                      "missing at progress notification")
        self.bookmark_checked = max(self.bookmark_checked, rev)
        self.last_seen = max(self.last_seen, rev)

    def _missing(self, lo: int, hi: int, kind: str, what: str) -> None:
        """Flag each revision in [lo, hi] with a committed matching event not yet delivered."""
        i = bisect.bisect_left(self.expected_revs, lo)
        j = bisect.bisect_right(self.expected_revs, hi)
        for rev in self.expected_revs[i:j]:
            if any(lo <= rev <= hi for lo, hi in self.excused):
                continue
            lost = [e for e in self.expected[rev] if e not in self.delivered]
            if lost:
                keys = ", ".join(repr(e.key) for e in lost)
                self.flag(kind, rev, f"revision {rev} ({keys}) {what}")

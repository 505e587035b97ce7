"""Linearizability checking in the style of Porcupine.

The search is Wing & Gong's, with Lowe's memoization ("Testing for linearizability", 2017):
events (calls and returns) sit in a doubly linked list in time order. Walking from the head,
the checker tries to linearize the operation of each call entry it meets: if the model accepts
it and the pair (set of linearized operations, model state) has not been seen before, the call
and its return are unlinked and the walk restarts from the head. Meeting a return entry means
that operation's deadline has passed without it being linearized: backtrack (undo the most
recent linearization, relink it, and continue with the next entry after it). Memoizing the
pairs makes the search visit each reachable configuration once.

Rules that follow from the history semantics (see history.py):

* intervals are closed: at equal times calls sort before returns, so touching intervals are
  treated as concurrent;
* FAIL operations never took effect and are dropped;
* INFO operations return at +inf. When the walk reaches the first return entry at +inf, every
  completed operation has been linearized and the remaining INFO operations are taken to have
  never happened, so the partition is linearizable. INFO read-only operations are dropped up
  front since they can always be "never happened".

Three sound reductions on top (each explained where it is implemented): state-preserving
operations that fit are placed without a backtracking point (``_Search.run``); configurations
dominated by an explored one with fewer INFO operations are pruned (``_Memo``); and models may
resolve INFO operations whose effect was observed (``Model.patch``).

The search is exponential in the worst case (the problem is NP-complete, Gibbons & Korach
1997). ``max_steps`` bounds the number of search steps over the whole check; when it runs out
the verdict is UNKNOWN, never OK.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence

import msgspec

from quorum.errors import UsageError
from quorum.verify.history import Operation, Status
from quorum.verify.models import Model, State


class Verdict(enum.Enum):
    OK = "ok"
    ILLEGAL = "illegal"
    UNKNOWN = "unknown"


class PartitionResult(msgspec.Struct, kw_only=True):
    """The outcome for one independently checked sub-history (one key).

    ``linearized``: op_ids in linearization order. For OK it is a full linearization of the
    completed operations (plus the INFO operations that took effect); for ILLEGAL it is the
    longest linearizable prefix found. ``unplaced``: for ILLEGAL, the operation whose return
    was reached without it being placeable after that prefix. ``candidates``: operations that
    were concurrent at that point and could not be placed either.
    """

    key: str
    verdict: Verdict
    op_ids: list[int]
    linearized: list[int] = msgspec.field(default_factory=list)
    unplaced: list[int] = msgspec.field(default_factory=list)
    candidates: list[int] = msgspec.field(default_factory=list)
    steps: int = 0


class CheckResult(msgspec.Struct, kw_only=True):
    verdict: Verdict
    model: str
    partitions: list[PartitionResult]
    steps: int = 0
    dropped_op_ids: list[int] = msgspec.field(default_factory=list)

    def failing(self) -> list[PartitionResult]:
        return [p for p in self.partitions if p.verdict is Verdict.ILLEGAL]


_HEAD = -1  # sentinel node ids; real entries are 0..2n-1
_TAIL = -2


class _EventList:
    """Calls and returns of one partition as a doubly linked list over arrays.

    Node ``i`` is the i-th event in time order; ``op_of[i]`` is its operation's index;
    ``match[i]`` is, for a call, the node of its return. Sentinels live at the end of the
    arrays (Python's negative indexing makes -1/-2 address them).
    """

    def __init__(self, ops: Sequence[Operation]) -> None:
        events: list[tuple[float, int, int]] = []
        for i, op in enumerate(ops):
            events.append((op.call_time, 0, i))  # 0 sorts calls first at equal times
            events.append((op.return_time, 1, i))
        events.sort()
        n = len(events)
        self.is_call = [kind == 0 for _, kind, _ in events] + [False, False]
        self.infinite = [math.isinf(t) and kind == 1 for t, kind, _ in events] + [False, False]
        self.op_of = [i for _, _, i in events] + [-1, -1]
        return_node = {i: node for node, (_, kind, i) in enumerate(events) if kind == 1}
        self.match = [return_node[i] if kind == 0 else -1 for _, kind, i in events] + [-1, -1]
        # next/prev over nodes 0..n-1; TAIL is array slot n (== -2), HEAD slot n+1 (== -1).
        self.nxt = [*range(1, n + 1), _TAIL, _TAIL]
        self.prv = [_HEAD, *range(0, n), _HEAD]
        if n:
            self.nxt[n - 1] = _TAIL
            self.nxt[_HEAD] = 0
            self.prv[_TAIL] = n - 1

    def lift(self, call: int) -> None:
        """Unlink a call and its return (the operation is now linearized)."""
        nxt, prv = self.nxt, self.prv
        for node in (call, self.match[call]):
            nxt[prv[node]] = nxt[node]
            prv[nxt[node]] = prv[node]

    def unlift(self, call: int) -> None:
        """Relink, in the reverse order of lift (dancing links: only valid LIFO)."""
        nxt, prv = self.nxt, self.prv
        for node in (self.match[call], call):
            nxt[prv[node]] = node
            prv[nxt[node]] = node


_Chain = tuple[int, "_Chain"] | None


class _Memo:
    """Configurations already explored, with dominance over indeterminate operations.

    A configuration is (completed ops linearized, INFO ops linearized, state). One that has
    linearized a *superset* of the INFO ops of an explored configuration with the same
    completed set and state can do nothing that one could not (an INFO op may always be
    left unlinearized, and it never constrains anyone's real-time order), so it is pruned.
    Explored configurations either failed or are ancestors of the current one; pruning
    against an ancestor is safe because the ancestor can follow the same continuation.
    """

    def __init__(self) -> None:
        self._info_sets: dict[tuple[int, State], list[int]] = {}

    def visit(self, done_bits: int, info_bits: int, state: State) -> bool:
        """Record the configuration; False if it (or one dominating it) was seen."""
        key = (done_bits, state)
        sets = self._info_sets.get(key)
        if sets is None:
            self._info_sets[key] = [info_bits]
            return True
        for seen in sets:
            if seen & ~info_bits == 0:  # seen is a subset of info_bits
                return False
        sets.append(info_bits)
        return True


class _Search:
    def __init__(self, model: Model, ops: Sequence[Operation], budget: int) -> None:
        self.model = model
        self.ops = ops
        self.budget = budget
        self.steps = 0
        # The longest linearizable prefix seen at a failure, as a cons list (op index, rest)
        # shared with the search stack, so recording it costs O(1) instead of a copy.
        self.best_depth = -1
        self.best_chain: _Chain = None
        self.unplaced = -1
        self.candidates: list[int] = []

    def run(self) -> tuple[Verdict, list[int]]:
        """The search loop; kept as one function with local aliases because it is the hot
        path (one iteration per step)."""
        events = _EventList(self.ops)
        nxt, is_call, op_of = events.nxt, events.is_call, events.op_of
        step, ops = self.model.step, self.ops
        read_only = [self.model.is_read_only(op) for op in ops]
        is_info = [op.indeterminate for op in ops]
        state: State = self.model.init()
        done_bits = 0  # completed ops linearized so far
        info_bits = 0  # INFO ops linearized so far
        # the linearization so far: (call entry, state before it, forced?, chain up to it)
        calls: list[tuple[int, State, bool, _Chain]] = []
        memo = _Memo()
        entry = nxt[_HEAD]
        while True:
            self.steps += 1
            if self.steps > self.budget:
                return Verdict.UNKNOWN, []
            if entry == _TAIL or events.infinite[entry]:
                # Every completed op is linearized; leftover INFO ops never took effect.
                return Verdict.OK, [op_of[c] for c, _, _, _ in calls]
            if is_call[entry]:
                i = op_of[entry]
                legal, new_state = step(state, ops[i])
                if not legal:
                    entry = nxt[entry]
                    continue
                # An op that is legal here and leaves the state as it is can be linearized at
                # once: any linearization placing it later stays valid with it moved here (it
                # is already invoked, and no pending op must precede it). So "not now" is
                # never tried for it: it is forced.
                forced = read_only[i] and new_state == state
                bit = 1 << i
                new_done = done_bits | bit if not is_info[i] else done_bits
                new_info = info_bits | bit if is_info[i] else info_bits
                if memo.visit(new_done, new_info, new_state):
                    calls.append((entry, state, forced, (i, calls[-1][3] if calls else None)))
                    state, done_bits, info_bits = new_state, new_done, new_info
                    events.lift(entry)
                    entry = nxt[_HEAD]
                    continue
                if not forced:
                    entry = nxt[entry]
                    continue
                # forced, and that configuration was explored before and failed: so does this.
            else:
                # A return entry: its operation's deadline passed without it being linearized.
                self._note_failure(events, calls, entry)
            while calls and calls[-1][2]:  # no alternative to try at a forced step
                call, state, _, _ = calls.pop()
                done_bits &= ~(1 << op_of[call])
                events.unlift(call)
            if not calls:
                return Verdict.ILLEGAL, []
            call, state, _, _ = calls.pop()
            i = op_of[call]
            done_bits &= ~(1 << i)
            info_bits &= ~(1 << i)
            events.unlift(call)
            entry = nxt[call]

    def best_prefix(self) -> list[int]:
        out: list[int] = []
        node = self.best_chain
        while node is not None:
            out.append(node[0])
            node = node[1]
        return out[::-1]

    def _note_failure(self, events: _EventList, calls: list[tuple[int, State, bool, _Chain]],
                      ret: int) -> None:
        if len(calls) <= self.best_depth:
            return
        self.best_depth = len(calls)
        self.best_chain = calls[-1][3] if calls else None
        self.unplaced = events.op_of[ret]
        # The calls still linked before this return are the concurrent ops that did not fit.
        pending = []
        node = events.nxt[_HEAD]
        while node != ret:
            if events.op_of[node] != self.unplaced:
                pending.append(events.op_of[node])
            node = events.nxt[node]
        self.candidates = pending


def _validate(ops: Sequence[Operation]) -> None:
    seen: set[int] = set()
    for op in ops:
        if op.op_id in seen:
            raise UsageError(f"duplicate op_id {op.op_id}")
        seen.add(op.op_id)
        if op.status is not Status.INFO and not op.return_time >= op.call_time:
            raise UsageError(f"op {op.op_id} returns before it is called")


def check_partition(
    model: Model, ops: Sequence[Operation], key: str = "", max_steps: int = 10**9
) -> PartitionResult:
    """Check one sub-history as a whole (no further partitioning)."""
    search = _Search(model, model.patch(ops), max_steps)
    verdict, order = search.run()
    ids = [op.op_id for op in ops]
    result = PartitionResult(key=key, verdict=verdict, op_ids=ids, steps=search.steps)
    if verdict is Verdict.OK:
        result.linearized = [ids[i] for i in order]
    elif verdict is Verdict.ILLEGAL:
        result.linearized = [ids[i] for i in search.best_prefix()]
        result.unplaced = [ids[search.unplaced]] if search.unplaced >= 0 else []
        result.candidates = [ids[i] for i in search.candidates]
    return result


def check(model: Model, history: Sequence[Operation], max_steps: int | None = None) -> CheckResult:
    """Check a history for linearizability against ``model``.

    Each partition (key) is checked separately. ``max_steps`` (None = unbounded) is shared by
    all partitions; partitions that cannot be finished within it are UNKNOWN. Deterministic:
    the same history and model always give the same result.

    Raises UsageError for duplicate op_ids or an interval that ends before it starts.
    """
    _validate(history)
    kept: list[Operation] = []
    dropped: list[int] = []
    for op in history:
        if op.status is Status.FAIL or (op.indeterminate and model.is_read_only(op)):
            dropped.append(op.op_id)
        else:
            kept.append(op)
    remaining = max_steps if max_steps is not None else math.inf
    results: list[PartitionResult] = []
    total = 0
    for part in model.partition(kept):
        budget = int(min(remaining, 10**18))
        res = check_partition(model, part, key=part[0].key if part else "", max_steps=budget)
        results.append(res)
        total += res.steps
        remaining -= res.steps
    return CheckResult(
        verdict=_overall(results), model=model.name, partitions=results, steps=total,
        dropped_op_ids=dropped,
    )


def _overall(results: Sequence[PartitionResult]) -> Verdict:
    verdicts = {r.verdict for r in results}
    if Verdict.ILLEGAL in verdicts:
        return Verdict.ILLEGAL
    if Verdict.UNKNOWN in verdicts:
        return Verdict.UNKNOWN
    return Verdict.OK

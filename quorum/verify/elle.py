"""Strict serializability of list-append transactions, checked in the style of Elle.

Workload (Kingsbury & Alvaro, "Elle: Inferring Isolation Anomalies from Experimental
Observations", VLDB 2020): every key holds a list; a transaction is a sequence of micro-ops
``["append", key, value]`` and ``["r", key, list-or-null]``. Appended values are unique per
key, so a read names exactly which appends it saw, and in which order. History format: an
:class:`~quorum.verify.history.Operation` with ``kind="txn"``, ``input`` the micro-ops as
invoked (reads carry null) and, for OK transactions, ``output`` the micro-ops with the lists
read filled in.

Checks:

1. Per read: duplicate elements, elements nobody appended (garbage), elements appended by a
   failed transaction (G1a, aborted read), a read ending on an element that its writer
   followed with another append to the same key (G1b, intermediate read), and a transaction
   that does not see its own earlier appends (internal).
2. Per key: every read must be a prefix of the longest read; otherwise the versions cannot
   form a total order (incompatible-order). The longest read is the key's version order.
3. The dependency graph over committed (OK) and indeterminate (INFO) transactions (Adya):
   ``ww`` from the writer of each element to the writer of the next; ``wr`` from the writer of
   a read's last element to the reader; ``rw`` from a reader to the writer of the element
   right after what it read (anti-dependency); ``realtime`` from T1 to T2 when T1 returned
   before T2 was invoked (strict serializability), kept to a transitive reduction.
4. Cycles, found with Tarjan's strongly connected components. Within each component the most
   severe class is searched first: G0 (ww only), G1c (ww and wr), G-single (exactly one rw),
   G2 (several rw); a cycle that needs a realtime edge gets the ``-realtime`` suffix.

Limits: version orders are inferred only from reads, so appends that no read observed add no
edges; at most one cycle is reported per component; the G-single search tries a bounded
number of rw edges per component.
"""

from __future__ import annotations

import enum
import itertools
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from quorum.errors import UsageError
from quorum.verify.history import Operation, Status

G_SINGLE_TRIES = 256  # rw edges tried per component when looking for a G-single cycle


class EdgeType(enum.IntEnum):
    # Ordered by severity of what a cycle through them means (weakest first).
    WW = 0
    WR = 1
    RW = 2
    REALTIME = 3


_EDGE_NAMES = {EdgeType.WW: "ww", EdgeType.WR: "wr", EdgeType.RW: "rw",
               EdgeType.REALTIME: "realtime"}


class Edge(msgspec.Struct, frozen=True):
    """A dependency ``source -> target`` between transactions (by op_id)."""

    source: int
    target: int
    type: str
    key: str = ""
    value: Any = None


class Anomaly(msgspec.Struct, kw_only=True):
    kind: str
    op_ids: list[int]
    description: str
    cycle: list[Edge] = msgspec.field(default_factory=list)


class ElleResult(msgspec.Struct, kw_only=True):
    valid: bool
    anomalies: list[Anomaly]
    txn_count: int = 0
    edge_count: int = 0

    @property
    def kinds(self) -> list[str]:
        return sorted({a.kind for a in self.anomalies})


class _Read(msgspec.Struct):
    txn: int
    key: str
    values: list[Any]


def _micro_ops(op: Operation) -> list[list[Any]]:
    """The micro-ops of a transaction (with reads filled in when it completed).

    Raises UsageError for anything but a list of ``[f, key, value]`` with f "append" or "r".
    """
    ops = op.output if op.status is Status.OK and op.output is not None else op.input
    if not isinstance(ops, list):
        raise UsageError(f"transaction {op.op_id}: micro-ops must be a list, got {ops!r}")
    out = []
    for m in ops:
        if not isinstance(m, list | tuple) or len(m) != 3 or m[0] not in ("append", "r"):
            raise UsageError(f"transaction {op.op_id}: bad micro-op {m!r}")
        if m[0] == "r" and m[2] is not None and not isinstance(m[2], list):
            raise UsageError(f"transaction {op.op_id}: a read must give a list, got {m[2]!r}")
        out.append(list(m))
    return out


class _Analysis:
    """Holds the parsed history and the anomalies found so far."""

    def __init__(self, history: Sequence[Operation]) -> None:
        self.txns = [op for op in history if op.kind == "txn"]
        self.anomalies: list[Anomaly] = []
        self.writer: dict[tuple[str, Any], int] = {}
        self.appends: list[dict[str, list[Any]]] = []  # per txn: key -> values in order
        self.reads: list[_Read] = []
        for t, op in enumerate(self.txns):
            self._index(t, op)

    def ids(self, txns: Iterable[int]) -> list[int]:
        return [self.txns[t].op_id for t in txns]

    def flag(self, kind: str, txns: Iterable[int], description: str) -> None:
        self.anomalies.append(Anomaly(kind=kind, op_ids=self.ids(txns), description=description))

    def _index(self, t: int, op: Operation) -> None:
        per_key: dict[str, list[Any]] = {}
        for f, key, value in _micro_ops(op):
            if f == "append":
                per_key.setdefault(key, []).append(value)
                other = self.writer.setdefault((key, _h(value)), t)
                if other != t:
                    self.flag("duplicate-appends", [other, t],
                              f"{value!r} appended to {key!r} twice")
            elif f == "r" and op.status is Status.OK and value is not None:
                self.reads.append(_Read(t, key, list(value)))
        self.appends.append(per_key)
        if op.status is Status.OK:
            self._check_internal(t, op)

    def _check_internal(self, t: int, op: Operation) -> None:
        """A transaction sees its own appends, and nothing changes between its reads."""
        known: dict[str, list[Any] | None] = {}
        own: dict[str, list[Any]] = {}
        for f, key, value in _micro_ops(op):
            if f == "append":
                own.setdefault(key, []).append(value)
                continue
            if f != "r" or value is None:
                continue
            mine, before = own.pop(key, None), known.get(key)
            if before is not None:
                fits = value == before + (mine or [])  # nothing else changes it mid-txn
            elif mine:
                fits = len(value) >= len(mine) and value[len(value) - len(mine):] == mine
            else:
                fits = True
            if not fits:
                tail = mine or []
                expected = repr(before + tail) if before is not None else f"...{tail!r}"
                self.flag("internal", [t], f"read of {key!r} gave {value!r}, expected {expected}")
            known[key] = value


def _h(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _check_reads(an: _Analysis) -> None:
    """Element checks per read. A read that is a prefix of an already checked read of the same
    key holds only elements already checked (in the same order, so no new duplicates): it is
    skipped, which keeps the cost near linear in the total length of distinct reads."""
    by_key: dict[str, list[_Read]] = {}
    for rd in an.reads:
        by_key.setdefault(rd.key, []).append(rd)
    for key in sorted(by_key):
        checked: list[list[Any]] = []
        for rd in sorted(by_key[key], key=lambda r: -len(r.values)):
            if not any(rd.values == c[: len(rd.values)] for c in checked):
                _check_elements(an, rd)
                checked.append(rd.values)
            if rd.values:
                _check_intermediate(an, rd)


def _check_elements(an: _Analysis, rd: _Read) -> None:
    seen: set[Any] = set()
    for v in rd.values:
        if _h(v) in seen:
            an.flag("duplicate-elements", [rd.txn], f"read of {rd.key!r} has {v!r} twice")
        seen.add(_h(v))
        w = an.writer.get((rd.key, _h(v)))
        if w is None:
            an.flag("garbage-read", [rd.txn], f"read of {rd.key!r} has {v!r}, never appended")
        elif an.txns[w].status is Status.FAIL:
            an.flag("G1a", [w, rd.txn],
                    f"read of {rd.key!r} saw {v!r} appended by a failed transaction")


def _check_intermediate(an: _Analysis, rd: _Read) -> None:
    last = rd.values[-1]
    w = an.writer.get((rd.key, _h(last)))
    if w is None or w == rd.txn:
        return
    mine = an.appends[w].get(rd.key, [])
    if mine and _h(mine[-1]) != _h(last):
        an.flag("G1b", [w, rd.txn], f"read of {rd.key!r} ended at {last!r}, an intermediate "
                f"append of a transaction that went on to append {mine[-1]!r}")


def _version_orders(an: _Analysis) -> dict[str, list[Any]]:
    """The longest read per key, if every other read of that key is a prefix of it."""
    by_key: dict[str, list[_Read]] = {}
    for rd in an.reads:
        by_key.setdefault(rd.key, []).append(rd)
    orders: dict[str, list[Any]] = {}
    for key in sorted(by_key):
        reads = by_key[key]
        longest = max(reads, key=lambda r: len(r.values))
        bad = [r for r in reads if r.values != longest.values[: len(r.values)]]
        if bad:
            an.flag("incompatible-order", [bad[0].txn, longest.txn],
                    f"reads of {key!r} disagree: {bad[0].values!r} vs {longest.values!r}")
            continue
        orders[key] = longest.values
    return orders


class _Graph:
    def __init__(self) -> None:
        # adjacency: source -> target -> {edge type: (key, value) that explains it}
        self.adj: dict[int, dict[int, dict[EdgeType, tuple[str, Any]]]] = {}
        self.edge_count = 0

    def add(self, a: int, b: int, kind: EdgeType, key: str = "", value: Any = None) -> None:
        if a == b:
            return
        types = self.adj.setdefault(a, {}).setdefault(b, {})
        if kind not in types:
            types[kind] = (key, value)
            self.edge_count += 1
        self.adj.setdefault(b, {})

    def successors(self, a: int, allowed: frozenset[EdgeType], within: set[int]) -> list[int]:
        return [b for b, types in self.adj.get(a, {}).items()
                if b in within and not allowed.isdisjoint(types)]


def _data_edges(an: _Analysis, orders: dict[str, list[Any]], g: _Graph) -> None:
    def live_writer(key: str, v: Any) -> int | None:
        w = an.writer.get((key, _h(v)))
        return None if w is None or an.txns[w].status is Status.FAIL else w

    for key, order in orders.items():
        writers = [live_writer(key, v) for v in order]
        for i in range(len(order) - 1):
            a, b = writers[i], writers[i + 1]
            if a is not None and b is not None:
                g.add(a, b, EdgeType.WW, key, order[i + 1])
    for rd in an.reads:
        known = orders.get(rd.key)
        if known is None:
            continue
        order = known
        if rd.values:
            w = live_writer(rd.key, rd.values[-1])
            if w is not None:
                g.add(w, rd.txn, EdgeType.WR, rd.key, rd.values[-1])
        if len(rd.values) < len(order):
            nxt = live_writer(rd.key, order[len(rd.values)])
            if nxt is not None:
                g.add(rd.txn, nxt, EdgeType.RW, rd.key, order[len(rd.values)])


def _realtime_edges(an: _Analysis, g: _Graph) -> None:
    """T1 -> T2 when T1 returned before T2 was invoked, as a transitive reduction.

    The frontier holds completed transactions with no known successor yet; a newly invoked
    transaction depends on all of them. When T completes, the frontier members it already
    depends on are implied through T and leave the frontier.
    """
    events: list[tuple[float, int, int]] = []
    for t, op in enumerate(an.txns):
        if op.status is Status.FAIL:
            continue
        events.append((op.call_time, 0, t))  # calls first at equal times: closed intervals
        if op.status is Status.OK:
            events.append((op.return_time, 1, t))
    events.sort()
    frontier: set[int] = set()
    preds: dict[int, list[int]] = {}
    for _, kind, t in events:
        if kind == 0:
            preds[t] = sorted(frontier)
            for p in preds[t]:
                g.add(p, t, EdgeType.REALTIME)
        else:
            frontier.difference_update(preds.pop(t, []))
            frontier.add(t)


def _tarjan(nodes: Iterable[int], succ: Any) -> list[list[int]]:
    """Strongly connected components (iterative Tarjan). ``succ(n)`` lists successors."""
    index: dict[int, int] = {}
    low: dict[int, int] = {}
    on_stack: set[int] = set()
    stack: list[int] = []
    comps: list[list[int]] = []
    counter = 0
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(succ(root)))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, it = work[-1]
            child = next(it, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(succ(child))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    x = stack.pop()
                    on_stack.discard(x)
                    comp.append(x)
                    if x == node:
                        break
                comps.append(sorted(comp))
    return comps


def _path(g: _Graph, start: int, goal: int, allowed: frozenset[EdgeType],
          within: set[int]) -> list[int] | None:
    """Shortest path start -> goal (BFS) using only ``allowed`` edges inside ``within``."""
    parent: dict[int, int] = {start: start}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for nxt in sorted(g.successors(node, allowed, within)):
            if nxt in parent:
                continue
            parent[nxt] = node
            if nxt == goal:
                path = [goal]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return path[::-1]
            queue.append(nxt)
    return None


def _cycle_in(g: _Graph, comp: set[int], allowed: frozenset[EdgeType]) -> list[int] | None:
    """Some cycle inside ``comp`` using ``allowed`` edges, as [n0, n1, ..., n0]."""
    subs = _tarjan(sorted(comp), lambda n: sorted(g.successors(n, allowed, comp)))
    for sub in subs:
        if len(sub) > 1:
            first = sub[0]
            within = set(sub)
            for nxt in sorted(g.successors(first, allowed, within)):
                back = _path(g, nxt, first, allowed, within)
                if back is not None:
                    return [first, *back]
    return None


def _g_single(g: _Graph, comp: set[int]) -> list[int] | None:
    """A cycle with exactly one rw edge: rw a -> b, then b back to a on ww/wr edges."""
    deps = frozenset({EdgeType.WW, EdgeType.WR})
    tries = 0
    for a in sorted(comp):
        for b in sorted(g.successors(a, frozenset({EdgeType.RW}), comp)):
            tries += 1
            if tries > G_SINGLE_TRIES:
                return None
            back = _path(g, b, a, deps, comp)
            if back is not None:
                return [a, *back]
    return None


DATA = frozenset({EdgeType.WW, EdgeType.WR, EdgeType.RW})
ALL = frozenset(EdgeType)


def _explain(an: _Analysis, g: _Graph, cycle: list[int], allowed: frozenset[EdgeType],
             ) -> tuple[str, list[Edge]]:
    edges: list[Edge] = []
    for a, b in itertools.pairwise(cycle):
        kind = min(t for t in g.adj[a][b] if t in allowed)
        key, value = g.adj[a][b][kind]
        edges.append(Edge(an.txns[a].op_id, an.txns[b].op_id, _EDGE_NAMES[kind], key, value))
    rw = sum(e.type == "rw" for e in edges)
    if rw == 0:
        name = "G1c" if any(e.type == "wr" for e in edges) else "G0"
    else:
        name = "G-single" if rw == 1 else "G2"
    if any(e.type == "realtime" for e in edges):
        name += "-realtime"
    return name, edges


def _describe_cycle(edges: Sequence[Edge]) -> str:
    parts = [f"T{e.source} -{e.type}" + (f"({e.key} {e.value!r})" if e.key else "") + "->"
             for e in edges]
    return " ".join(parts) + f" T{edges[0].source}"


def _find_cycles(an: _Analysis, g: _Graph) -> None:
    nodes = sorted(g.adj)
    for comp_list in _tarjan(nodes, lambda n: sorted(g.adj[n])):
        if len(comp_list) < 2:
            continue
        comp = set(comp_list)
        searches: list[tuple[frozenset[EdgeType], Any]] = [
            (frozenset({EdgeType.WW}), None),
            (frozenset({EdgeType.WW, EdgeType.WR}), None),
            (DATA, _g_single),
            (DATA, None),
            (ALL, None),
        ]
        for allowed, special in searches:
            cycle = special(g, comp) if special else _cycle_in(g, comp, allowed)
            if cycle is not None:
                name, edges = _explain(an, g, cycle, allowed)
                an.anomalies.append(Anomaly(kind=name, op_ids=[e.source for e in edges],
                                            description=_describe_cycle(edges), cycle=edges))
                break


def check_list_append(history: Sequence[Operation], realtime: bool = True) -> ElleResult:
    """Check list-append transactions for strict serializability (or, with
    ``realtime=False``, serializability). Operations of other kinds are ignored.

    Deterministic. Impossible observations show up as anomalies (duplicate-appends,
    garbage-read, ...); a transaction that is not in the list-append format raises
    UsageError.
    """
    an = _Analysis(history)
    _check_reads(an)
    orders = _version_orders(an)
    g = _Graph()
    for t, op in enumerate(an.txns):
        if op.status is not Status.FAIL:
            g.adj.setdefault(t, {})
    _data_edges(an, orders, g)
    if realtime:
        _realtime_edges(an, g)
    _find_cycles(an, g)
    return ElleResult(valid=not an.anomalies, anomalies=an.anomalies, txn_count=len(an.txns),
                      edge_count=g.edge_count)

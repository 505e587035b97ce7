"""How long the linearizability and list-append checkers take on generated histories.

    .venv/bin/python bench/verify_bench.py [--ops 10000] [--clients 10] [--keys 100]

Register histories: each client runs operations back to back with random latencies; every
operation takes effect at a random point inside its interval, and the effects are applied to a
real register map in that order, so the history is linearizable by construction. A share of
writes time out (INFO), half of which never take effect.
"""

from __future__ import annotations

import argparse
import heapq
import random
import time
from typing import Any

import msgspec

from quorum.verify.elle import check_list_append
from quorum.verify.history import INFINITY, Operation, Status
from quorum.verify.linearizability import check
from quorum.verify.models import RegisterModel


def register_history(n_ops: int, n_clients: int, n_keys: int, seed: int,
                     info_rate: float = 0.02) -> list[Operation]:
    rng = random.Random(seed)
    clock = [0.0] * n_clients
    planned: list[tuple[float, int, int, str, str, float, float, bool]] = []
    for i in range(n_ops):
        c = i % n_clients
        call = clock[c] + rng.uniform(0, 1)
        ret = call + rng.expovariate(1.0)
        clock[c] = ret
        kind = rng.choice(["read", "read", "write", "cas"])
        timed_out = kind != "read" and rng.random() < info_rate
        effect = rng.uniform(call, ret)
        if timed_out and rng.random() < 0.5:
            effect = INFINITY
        planned.append((effect, i, c, kind, f"k{rng.randrange(n_keys)}", call, ret, timed_out))
    heapq.heapify(planned)
    values: dict[str, Any] = {}
    ops: list[Operation] = []
    while planned:
        effect, i, c, kind, key, call, ret, timed_out = heapq.heappop(planned)
        happened = effect != INFINITY
        inp: Any = None
        out: Any = None
        if kind == "read":
            out = values.get(key)
        elif kind == "write":
            inp = i
            if happened:
                values[key] = i
        else:
            expected = values.get(key) if rng.random() < 0.7 else -1
            inp = [expected, i]
            out = happened and values.get(key) == expected
            if out:
                values[key] = i
        ops.append(Operation(
            client_id=c, op_id=i, kind=kind, key=key, input=inp,
            output=None if timed_out else out, call_time=call,
            return_time=INFINITY if timed_out else ret,
            status=Status.INFO if timed_out else Status.OK,
        ))
    return sorted(ops, key=lambda o: o.op_id)


def garbage_read(hist: list[Operation]) -> list[Operation] | None:
    """The history with one read past the middle returning a value never written."""
    for i in range(len(hist) // 2, len(hist)):
        op = hist[i]
        if op.kind == "read" and op.status is Status.OK:
            return [*hist[:i], msgspec.structs.replace(op, output="never-written"), *hist[i + 1:]]
    return None


def stale_read(hist: list[Operation]) -> list[Operation] | None:
    """The history with one read past the middle returning the value of a write to the same
    key that completed well before the read began (and was not the value it read)."""
    for i in range(len(hist) // 2, len(hist)):
        op = hist[i]
        if op.kind != "read" or op.status is not Status.OK or op.output is None:
            continue
        older = [w for w in hist if w.key == op.key and w.kind == "write"
                 and w.status is Status.OK and w.return_time < op.call_time - 20
                 and w.input != op.output]
        if older:
            stale = msgspec.structs.replace(op, output=older[-1].input)
            return [*hist[:i], stale, *hist[i + 1:]]
    return None


def append_history(n_txns: int, n_clients: int, n_keys: int, seed: int) -> list[Operation]:
    """Serial list-append transactions (each client in turn): valid by construction."""
    rng = random.Random(seed)
    lists: dict[str, list[int]] = {}
    ops: list[Operation] = []
    counter = 0
    for i in range(n_txns):
        micro: list[list[Any]] = []
        out: list[list[Any]] = []
        for _ in range(rng.randint(1, 4)):
            key = f"k{rng.randrange(n_keys)}"
            if rng.random() < 0.5:
                counter += 1
                lists.setdefault(key, []).append(counter)
                micro.append(["append", key, counter])
                out.append(["append", key, counter])
            else:
                micro.append(["r", key, None])
                out.append(["r", key, list(lists.get(key, []))])
        ops.append(Operation(client_id=i % n_clients, op_id=i, kind="txn", input=micro,
                             output=out, call_time=2.0 * i, return_time=2.0 * i + 1))
    return ops


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ops", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--info-rate", type=float, default=0.02,
                        help="share of writes and cas ops that time out")
    parser.add_argument("--max-steps", type=int, default=3_000_000)
    parser.add_argument("--skip-append", action="store_true")
    args = parser.parse_args()
    for seed in range(args.seeds):
        hist = register_history(args.ops, args.clients, args.keys, seed, args.info_rate)
        start = time.perf_counter()
        result = check(RegisterModel(), hist, max_steps=args.max_steps)
        took = time.perf_counter() - start
        print(f"register ops={len(hist)} clients={args.clients} keys={args.keys} seed={seed}: "
              f"{result.verdict.value} steps={result.steps} in {took:.2f}s")
        for label, bad in (("garbage read", garbage_read(hist)), ("stale read", stale_read(hist))):
            if bad is None:
                continue
            start = time.perf_counter()
            result = check(RegisterModel(), bad, max_steps=args.max_steps)
            took = time.perf_counter() - start
            print(f"  {label}: {result.verdict.value} steps={result.steps} in {took:.2f}s")
    for seed in range(0 if args.skip_append else args.seeds):
        txns = append_history(args.ops, args.clients, args.keys // 10 or 1, seed)
        start = time.perf_counter()
        elle = check_list_append(txns)
        took = time.perf_counter() - start
        print(f"list-append txns={len(txns)} keys={args.keys // 10 or 1} seed={seed}: "
              f"{'valid' if elle.valid else 'INVALID'} in {took:.2f}s")


if __name__ == "__main__":
    main()

"""Seeded random command streams covering every command type (for determinism, snapshot and
watch tests)."""

from __future__ import annotations

import random

from quorum.state import (
    CompactionRequest,
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRangeRequest,
    LeaseExpireRequest,
    LeaseGrantRequest,
    LeaseRevokeRequest,
    PutRequest,
    Request,
    SessionCloseRequest,
    SessionOpenRequest,
    TxnRequest,
    prefix_end,
)


def workload(seed: int, n: int, keys: int = 30) -> list[tuple[Request, int, int]]:
    """(request, session_id, seq) triples. Some fail on purpose (unknown leases, duplicate
    keys, compaction of the past): failures are part of what must be deterministic."""
    rng = random.Random(seed)
    pool = [b"k/%02d" % i for i in range(keys)] + [b"j/%02d" % i for i in range(keys // 3)]
    out: list[tuple[Request, int, int]] = []
    seqs: dict[int, int] = {}
    for rev_guess in range(n):
        roll = rng.random()
        key = rng.choice(pool)
        req: Request
        if roll < 0.45:
            req = PutRequest(key, rng.randbytes(rng.randint(0, 12)), lease=rng.choice([0, 0, 1, 2, 3]),
                             prev_kv=rng.random() < 0.3)
        elif roll < 0.55:
            end = rng.choice([b"", prefix_end(key[:2]), b"\0"])
            req = DeleteRangeRequest(key, end if end == b"" or end >= key else b"", prev_kv=True)
        elif roll < 0.75:
            ks = rng.sample(pool, rng.randint(1, 4))
            req = TxnRequest(
                (Compare(key, CompareTarget.VERSION, rng.choice(list(CompareResult)),
                         rng.randint(0, 3)),),
                tuple(PutRequest(k, b"t") for k in ks),
                (DeleteRangeRequest(ks[0]),))
        elif roll < 0.82:
            req = LeaseGrantRequest(rng.randint(1, 60), rng.choice([0, 0, 1, 2, 3]))
        elif roll < 0.86:
            req = LeaseRevokeRequest(rng.randint(1, 4))
        elif roll < 0.89:
            req = LeaseExpireRequest(tuple(rng.sample([1, 2, 3, 4], 2)))
        elif roll < 0.92:
            req = CompactionRequest(max(1, rev_guess // 2 - rng.randint(0, 10)))
        elif roll < 0.95:
            req = SessionOpenRequest()
        else:
            req = SessionCloseRequest(rng.randint(1, 3))
        session = rng.choice([0, 0, 0, 1, 2])
        seq = 0
        if session:
            seqs[session] = seqs.get(session, 0) + rng.choice([1, 1, 1, 0, -1])
            seq = seqs[session]
        out.append((req, session, seq))
    return out

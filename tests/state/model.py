"""A deliberately simple reference model of the KV store: per-key lists of full versions.

Nothing clever: every read scans everything. Used to check quorum.state against.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from quorum.errors import (
    FutureRevision,
    KeyNotFound,
    LeaseNotFound,
    RevisionCompacted,
    StateError,
)
from quorum.state import KeyValue


@dataclass
class Version:
    rev: int
    value: bytes | None  # None = deleted
    create: int
    version: int
    lease: int


@dataclass
class Model:
    rev: int = 1  # an empty store is at revision 1, as etcd's: the first write gets 2
    compact: int = 0
    hist: dict[bytes, list[Version]] = field(default_factory=dict)
    leases: dict[int, int] = field(default_factory=dict)  # id -> ttl
    next_lease: int = 1

    # --- reads --------------------------------------------------------------------------------

    def at(self, key: bytes, rev: int) -> Version | None:
        found = None
        for v in self.hist.get(key, []):
            if v.rev <= rev:
                found = v
        return found if found is not None and found.value is not None else None

    def kv(self, key: bytes, rev: int) -> KeyValue | None:
        v = self.at(key, rev)
        if v is None:
            return None
        assert v.value is not None
        return KeyValue(key, v.value, v.create, v.rev, v.version, v.lease)

    def in_range(self, key: bytes, end: bytes, k: bytes) -> bool:
        if not end:
            return k == key
        return key <= k and (end == b"\0" or k < end)

    def range(self, key: bytes, end: bytes, rev: int) -> list[KeyValue]:
        """Live kvs at rev in key order. Raises like the store for bad revisions."""
        if rev <= 0:
            rev = self.rev
        if rev > self.rev:
            raise FutureRevision(self.rev)
        if rev < self.compact:
            raise RevisionCompacted(self.compact)
        out = []
        for k in sorted(self.hist):
            if self.in_range(key, end, k):
                kv = self.kv(k, rev)
                if kv is not None:
                    out.append(kv)
        return out

    def lease_keys(self, lease_id: int) -> list[bytes]:
        return sorted(k for k in self.hist
                      if (kv := self.kv(k, self.rev)) is not None and kv.lease == lease_id)

    # --- writes (one revision each; the caller bumps) -------------------------------------------

    def check_put(self, key: bytes, lease: int, ignore_value: bool = False,
                  ignore_lease: bool = False) -> None:
        if lease and lease not in self.leases:
            raise LeaseNotFound()
        if (ignore_value or ignore_lease) and self.kv(key, self.rev) is None:
            raise KeyNotFound()

    def put(self, key: bytes, value: bytes, lease: int, rev: int, ignore_value: bool = False,
            ignore_lease: bool = False) -> KeyValue | None:
        prev = self.kv(key, self.rev_or_pending(rev))
        if prev is None:
            create, version = rev, 1
        else:
            create, version = prev.create_revision, prev.version + 1
            if ignore_value:
                value = prev.value
            if ignore_lease:
                lease = prev.lease
        self.hist.setdefault(key, []).append(Version(rev, value, create, version, lease))
        return prev

    def delete(self, key: bytes, end: bytes, rev: int) -> list[KeyValue]:
        view = self.rev_or_pending(rev)
        gone = [kv for k in sorted(self.hist) if self.in_range(key, end, k)
                and (kv := self.kv(k, view)) is not None]
        for kv in gone:
            self.hist[kv.key].append(Version(rev, None, 0, 0, 0))
        return gone

    def rev_or_pending(self, rev: int) -> int:
        return max(rev, self.rev)

    def compact_to(self, rev: int) -> None:
        if rev <= self.compact:
            raise RevisionCompacted(self.compact)
        if rev > self.rev:
            raise FutureRevision(self.rev)
        self.compact = rev
        for k in list(self.hist):
            versions = self.hist[k]
            older = [v for v in versions if v.rev <= rev]
            newer = [v for v in versions if v.rev > rev]
            keep = older[-1:] if older and (older[-1].value is not None
                                            or older[-1].rev == rev) else []
            self.hist[k] = keep + newer
            if not self.hist[k]:
                del self.hist[k]


def same_error(a: BaseException | None, b: BaseException | None) -> bool:
    if a is None or b is None:
        return a is b
    return type(a) is type(b) and isinstance(a, StateError)

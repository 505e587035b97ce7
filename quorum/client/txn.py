"""Building transactions: compares and operations.

    from quorum.client import txn as t
    resp = await client.txn(
        compare=[t.version(b"k") == 0],
        success=[t.put(b"k", b"v")],
        failure=[t.get(b"k")],
    )

Compares read like Python: ``t.value(key) == b"x"``, ``t.mod_revision(key) < 10``,
``t.create_revision(key) != 0``. Each builds a ``quorum.state.commands.Compare``.
"""

from __future__ import annotations

from quorum.state.commands import (
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRangeRequest,
    PutRequest,
    RangeRequest,
    RequestOp,
    SortOrder,
    SortTarget,
    TxnRequest,
    prefix_end,
)

__all__ = [
    "CompareSide", "create_revision", "delete", "get", "lease", "mod_revision", "prefix_end",
    "put", "txn", "value", "version",
]


class CompareSide:
    """The left side of a compare; a comparison operator makes the :class:`Compare`."""

    __slots__ = ("key", "range_end", "target")

    def __init__(self, key: bytes, target: CompareTarget, range_end: bytes = b"") -> None:
        self.key = key
        self.target = target
        self.range_end = range_end

    def _make(self, result: CompareResult, operand: int | bytes) -> Compare:
        if (self.target is CompareTarget.VALUE) != isinstance(operand, bytes):
            raise TypeError("VALUE compares take bytes, the others take int")
        return Compare(self.key, self.target, result, operand, self.range_end)

    def __eq__(self, operand: object) -> Compare:  # type: ignore[override]
        return self._make(CompareResult.EQUAL, _operand(operand))

    def __ne__(self, operand: object) -> Compare:  # type: ignore[override]
        return self._make(CompareResult.NOT_EQUAL, _operand(operand))

    def __gt__(self, operand: int | bytes) -> Compare:
        return self._make(CompareResult.GREATER, operand)

    def __lt__(self, operand: int | bytes) -> Compare:
        return self._make(CompareResult.LESS, operand)

    __hash__ = None  # type: ignore[assignment]


def _operand(operand: object) -> int | bytes:
    if isinstance(operand, bool) or not isinstance(operand, int | bytes):
        raise TypeError(f"compare operand must be int or bytes, not {type(operand).__name__}")
    return operand


def version(key: bytes, range_end: bytes = b"") -> CompareSide:
    return CompareSide(key, CompareTarget.VERSION, range_end)


def create_revision(key: bytes, range_end: bytes = b"") -> CompareSide:
    return CompareSide(key, CompareTarget.CREATE, range_end)


def mod_revision(key: bytes, range_end: bytes = b"") -> CompareSide:
    return CompareSide(key, CompareTarget.MOD, range_end)


def value(key: bytes, range_end: bytes = b"") -> CompareSide:
    return CompareSide(key, CompareTarget.VALUE, range_end)


def lease(key: bytes, range_end: bytes = b"") -> CompareSide:
    return CompareSide(key, CompareTarget.LEASE, range_end)


def get(
    key: bytes,
    range_end: bytes = b"",
    *,
    prefix: bool = False,
    revision: int = 0,
    limit: int = 0,
    sort_order: SortOrder = SortOrder.NONE,
    sort_target: SortTarget = SortTarget.KEY,
    keys_only: bool = False,
    count_only: bool = False,
) -> RangeRequest:
    """A range operation; ``prefix=True`` selects every key starting with ``key``."""
    if prefix:
        range_end = prefix_end(key)
    return RangeRequest(
        key, range_end, limit, revision, sort_order, sort_target, keys_only, count_only
    )


def put(key: bytes, value: bytes = b"", *, lease: int = 0, prev_kv: bool = False) -> PutRequest:
    return PutRequest(key, value, lease, prev_kv)


def delete(
    key: bytes, range_end: bytes = b"", *, prefix: bool = False, prev_kv: bool = False
) -> DeleteRangeRequest:
    if prefix:
        range_end = prefix_end(key)
    return DeleteRangeRequest(key, range_end, prev_kv)


def txn(
    compare: list[Compare] | tuple[Compare, ...] = (),
    success: list[RequestOp] | tuple[RequestOp, ...] = (),
    failure: list[RequestOp] | tuple[RequestOp, ...] = (),
) -> TxnRequest:
    """A (possibly nested) transaction operation."""
    return TxnRequest(tuple(compare), tuple(success), tuple(failure))

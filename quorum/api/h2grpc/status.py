"""gRPC status codes (the numbers of the gRPC spec) and the abort exception."""

from __future__ import annotations

from typing import Any

OK = 0
CANCELLED = 1
UNKNOWN = 2
INVALID_ARGUMENT = 3
DEADLINE_EXCEEDED = 4
NOT_FOUND = 5
RESOURCE_EXHAUSTED = 8
FAILED_PRECONDITION = 9
OUT_OF_RANGE = 11
UNIMPLEMENTED = 12
INTERNAL = 13
UNAVAILABLE = 14


def code_number(code: Any) -> int:
    """The number of a status given as an int or a ``grpc.StatusCode`` (whose value is
    ``(number, name)``)."""
    value = getattr(code, "value", code)
    if isinstance(value, tuple):
        value = value[0]
    return int(value)


class AbortError(Exception):
    """Raised by ``Context.abort``: the call ends with this status (as grpc.aio's abort)."""

    def __init__(self, code: Any, details: str = "") -> None:
        super().__init__(details)
        self.code = code_number(code)
        self.details = details

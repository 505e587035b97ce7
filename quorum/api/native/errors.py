"""Errors on the wire: a typed exception becomes an :class:`ErrorResp` and back.

``code`` is the class name in ``quorum.errors`` (stable, readable in captures); ``detail`` is
the one numeric field some errors carry (compact revision, current revision); ``leader_id``
is NotLeader's hint. An unknown code turns into :class:`ServerError` on the client, so an
older client still fails with a typed error when a newer server adds classes.
"""

from __future__ import annotations

import logging

from quorum import errors
from quorum.api.native.messages import ErrorResp

log = logging.getLogger("quorum.api.native")

INTERNAL = "Internal"


def _error_classes() -> dict[str, type[errors.QuorumError]]:
    found: dict[str, type[errors.QuorumError]] = {}
    for name in dir(errors):
        obj = getattr(errors, name)
        if isinstance(obj, type) and issubclass(obj, errors.QuorumError):
            found[obj.__name__] = obj
    return found


_CLASSES = _error_classes()


def error_body(exc: BaseException) -> ErrorResp:
    """The wire form of ``exc``. Non-quorum exceptions are bugs: logged, sent as Internal."""
    if isinstance(exc, errors.QuorumError):
        detail = getattr(exc, "compact_revision", 0) or getattr(exc, "current_revision", 0)
        return ErrorResp(
            code=type(exc).__name__,
            message=str(exc),
            detail=int(detail or 0),
            leader_id=int(getattr(exc, "leader_id", 0) or 0),
            leader_endpoint=str(getattr(exc, "leader_endpoint", "") or ""),
        )
    log.error("internal error while serving a request", exc_info=exc)
    return ErrorResp(code=INTERNAL, message=f"{type(exc).__name__}: {exc}")


def error_from_body(body: ErrorResp) -> errors.QuorumError:
    """Rebuild the typed exception the server reported (ServerError for unknown codes)."""
    cls = _CLASSES.get(body.code)
    if cls is None:
        return errors.ServerError(body.code, body.message)
    if issubclass(cls, errors.NotLeader):
        exc: errors.QuorumError = cls(body.message, leader_id=body.leader_id)
    elif issubclass(cls, errors.RevisionCompacted):
        exc = cls(compact_revision=body.detail, message=body.message)
    elif issubclass(cls, errors.FutureRevision):
        exc = cls(current_revision=body.detail, message=body.message)
    else:
        try:
            exc = cls(body.message)
        except TypeError:  # a class with a richer constructor: keep the code at least
            return errors.ServerError(body.code, body.message)
    if body.leader_endpoint:
        exc.leader_endpoint = body.leader_endpoint  # type: ignore[attr-defined]
    return exc

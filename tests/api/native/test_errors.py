"""Errors survive the trip over the wire with their type and fields."""

from __future__ import annotations

from quorum import errors
from quorum.api.native.errors import error_body, error_from_body
from quorum.api.native.messages import ErrorResp


def roundtrip(exc: BaseException) -> errors.QuorumError:
    return error_from_body(error_body(exc))


def test_not_leader_keeps_its_hint() -> None:
    back = roundtrip(errors.NotLeader("go away", leader_id=3))
    assert isinstance(back, errors.NotLeader) and back.leader_id == 3


def test_revision_errors_keep_their_revision() -> None:
    back = roundtrip(errors.RevisionCompacted(17))
    assert isinstance(back, errors.RevisionCompacted) and back.compact_revision == 17
    fut = roundtrip(errors.FutureRevision(current_revision=9))
    assert isinstance(fut, errors.FutureRevision) and fut.current_revision == 9


def test_plain_state_error_keeps_class_and_message() -> None:
    back = roundtrip(errors.LeaseNotFound())
    assert type(back) is errors.LeaseNotFound
    assert str(back) == errors.LeaseNotFound.default_message


def test_unknown_code_becomes_server_error() -> None:
    back = error_from_body(ErrorResp("FromTheFuture", "new"))
    assert isinstance(back, errors.ServerError) and back.code == "FromTheFuture"


def test_non_quorum_exception_is_internal() -> None:
    body = error_body(ValueError("bug"))
    assert body.code == "Internal" and "bug" in body.message
    assert isinstance(error_from_body(body), errors.ServerError)

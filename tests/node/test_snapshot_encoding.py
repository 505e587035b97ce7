"""The snapshot envelope written piece by piece equals the encoded struct, byte for byte."""

from __future__ import annotations

import msgspec
import pytest

from quorum.node import envelope
from quorum.node.core import _encode_snapshot
from quorum.node.envelope import MemberInfo, SnapshotEnvelope


@pytest.mark.parametrize("size", [0, 1, 255, 256, 65_535, 65_536, 200_001])
def test_spliced_envelope_equals_the_encoded_struct(size: int) -> None:
    members = (MemberInfo(3, "c", "h:3"), MemberInfo(1, "a", "h:1", is_learner=True))
    recent = ((1, (5, 6, 7)), (3, (1 << 40,)))
    state = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    chunks = [state[i : i + 70_000] for i in range(0, len(state), 70_000)]
    calls: list[int] = []
    data = _encode_snapshot(members, chunks, recent, lambda: calls.append(1))
    expected = msgspec.msgpack.encode(SnapshotEnvelope(
        envelope.FORMAT_VERSION, tuple(sorted(members, key=lambda m: m.id)), state, recent))
    assert data == expected
    assert envelope.decode_snapshot(data).state == state
    assert len(calls) == len(chunks)

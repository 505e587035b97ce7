"""The frame decoder: any chunking of a byte stream yields the same frames; limits hold."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quorum.api.native.framing import FrameDecoder, frame
from quorum.errors import FrameTooLarge


@given(
    bodies=st.lists(st.binary(max_size=300), max_size=20),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30),
)
def test_any_chunking_yields_the_frames(bodies: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(frame(b) for b in bodies)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    decoder = FrameDecoder(1024)
    got: list[bytes] = []
    for lo, hi in itertools.pairwise(points):
        got += decoder.feed(stream[lo:hi])
    assert got == bodies
    assert decoder.pending_bytes() == 0


def test_oversized_header_is_refused_before_the_body_arrives() -> None:
    decoder = FrameDecoder(100)
    with pytest.raises(FrameTooLarge) as info:
        decoder.feed((101).to_bytes(4, "big"))  # only the header: no body was buffered
    assert info.value.length == 101 and info.value.limit == 100


def test_limit_is_inclusive() -> None:
    assert FrameDecoder(100).feed(frame(b"x" * 100)) == [b"x" * 100]


def test_truncated_frame_stays_pending() -> None:
    decoder = FrameDecoder(100)
    assert decoder.feed(frame(b"hello")[:-1]) == []
    assert decoder.pending_bytes() == 4 + 4

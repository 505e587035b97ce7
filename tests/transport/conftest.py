"""Every loopback test runs on both event loops: asyncio's and uvloop (production's choice)."""

from __future__ import annotations

import pytest

from .harness import LOOPS


@pytest.fixture(params=LOOPS)
def loop_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)

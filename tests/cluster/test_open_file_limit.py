"""`quorum serve` raises its soft open-file limit to the hard limit before it serves."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, resource
from quorum.cli.serve import raise_open_file_limit
resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard}))
before, after = raise_open_file_limit()
print(json.dumps([before, after, resource.getrlimit(resource.RLIMIT_NOFILE)[0]]))
"""


def _probe(soft: int, hard: int) -> list[int]:
    # in a child process: the limit is process-wide and the test worker keeps its own
    out = subprocess.run([sys.executable, "-c", PROBE.format(soft=soft, hard=hard)],
                         capture_output=True, text=True, check=True, timeout=60)
    result: list[int] = json.loads(out.stdout)
    return result


def test_the_soft_limit_is_raised_to_the_hard_limit() -> None:
    # the child first lowers both limits (allowed without privilege), so the figures do
    # not depend on this machine's own limits
    assert _probe(256, 512) == [256, 512, 512]


def test_a_soft_limit_already_at_the_hard_limit_is_left_alone() -> None:
    assert _probe(512, 512) == [512, 512, 512]

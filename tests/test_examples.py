"""The README's examples run as shown."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_three_rawnodes_example_runs_and_matches_the_readme() -> None:
    example = ROOT / "examples" / "three_rawnodes.py"
    out = subprocess.run([sys.executable, str(example)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert "applied: {1: [b'hello', b'world']" in out.stdout
    readme = (ROOT / "README.md").read_text()
    code = example.read_text()
    body = code.split('"""', 2)[2].strip()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert any(body in b for b in blocks), "README must show examples/three_rawnodes.py"

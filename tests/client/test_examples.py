"""examples/fencing.py runs and shows the stale holder's write rejected (about 1 s: it waits
for a real 1 s lease to expire)."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fencing.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fencing_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fencing_example_rejects_the_stale_holder(capsys: pytest.CaptureFixture[str]) -> None:
    example = _load()
    storage = asyncio.run(asyncio.wait_for(example.main(), 20))
    (token_a, first), (token_b, second) = storage.data
    assert token_b > token_a and first.startswith("A") and second.startswith("B")
    assert "rejected" in capsys.readouterr().out


def test_planted_bug_unfenced_storage_loses_the_update(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the token check the same run lets the stale write land after B's."""
    example = _load()

    def unchecked(self: object, token: int, value: str) -> None:
        self.data.append((token, value))  # type: ignore[attr-defined]

    monkeypatch.setattr(example.FencedStorage, "write", unchecked)
    storage = asyncio.run(asyncio.wait_for(example.main(), 20))
    assert storage.data[-1][1] == "A: stale write"  # B's update was overwritten


def test_quickstart_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    path = EXAMPLE.with_name("quickstart.py")
    spec = importlib.util.spec_from_file_location("quickstart_example", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    asyncio.run(asyncio.wait_for(module.main(), 20))
    out = capsys.readouterr().out
    assert "compare-and-swap succeeded: True" in out and "leader: b'node-a'" in out
    assert out.count("watch: PUT") == 3 and "after revoke: None" in out

"""Old releases, extracted once per test session from tests/upgrade/data."""

from __future__ import annotations

from pathlib import Path

import pytest

from .cluster import FORMAT1_COMMIT, PREBATCH_COMMIT, Code, extract_release


@pytest.fixture(scope="session")
def releases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Code]:
    """commit -> its extracted code tree."""
    dest: Path = tmp_path_factory.mktemp("releases")
    return {c: extract_release(c, dest) for c in (FORMAT1_COMMIT, PREBATCH_COMMIT)}

"""Architecture rules that must hold for every commit.

1. Imports point downward only (see quorum/__init__.py): a layer never imports one above it.
2. The pure layers (quorum.raft, quorum.state) use no clock, socket, thread, OS call, file
   I/O or module-level randomness.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "quorum"

# layer -> the quorum layers it may import (itself always allowed)
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "raft": {"errors"},
    "state": {"errors"},
    "storage": {"errors", "raft"},
    "transport": {"errors", "raft"},
    "node": {"errors", "raft", "state", "storage", "transport"},
    "api": {"errors", "raft", "state", "storage", "transport", "node", "client"},
    "client": {"errors", "raft", "state", "api"},
    "sim": {"errors", "raft", "state", "storage", "transport", "node", "api", "client", "verify"},
    "verify": {"errors", "raft", "state", "client", "api", "transport"},
    "bench": {"errors", "raft", "state", "storage", "transport", "node", "api", "client"},
    "cli": {
        "errors", "raft", "state", "storage", "transport", "node", "api", "client", "sim",
        "verify", "bench",
    },
}
PURE = ("raft", "state")
FORBIDDEN_IN_PURE = {"asyncio", "socket", "time", "os", "threading", "selectors", "subprocess",
                     "multiprocessing", "datetime", "signal"}
RANDOM_CALLS = {"random", "randint", "randrange", "choice", "choices", "shuffle", "uniform",
                "sample", "seed", "getrandbits"}


def _layer_of(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0].removesuffix(".py") if rel.parts else ""


def _modules() -> list[Path]:
    return [p for p in ROOT.rglob("*.py") if "gen" not in p.relative_to(ROOT).parts]


def _imports(tree: ast.AST) -> list[tuple[str, int]]:
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno))
    return found


def layer_violations(path: Path, source: str) -> list[str]:
    layer = _layer_of(path)
    if layer not in ALLOWED:
        return []
    bad = []
    for name, line in _imports(ast.parse(source)):
        parts = name.split(".")
        if parts[0] != "quorum" or len(parts) < 2:
            continue
        target = parts[1]
        if target != layer and target in ALLOWED and target not in ALLOWED[layer]:
            bad.append(f"{path}:{line}: layer '{layer}' imports '{name}'")
    return bad


def purity_violations(path: Path, source: str) -> list[str]:
    tree = ast.parse(source)
    bad = []
    for name, line in _imports(tree):
        if name.split(".")[0] in FORBIDDEN_IN_PURE:
            bad.append(f"{path}:{line}: pure layer imports '{name}'")
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "random":
            names = {a.name for a in node.names}
            if names - {"Random"}:
                bad.append(f"{path}:{node.lineno}: imports module-level random functions")
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "random"
            and node.func.attr in RANDOM_CALLS
        ):
            bad.append(f"{path}:{node.lineno}: calls module-level random.{node.func.attr}()")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "open":
            bad.append(f"{path}:{node.lineno}: pure layer opens a file")
    return bad


def test_imports_point_downward() -> None:
    bad: list[str] = []
    for path in _modules():
        bad += layer_violations(path, path.read_text())
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("layer", PURE)
def test_pure_layers_have_no_io(layer: str) -> None:
    bad: list[str] = []
    for path in (ROOT / layer).rglob("*.py"):
        bad += purity_violations(path, path.read_text())
    assert not bad, "\n".join(bad)


# --- planted violations: the checks above must be able to fail ------------------------------


def test_layer_check_catches_upward_import() -> None:
    fake = ROOT / "raft" / "fake.py"
    assert layer_violations(fake, "from quorum.node import runtime\n")
    assert layer_violations(fake, "import quorum.storage.wal\n")
    assert not layer_violations(fake, "from quorum.errors import RaftError\n")


@pytest.mark.parametrize(
    "source",
    [
        "import time\n",
        "import asyncio\n",
        "from os import path\n",
        "import socket\n",
        "import threading\n",
        "import random\nx = random.random()\n",
        "from random import randint\n",
        "import random\nrandom.shuffle([1])\n",
        "f = open('x')\n",
    ],
)
def test_purity_check_catches_io(source: str) -> None:
    assert purity_violations(ROOT / "raft" / "fake.py", source)


def test_purity_check_allows_injected_random() -> None:
    src = "import random\nrng: random.Random = random.Random(1)\nrng.random()\n"
    assert not purity_violations(ROOT / "raft" / "fake.py", src)

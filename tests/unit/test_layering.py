"""Imports flow one way: cli → sdk → workspace → supervisors → host → images/kernels/network → channel → vmkit → base.

A test walks every ``import`` in ``src/microagent`` (including imports inside
functions) and fails on any that points upward, so the architecture in
README.md ("Layout") stays true.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "microagent"

# Lower rank = lower layer.  A module may import its own package or any lower rank.
RANK = {
    "errors": 0, "fsutil": 0,
    "paths": 1, "digests": 1, "unixsock": 1, "serial_log": 1, "durations": 1,
    "guestinit": 2, "vmkit": 2,
    "runtime_state": 3, "channel": 3,
    "network": 4, "kernels": 4, "images": 4,
    "host": 5,
    "supervisors": 6,
    "workspace": 7,
    "sdk": 8,
    "(root)": 9,
    "cli": 10,
}


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "(root)"


def _edges() -> list[tuple[str, str, str]]:
    out = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC.parent).with_suffix("")
        module = ".".join(rel.parts).removesuffix(".__init__")
        src = _package(module)
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if name == "microagent" or name.startswith("microagent."):
                    out.append((f"{rel}", src, _package(name)))
    return out


def test_every_package_has_a_rank() -> None:
    packages = {p.stem if p.is_file() else p.name for p in SRC.iterdir()
                if (p.suffix == ".py" and p.stem != "__init__") or (p.is_dir() and (p / "__init__.py").exists())}
    assert packages - set(RANK) == set(), "add new top-level modules to RANK"


def test_no_import_points_upward() -> None:
    upward = [f"{where}: {src} imports {dst}" for where, src, dst in _edges()
              if src != dst and RANK[dst] >= RANK[src]]
    assert upward == []

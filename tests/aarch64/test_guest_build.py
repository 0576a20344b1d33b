"""The aarch64 guest init: cross-built by zig cc, static, reproducible.

Two fresh builds in different directories must give the same bytes, and the
result must be a static aarch64 executable (no interpreter, no dynamic
section) — what a kernel can run as PID 1 from the initramfs.
"""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EM_AARCH64 = 183
ET_EXEC = 2
PT_DYNAMIC = 2
PT_INTERP = 3

pytestmark = pytest.mark.slow


def _zig_command() -> str:
    try:
        import ziglang  # noqa: F401  (installed by the [test] extra)
    except ImportError:
        pytest.fail("ziglang is not installed in this venv: pip install -e '.[test]'")
    return f"{sys.executable} -m ziglang"


def _build(build_dir: Path) -> Path:
    # Own caches: a shared zig cache would hand the second build the first one's objects.
    env = {**os.environ, "ZIG_LOCAL_CACHE_DIR": str(build_dir / "zig-local"),
           "ZIG_GLOBAL_CACHE_DIR": str(build_dir / "zig-global")}
    proc = subprocess.run(
        ["make", "-s", "-C", str(REPO / "guest"), "ARCH=aarch64", f"BUILD={build_dir}", f"ZIG={_zig_command()}"],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return build_dir / "microagent-init"


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory) -> tuple[Path, Path]:
    dirs = [tmp_path_factory.mktemp(name) for name in ("first", "second-build")]
    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(_build, dirs)
    return first, second


def _program_header_types(data: bytes) -> list[int]:
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    return [struct.unpack_from("<I", data, phoff + i * phentsize)[0] for i in range(phnum)]


def test_two_builds_give_the_same_bytes(two_builds):
    first, second = (hashlib.sha256(p.read_bytes()).hexdigest() for p in two_builds)
    assert first == second


def test_is_a_static_aarch64_executable(two_builds):
    data = two_builds[0].read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1  # ELF64, little-endian
    e_type, e_machine = struct.unpack_from("<HH", data, 16)
    assert (e_type, e_machine) == (ET_EXEC, EM_AARCH64)
    types = _program_header_types(data)
    assert types, "no program headers"
    assert PT_INTERP not in types and PT_DYNAMIC not in types
    assert b".symtab" not in data  # stripped: symbols would only grow the initramfs

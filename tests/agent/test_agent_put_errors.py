"""A ``put`` that fails says what failed: a directory that exists but takes no new file
is not reported as missing (real guest init, agent mode)."""

from __future__ import annotations

from pathlib import Path

import pytest

from microagent.channel import ChannelConnection, GuestError
from microagent.channel.files import put


def test_put_into_a_directory_that_takes_no_files_is_not_not_found(conn: ChannelConnection) -> None:
    with pytest.raises(GuestError) as ei:  # /proc exists; creating a file in it fails (ENOENT)
        put(conn, "/proc/microagent-put-test", b"x")
    assert ei.value.code == "permission_denied", ei.value
    assert "/proc" in str(ei.value) and "not take new files" in str(ei.value)


def test_put_into_a_missing_directory_is_not_found(conn: ChannelConnection, tmp_path: Path) -> None:
    with pytest.raises(GuestError) as ei:
        put(conn, str(tmp_path / "missing" / "f"), b"x")
    assert ei.value.code == "not_found"

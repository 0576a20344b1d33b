"""``put`` never writes through a symlink a guest user planted (real guest, agent mode).

The threat: an unprivileged process in the guest points a directory of the
destination path at somewhere only root may write, then a host user copies a
file "into its home"; guest init (root) must not follow. Links owned by root
(or by guest init's own user, in agent mode), such as a merged-/usr ``/bin``,
are still followed; a symlink as the last component is replaced, not followed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from microagent.channel import ChannelConnection, GuestError
from microagent.channel.files import put

NOBODY = 65534


def _plant(link: Path, target: Path, owner: int) -> None:
    link.symlink_to(target)
    os.lchown(link, owner, owner)


@pytest.fixture
def as_root() -> None:
    if os.geteuid() != 0:
        print("SKIP: planting a symlink owned by another user needs root (lchown)")
        pytest.skip("needs root to lchown a symlink to another user")


def test_put_refuses_a_foreign_symlink_in_the_path(as_root: None, conn: ChannelConnection, tmp_path: Path) -> None:
    protected = tmp_path / "etc"
    protected.mkdir()
    home = tmp_path / "home"
    home.mkdir()
    _plant(home / "dir", protected, NOBODY)
    with pytest.raises(GuestError) as ei:
        put(conn, str(home / "dir" / "passwd"), b"pwned", mode=0o644)
    assert ei.value.code == "symlink_refused"
    assert list(protected.iterdir()) == []
    with pytest.raises(GuestError) as ei:  # mkdirs does not help either
        put(conn, str(home / "dir" / "sub" / "f"), b"pwned", mkdirs=True)
    assert ei.value.code == "symlink_refused"
    assert list(protected.iterdir()) == []


def test_put_follows_root_owned_links_and_replaces_a_final_link(as_root: None, conn: ChannelConnection,
                                                                  tmp_path: Path) -> None:
    real = tmp_path / "usr" / "bin"
    real.mkdir(parents=True)
    _plant(tmp_path / "bin", Path("usr/bin"), 0)  # merged /usr: relative, root-owned
    assert put(conn, str(tmp_path / "bin" / "tool"), b"#!/bin/sh\n", mode=0o755) == 10
    assert (real / "tool").read_bytes() == b"#!/bin/sh\n"

    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    _plant(real / "last", victim, NOBODY)
    put(conn, str(real / "last"), b"new")
    assert victim.read_bytes() == b"keep"
    assert not (real / "last").is_symlink() and (real / "last").read_bytes() == b"new"


def test_put_mkdirs_walks_without_following(as_root: None, conn: ChannelConnection, tmp_path: Path) -> None:
    assert put(conn, str(tmp_path / "a" / "b" / "c.txt"), b"x", mkdirs=True) == 1
    assert (tmp_path / "a" / "b" / "c.txt").read_bytes() == b"x"
    with pytest.raises(GuestError) as ei:
        put(conn, str(tmp_path / "a" / "b"), b"x")
    assert ei.value.code == "is_directory"

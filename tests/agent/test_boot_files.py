"""Guest init's writer of /etc/hosts and /etc/resolv.conf (``write_file`` in guest/net.c),
compiled with a small C driver that includes net.c, so its static functions are in reach.
With no other process alive (PID 1 has no child) it rewrites an ordinary file in place; it
must never write through a symlink or a hard link the image put there, nor in place while
another process could read the file half-written."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from agent.conftest import build_guest_driver

DRIVER = r'''
#include "net.c"
#include <signal.h>
#include <stdio.h>

int main(int argc, char **argv)
{
    /* argv[1]: the file; argv[2]: the text it must hold; argv[3] "busy": with a child alive */
    pid_t child = argc > 3 ? fork() : -1;
    if (child == 0) {
        pause();
        _exit(0);
    }
    int r = write_file(argv[1], argv[2], strlen(argv[2]));
    if (child > 0) {
        kill(child, SIGKILL);
        waitpid(child, NULL, 0);
    }
    return r == 0 ? 0 : 1;
}
'''

OLD = "127.0.0.1 localhost\n127.0.1.1 run-0123abcd\n"
NEW = "127.0.0.1 localhost\n127.0.1.1 run-89abcdef\n"


@pytest.fixture(scope="module")
def write_guest_file(tmp_path_factory: pytest.TempPathFactory):
    driver = build_guest_driver(tmp_path_factory.mktemp("bootfiles"), DRIVER, "net.c")

    def run(path: Path, text: str, *, busy: bool = False) -> None:
        subprocess.run([str(driver), str(path), text, *(["busy"] if busy else [])], check=True,
                       capture_output=True)
    return run


def written(path: Path, text: str, mode: int = 0o644) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_an_ordinary_file_is_rewritten_in_place(write_guest_file, tmp_path: Path) -> None:
    hosts = written(tmp_path / "hosts", OLD + "10.0.0.1 a-longer-file-than-the-new-one\n")
    inode = hosts.stat().st_ino
    write_guest_file(hosts, NEW)
    assert hosts.read_text() == NEW
    assert hosts.stat().st_ino == inode


def test_with_another_process_alive_the_file_is_replaced_whole(write_guest_file, tmp_path: Path) -> None:
    """After a restore, commands may be running: a reader must see the old file or the new."""
    hosts = written(tmp_path / "hosts", OLD)
    inode = hosts.stat().st_ino
    write_guest_file(hosts, NEW, busy=True)
    assert hosts.read_text() == NEW
    assert hosts.stat().st_ino != inode


def test_a_file_that_already_holds_the_text_is_not_written(write_guest_file, tmp_path: Path) -> None:
    hosts = written(tmp_path / "hosts", NEW)
    os.utime(hosts, ns=(1_000_000_000, 1_000_000_000))
    write_guest_file(hosts, NEW)
    assert hosts.read_text() == NEW
    assert hosts.stat().st_mtime_ns == 1_000_000_000


def test_a_symlink_is_replaced_never_followed(write_guest_file, tmp_path: Path) -> None:
    target = written(tmp_path / "elsewhere", OLD)
    hosts = tmp_path / "hosts"
    hosts.symlink_to(target)
    write_guest_file(hosts, NEW)
    assert not hosts.is_symlink()
    assert hosts.read_text() == NEW
    assert target.read_text() == OLD


def test_a_hard_link_is_replaced_never_written_through(write_guest_file, tmp_path: Path) -> None:
    other = written(tmp_path / "other", OLD)
    hosts = tmp_path / "hosts"
    os.link(other, hosts)
    write_guest_file(hosts, NEW)
    assert hosts.read_text() == NEW
    assert other.read_text() == OLD
    assert hosts.stat().st_ino != other.stat().st_ino


def test_a_fifo_is_replaced_without_blocking(write_guest_file, tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    os.mkfifo(hosts)
    write_guest_file(hosts, NEW)
    assert hosts.is_file()
    assert hosts.read_text() == NEW


def test_a_missing_file_is_created(write_guest_file, tmp_path: Path) -> None:
    write_guest_file(tmp_path / "resolv.conf", "nameserver 10.0.2.3\n")
    assert (tmp_path / "resolv.conf").read_text() == "nameserver 10.0.2.3\n"


def test_text_longer_than_the_files_blocks_is_written_by_rename(write_guest_file, tmp_path: Path) -> None:
    """An empty file has no block to overwrite: a full disk could stop an in-place write
    halfway, so the text goes into a new file renamed over it (all or nothing)."""
    hosts = written(tmp_path / "hosts", "")
    inode = hosts.stat().st_ino
    write_guest_file(hosts, NEW)
    assert hosts.read_text() == NEW
    assert hosts.stat().st_ino != inode


def test_the_file_ends_as_a_new_one_would(write_guest_file, tmp_path: Path) -> None:
    """0644 and, where the test may give files away, root's, whatever the image had."""
    hosts = written(tmp_path / "hosts", OLD, mode=0o600)
    if os.geteuid() == 0:
        os.chown(hosts, 1000, 1000)
    write_guest_file(hosts, NEW)
    st = hosts.stat()
    assert st.st_mode & 0o7777 == 0o644
    if os.geteuid() == 0:
        assert (st.st_uid, st.st_gid) == (0, 0)

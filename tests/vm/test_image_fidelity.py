"""A disk built from a layered OCI image boots, and the guest sees exactly what the layers say.

Route: the test writes an OCI image layout (``oci:PATH``) whose first layer is
the same busybox layer as ``builtin:busybox`` and whose later layers add
files with owners, modes, a setuid bit, a symlink, device nodes, a FIFO, a
whiteout and an opaque directory.  ``oneshot.run("oci:PATH", ...)`` then runs
the whole real pipeline (the fetch half's layout reader and blob store →
layer extraction → mke2fs → debugfs metadata → guest init injected → QEMU
boot) with nothing faked.  A registry is not needed to prove fidelity; the
registry path ends in the same :func:`build_base_disk`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from layer_factory import E, blob_layer, layer, write_oci_layout
from microagent.images import builtin

PASSWD = b"root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000:alice:/home/alice:/bin/sh\n"
GROUP = b"root:x:0:\nalice:x:1000:\n"


@pytest.fixture(scope="module")
def fidelity_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("fidelity")
    blobs = tmp / "blobs"
    try:
        busybox = builtin.find_static_busybox()
    except Exception:
        pytest.skip("busybox-static is not installed")
    base = blob_layer(blobs, builtin._gzip(builtin.busybox_layer_tar(busybox)),
                      "application/vnd.oci.image.layer.v1.tar+gzip")
    l2 = layer(blobs, [
        E("etc/passwd", data=PASSWD), E("etc/group", data=GROUP),
        E("etc/.wh.os-release"),
        E("home/alice/", "dir", mode=0o750, uid=1000, gid=1000),
        E("home/alice/notes", data=b"hi\n", mode=0o640, uid=1000, gid=1000),
        E("usr/local/bin/su-test", data=b"#!/bin/sh\nid -u\n", mode=0o4755),
        E("usr/local/bin/hello", "symlink", link="/bin/busybox"),
        E("srv/null", "char", mode=0o666, major=1, minor=3),
        E("srv/fifo", "fifo", mode=0o620, gid=1000),
        E("opt/data/", "dir"), E("opt/data/old", data=b"old"),
    ], "zstd")
    l3 = layer(blobs, [E("opt/data/", "dir"), E("opt/data/.wh..wh..opq"), E("opt/data/new", data=b"new")])
    return write_oci_layout(tmp / "layout", [base, l2, l3],
                            {"Env": [builtin.PATH_ENV], "Cmd": ["sh"], "User": "alice", "WorkingDir": "/home/alice"})


def test_guest_sees_owners_modes_setuid_symlink_and_whiteouts(vm_state: Path, fidelity_layout: Path) -> None:
    from microagent.workspace.oneshot import run

    script = (
        "stat -c '%n %u:%g %a %F' /home/alice /home/alice/notes /usr/local/bin/su-test /srv/fifo; "
        "stat -c '%n %F %t:%T' /srv/null; "
        "readlink /usr/local/bin/hello; "
        "test -e /etc/os-release && echo os-release-present || echo os-release-whited-out; "
        "ls /opt/data; id -u; id -g; pwd; cat /home/alice/notes"
    )
    outcome = run(f"oci:{fidelity_layout}", ["sh", "-c", script], state_dir=vm_state)
    assert outcome.exit_code == 0, outcome.result.stderr.decode()
    lines = outcome.result.stdout.decode().splitlines()
    assert lines == [
        "/home/alice 1000:1000 750 directory",
        "/home/alice/notes 1000:1000 640 regular file",
        "/usr/local/bin/su-test 0:0 4755 regular file",
        "/srv/fifo 0:1000 620 fifo",
        "/srv/null character special file 1:3",
        "/bin/busybox",
        "os-release-whited-out",
        "new",
        "1000", "1000",  # the image's User "alice" resolved to numeric uid:gid at build time
        "/home/alice",
        "hi",
    ]

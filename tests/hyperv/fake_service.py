"""FakeHcs as a service, and the Hyper-V supervisor executable over it (fakes, NOT HCS).

HCS is a system service: a compute system outlives the supervisor process
that created it.  So for the CLI to drive the Hyper-V backend here, one
:class:`~hyperv.fake_hcs.FakeHcs` lives in a long-running process::

    python fake_service.py hcs --socket S [--guest-init PATH]

serving its :class:`~microagent.supervisors.hyperv.hcs.HcsApi` methods, one
JSON line in and one out per connection, single-threaded (the guests it
starts die with the thread that started them); :class:`RemoteHcs` is the
client.  And::

    python fake_service.py supervisor

is ``microagent-hyperv-supervisor`` on Linux: the real
:class:`~microagent.supervisors.hyperv.backend.HyperVBackend` behind the
real :func:`~microagent.supervisors.base.serve`, with ``RemoteHcs`` (socket
from ``MICROAGENT_TEST_FAKE_HCS``) and :class:`~hyperv.fake_hcs.FakeGuestHelpers`.
Tests point the CLI at it with ``MICROAGENT_HYPERV_SUPERVISOR`` (:func:`install`).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/: ``hyperv.fake_hcs``, ``applevf.fake_vz``

SOCKET_ENV = "MICROAGENT_TEST_FAKE_HCS"
#: what :class:`RemoteHcs` may call
METHODS = ("grant_vm_access", "create_compute_system", "start_compute_system", "shutdown_compute_system",
           "terminate_compute_system", "pause_compute_system", "resume_compute_system", "save_compute_system",
           "get_compute_system_properties", "host_version", "ensure_network", "create_endpoint",
           "delete_endpoint", "guest_socket", "guest_log", "names", "document")


def install(path: Path) -> Path:
    """A wrapper executable at ``path``: the supervisor, run by this interpreter."""
    path.write_text(f"#!/bin/sh\nexec {sys.executable} {Path(__file__).resolve()} supervisor \"$@\"\n")
    path.chmod(0o700)
    return path


class RemoteHcs:
    """:class:`~microagent.supervisors.hyperv.hcs.HcsApi` (and the fake's extras) over the service's socket."""

    def __init__(self, path: str) -> None:
        self.path = path

    def _call(self, method: str, *args: Any) -> Any:
        from microagent.errors import MicroagentError
        from microagent.unixsock import connect_any_length

        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(60)
            connect_any_length(sock, self.path)
            sock.sendall(json.dumps({"method": method, "args": list(args)}).encode() + b"\n")
            answer = json.loads(sock.makefile("rb").readline())
        if not answer.get("ok"):
            raise MicroagentError.from_dict(answer["error"])
        return answer.get("result")

    def __getattr__(self, method: str) -> Any:
        if method not in METHODS:
            raise AttributeError(method)
        return lambda *args: self._call(method, *args)

    def guest_socket(self, vm_id: str) -> Path:
        return Path(self._call("guest_socket", vm_id))


def serve_hcs(path: str, guest_init: str | None) -> int:
    from hyperv.fake_hcs import FakeHcs

    from microagent.errors import MicroagentError
    from microagent.unixsock import listen_unix

    hcs = FakeHcs(guest_init=guest_init)
    hcs.document = lambda key: hcs.documents.get(key)  # type: ignore[attr-defined]
    os.chdir(os.path.dirname(os.path.abspath(path)))  # listen_unix binds in the cwd
    listener = socket.socket(fileno=listen_unix(os.path.basename(path), backlog=16).detach())  # for accept()
    try:
        while True:
            conn, _ = listener.accept()
            with conn:
                request = json.loads(conn.makefile("rb").readline() or b"{}")
                method = request.get("method")
                if method == "stop":
                    conn.sendall(b'{"ok": true}\n')
                    return 0
                try:
                    if method not in METHODS:
                        raise MicroagentError(f"the fake HCS has no method {method!r}")
                    result = getattr(hcs, method)(*request.get("args", []))
                    answer = {"ok": True, "result": str(result) if isinstance(result, Path) else result}
                except MicroagentError as err:
                    answer = {"ok": False, "error": err.to_dict()}
                conn.sendall(json.dumps(answer).encode() + b"\n")
    finally:
        hcs.close()
        listener.close()
        os.unlink(os.path.basename(path))


def serve_supervisor() -> int:
    from hyperv.fake_hcs import FakeGuestHelpers

    from microagent.fsutil import restrict_umask
    from microagent.supervisors.base import serve
    from microagent.supervisors.hyperv.backend import HyperVBackend

    remote = RemoteHcs(os.environ[SOCKET_ENV])
    restrict_umask()
    return serve(lambda: HyperVBackend(hcs=remote, helpers=FakeGuestHelpers(remote)),  # type: ignore[arg-type]
                 "windows-hyperv", argv=[])


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="what", required=True)
    hcs = sub.add_parser("hcs")
    hcs.add_argument("--socket", required=True)
    hcs.add_argument("--guest-init", default=None)
    sub.add_parser("supervisor")
    args, _ = parser.parse_known_args()
    if args.what == "hcs":
        return serve_hcs(args.socket, args.guest_init)
    return serve_supervisor()


if __name__ == "__main__":
    sys.exit(main())

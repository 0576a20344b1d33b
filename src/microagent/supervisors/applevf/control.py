"""The vmhost control protocol: one JSON line in, one JSON line out.

The per-workspace host process (:mod:`~microagent.supervisors.applevf.vmhost`)
listens on ``<runtime>/vmhost.sock``.  A client connects, sends one request
line and reads one answer line; the connection then closes, except after a
successful ``connect-vsock``, when it becomes a raw byte stream to the guest's
vsock port.

Requests (``op`` and its fields) and answers:

=================  ============================  ===========================================
op                 fields                        answer (besides ``"ok": true``)
=================  ============================  ===========================================
``state``                                        ``state`` (ours), ``vzState`` (the VZ enum),
                                                 ``pid``, ``severed``, ``bridges``, ``framework``,
                                                 ``canStop``/``canPause``/``canResume``/``canRequestStop``
``stop``                                         after ``stopWithCompletionHandler:``; the
                                                 host process then exits
``request-stop``                                 after ``requestStopWithError:`` (asks the guest)
``pause``                                        after ``pauseWithCompletionHandler:``
``resume``                                       after ``resumeWithCompletionHandler:``
``save``           ``path``                      after ``saveMachineStateToURL:completionHandler:``
                                                 (the VM must be paused; it stays paused)
``sever``                                        ``severed``: names of the host paths cut
``connect-vsock``  ``port``                      then raw bytes to/from the guest's port
=================  ============================  ===========================================

A failure is ``{"ok": false, "error": {"kind", "message", "remediation"}}``
with the kinds of :mod:`microagent.errors`.  This module holds the client
side and the names shared by both ends; no PyObjC.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from microagent.errors import MicroagentError, Transient
from microagent.unixsock import connect_any_length

CONTROL_SOCKET = "vmhost.sock"
VSOCK_SOCKET = "vsock.sock"
OPS = ("state", "stop", "request-stop", "pause", "resume", "save", "sever", "connect-vsock")
#: the prefix of the vmhost's fatal-error line in its log (then the error as JSON)
ERROR_LINE = "microagent-vmhost: error: "
#: ``VZVirtualMachineState`` values (VZVirtualMachine.h) and our names for them
VZ_STATES = {0: "stopped", 1: "running", 2: "paused", 3: "error", 4: "starting", 5: "pausing",
             6: "resuming", 7: "stopping", 8: "saving", 9: "restoring"}
MAX_LINE = 64 * 1024


def read_line(sock: socket.socket) -> bytes:
    """One ``\\n``-terminated line, read byte-exactly (nothing after it is consumed)."""
    line = bytearray()
    while not line.endswith(b"\n"):
        b = sock.recv(1)
        if not b:
            break
        line += b
        if len(line) > MAX_LINE:
            raise ValueError("control line too long")
    return bytes(line)


def open_control(runtime_dir: Path, op: str, timeout: float = 10.0, **fields: Any) -> tuple[socket.socket, dict[str, Any]]:
    """Send one request; return the still-open socket and the answer.

    :raises Transient: the host process does not answer (absent, gone, timing out).
    :raises MicroagentError: the host process answered ``ok: false`` (its kind).
    """
    path = str(runtime_dir / CONTROL_SOCKET)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        connect_any_length(sock, path)
        sock.sendall(json.dumps({"op": op, **fields}).encode() + b"\n")
        line = read_line(sock)
    except (OSError, ValueError) as exc:
        sock.close()
        raise Transient(f"the apple-vf host process does not answer on {path}: {exc}",
                        "inspect the workspace; stop or kill it if its vmhost is stuck") from exc
    try:
        answer = json.loads(line)
        if not isinstance(answer, dict):
            raise ValueError("not an object")
    except ValueError:
        sock.close()
        raise Transient(f"the apple-vf host process closed {path} without answering {op!r}",
                        "see vmm.log in the runtime directory") from None
    if not answer.get("ok"):
        sock.close()
        raise MicroagentError.from_dict(answer.get("error") or {"message": f"vmhost refused {op}"})
    return sock, answer


def call(runtime_dir: Path, op: str, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
    """One request/answer exchange (the connection is closed after it).

    :raises Transient: no answer.
    :raises MicroagentError: the host process refused (its kind).
    """
    sock, answer = open_control(runtime_dir, op, timeout, **fields)
    sock.close()
    return answer


def last_error(log_path: Path) -> MicroagentError | None:
    """The fatal error the host process logged last, if any."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if line.startswith(ERROR_LINE):
            try:
                return MicroagentError.from_dict(json.loads(line[len(ERROR_LINE):]))
            except ValueError:
                return None
    return None

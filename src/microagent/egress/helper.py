"""The channel helper with the egress proxy in it.

``python -m microagent.egress.helper --egress-policy PATH --egress-workspace NAME
ROUTER-ARGS...`` is :mod:`microagent.channel.router` plus, once the guest
answered, a client of its own control endpoint that keeps a few ``accept``
sessions open in the guest (docs/protocol.md, "accept").  Each connection a
guest process makes to the proxy port arrives on one of them and is served by
:func:`microagent.egress.proxy.serve` in a thread of its own; at most
``MAX_CONNECTIONS`` at once (more wait in the guest's listen backlog).

The policy is re-read from ``egress.json`` when it changes, so ``microagent
egress set`` applies to the next connection without a restart.  Secret values
arrive on ``secrets.sock`` and stay in this process's memory
(:mod:`microagent.egress.vault`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from microagent.channel import router
from microagent.channel.connect import open_channel
from microagent.channel.errors import ProtocolError
from microagent.channel.forward import ForwardStream
from microagent.channel.mux import (
    ChannelConnection,
    ControlEvent,
    ErrorEvent,
    ExitEvent,
)
from microagent.egress.audit import LOG_NAME, AuditLog
from microagent.egress.policy import PROXY_PORT, EgressPolicy
from microagent.egress.proxy import serve
from microagent.egress.vault import SOCKET_NAME, Vault
from microagent.egress.vault import serve as serve_vault
from microagent.errors import MicroagentError

#: accept sessions kept open in the guest, waiting for connections
WAITERS = 4
#: proxied connections at once
MAX_CONNECTIONS = 64


class PolicyFile:
    """The policy in ``egress.json``, re-read when the file changes; unreadable means deny all."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._policy = EgressPolicy()
        self._lock = threading.Lock()

    def __call__(self) -> EgressPolicy:
        with self._lock:
            try:
                st = os.stat(self.path)
                stamp = (st.st_mtime_ns, st.st_size)
                if stamp != self._stamp:
                    self._policy = EgressPolicy.from_wire(json.loads(self.path.read_text()))
                    self._stamp = stamp
            except (OSError, ValueError, MicroagentError) as exc:
                router.log(f"egress policy {self.path} unreadable ({exc}); refusing everything")
                self._policy, self._stamp = EgressPolicy(), None
            return self._policy


def accept_one(conn: ChannelConnection, port: int) -> ForwardStream:
    """Open an ``accept`` session and wait (without limit) for the guest connection it takes."""
    session = conn.open_session("accept", port=port)
    try:
        while True:
            event = session.recv(None)
            if isinstance(event, ControlEvent) and isinstance(event.body.get("accepted"), dict):
                return ForwardStream(session, port, "127.0.0.1")
            if isinstance(event, ErrorEvent):
                raise event.to_exception()
            if isinstance(event, ExitEvent):
                raise ProtocolError("accept session ended before a connection")
    except BaseException:
        session.close()
        raise


def start_accept_pool(control: str, policy: PolicyFile, audit: AuditLog, port: int = PROXY_PORT,
                      vault: Vault | None = None) -> None:
    """Serve the guest's proxy port from threads of this process (daemon: they die with it)."""
    slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
    value_of = vault.value if vault is not None else (lambda name: None)

    def handle(stream: ForwardStream) -> None:
        try:
            serve(stream, policy, audit, value_of)
        finally:
            slots.release()

    def wait_loop(conn: ChannelConnection) -> None:
        while True:
            slots.acquire()
            try:
                stream = accept_one(conn, port)
            except Exception as exc:  # noqa: BLE001 - channel gone or guest refused: stop this waiter
                slots.release()
                router.log(f"egress proxy: stopped accepting: {exc}")
                return
            threading.Thread(target=handle, args=(stream,), daemon=True, name="egress-conn").start()

    def run() -> None:
        try:
            conn = open_channel(control, hello_timeout=10.0)
        except Exception as exc:  # noqa: BLE001 - logged; the guest's clients then see refused connections
            router.log(f"egress proxy cannot start: {exc}")
            return
        if "accept" not in conn.features:
            router.log("egress proxy: this guest init has no accept sessions; rebuild the guest")
            return
        router.log(f"egress proxy serving guest port {port}")
        for i in range(WAITERS):
            threading.Thread(target=wait_loop, args=(conn,), daemon=True, name=f"egress-accept-{i}").start()

    threading.Thread(target=run, daemon=True, name="egress").start()


def add_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """The egress options of a helper: without ``--egress-policy`` (when not ``required``), no proxy."""
    parser.add_argument("--egress-policy", required=required, default="",
                        help="egress.json in the runtime directory")
    parser.add_argument("--egress-workspace", required=required, default="",
                        help="the workspace name, for the audit log")
    parser.add_argument("--egress-port", type=int, default=PROXY_PORT)


def prepare(args: argparse.Namespace, secrets: bool = True) -> Callable[[str], None] | None:
    """What a helper does for egress before its guest answers (the vault's socket, when
    ``secrets``); returns what starts the proxy on the control endpoint once it answered
    (``None`` without ``--egress-policy``)."""
    if not args.egress_policy:
        return None
    path = Path(args.egress_policy).resolve()  # the router changes directory
    audit = AuditLog(path.parent / LOG_NAME, args.egress_workspace)
    vault = Vault() if secrets else None
    if vault is not None:
        serve_vault(path.parent / SOCKET_NAME, vault, router.log)  # before the guest can ask for a value
    return lambda endpoint: start_accept_pool(endpoint, PolicyFile(path), audit, args.egress_port, vault)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="microagent-egress-helper", add_help=False)
    add_arguments(parser)
    args, rest = parser.parse_known_args(argv)
    return router.main(rest, on_ready=prepare(args))


if __name__ == "__main__":
    sys.exit(main())

"""The per-workspace helper of a Hyper-V workspace (one detached process).

It does what QEMU/Firecracker plus :mod:`microagent.channel.router` do on
Linux, because an HCS compute system has no host process of its own:

- holds the one guest channel connection (a Hyper-V socket to the service
  of vsock port 1024) and serves it to many clients with the very same
  :class:`~microagent.channel.router.Router`;
- bridges published TCP ports over the channel (``forward`` sessions);
- copies COM1 (the guest's ``ttyS0``, served by Hyper-V on a named pipe)
  into ``serial.log``;
- with ``--egress-policy``, serves the guest's egress proxy port
  (:mod:`microagent.egress.helper`'s accept pool and proxy; docs/egress.md).
  Without the secrets vault: its socket is AF_UNIX with a peer-uid check,
  which Windows lacks, so the backend refuses secrets.

The control endpoint is ``control.sock`` (AF_UNIX) where Python has it.
CPython on Windows has no AF_UNIX (python/cpython#77589), so there the
helper listens on loopback TCP and writes ``control.json``
(``{"transport": "tcp", "address": "127.0.0.1:PORT"}``) atomically once the
guest answered; see docs/backends/windows-hyperv.md for what that means.

Run as ``python -m microagent.supervisors.hyperv.helper --vm-id GUID ...``.
``--guest unix:PATH`` replaces the Hyper-V socket (tests, agent mode).
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading
import time

from microagent.channel.router import log, serve_guest


def _serial_copier(pipe: str, log_path: str, deadline: float) -> None:
    """Append everything the COM1 pipe yields to ``serial.log`` (retrying the open until ``deadline``)."""
    while True:
        try:
            src = open(pipe, "rb", buffering=0)
            break
        except OSError:
            if time.monotonic() > deadline:
                log(f"cannot open serial pipe {pipe}")
                return
            time.sleep(0.1)
    with src, open(log_path, "ab", buffering=0) as dst:
        while True:
            try:
                data = src.read(4096)
            except OSError:
                return
            if not data:
                return
            dst.write(data)


def _connect(args: argparse.Namespace, deadline: float) -> socket.socket:
    if args.guest:
        from microagent.channel.router import connect_guest

        return connect_guest(args.guest, deadline)
    from microagent.errors import ChannelClosed
    from microagent.supervisors.hyperv import hvsock
    from microagent.supervisors.hyperv.documents import service_id

    while True:
        try:
            return hvsock.connect(args.vm_id, service_id(args.port), timeout=2.0)
        except ChannelClosed:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _publish(control: str, specs: list[str]) -> None:
    """Bridge ``host:hostPort:guestPort`` listeners over our own control endpoint."""

    def run() -> None:
        from microagent.channel.connect import open_channel
        from microagent.channel.forward import PortPublisher, bind_listener as bind_tcp

        try:
            # control is the Unix socket or the control.json of loopback TCP + token
            conn = open_channel(control, name="publish", hello_timeout=10.0)
            for spec in specs:
                host, host_port, guest_port = spec.rsplit(":", 2)
                PortPublisher(conn, int(guest_port), listener=bind_tcp(host, int(host_port)))
                log(f"publishing {host}:{host_port} -> guest port {guest_port}")
        except Exception as exc:  # noqa: BLE001 - logged; the supervisor sees it in helper.log
            log(f"cannot start publishers: {exc}")

    threading.Thread(target=run, daemon=True, name="publish").start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="microagent-hyperv-helper")
    parser.add_argument("--vm-id", default="", help="the compute system's RuntimeId (Hyper-V socket VmId)")
    parser.add_argument("--port", type=int, default=1024, help="guest vsock port of the channel")
    parser.add_argument("--guest", default="", help="unix:PATH instead of the Hyper-V socket (tests)")
    parser.add_argument("--listen", required=True, help="control socket path (control.json beside it on Windows)")
    parser.add_argument("--hello-timeout", type=float, default=60.0)
    parser.add_argument("--serial-pipe", default="", help=r"\\.\pipe\... of COM1")
    parser.add_argument("--serial-log", default="serial.log")
    parser.add_argument("--publish", action="append", default=[], metavar="HOST:HOSTPORT:GUESTPORT")
    parser.add_argument("--generation", type=int, default=None,
                        help="the restore generation to hand guest init in HELLO (after a snapshot restore)")
    from microagent.egress.helper import add_arguments, prepare

    add_arguments(parser, required=False)
    args = parser.parse_args(argv)
    egress = prepare(args, secrets=False)
    deadline = time.monotonic() + args.hello_timeout
    if args.serial_pipe:
        threading.Thread(target=_serial_copier, args=(args.serial_pipe, args.serial_log, deadline),
                         daemon=True, name="serial").start()
    try:
        guest = _connect(args, deadline)
    except Exception as exc:  # noqa: BLE001 - reported through our exit status and log
        log(f"cannot connect to the guest: {exc}")
        return 3
    transport = "unix" if hasattr(socket, "AF_UNIX") else "tcp"  # Windows' CPython has no AF_UNIX

    def after_ready(endpoint: str) -> None:
        if args.publish:
            _publish(endpoint, args.publish)
        if egress is not None:
            egress(endpoint)

    return serve_guest(guest, args.listen, deadline, transport=transport, after_ready=after_ready,
                       generation=args.generation)

if __name__ == "__main__":
    sys.exit(main())

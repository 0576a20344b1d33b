"""The per-workspace host process of the apple-vf backend: it owns the VM.

A ``VZVirtualMachine`` lives inside the process that created it, and every
supervisor invocation is a short-lived process, so each running workspace has
one detached host process::

    python -m microagent.supervisors.applevf.vmhost --state-dir D --name N

It runs with the runtime directory ``D/N`` as its working directory, reads the
VM spec ``applevf.json`` (:func:`~microagent.supervisors.applevf.vzconfig.vm_spec`),
builds and validates the configuration, creates the VM on the main dispatch
queue, starts it, and then serves, single-threaded, from one loop that
alternates a short ``select`` over its sockets with a slice of the main run
loop (which runs the main queue: VZ's completion handlers and delegate calls):

- ``vmhost.sock``: the control protocol of :mod:`.control` (state, stop,
  request-stop, pause, resume, sever, connect-vsock);
- ``vsock.sock``: every connection accepted here is bridged, byte for byte,
  to the guest's vsock port 1024 (``VZVirtioSocketDevice
  connectToPort:completionHandler:``).  Until guest init listens, the
  connection is held and the connect is retried every 100 ms (bytes the
  client sends meanwhile are buffered), so the channel helper connects it as
  ``unix:<runtime>/vsock.sock`` exactly like QEMU's chardev socket.

Lifecycle: SIGTERM (``stop``) → ``stopWithCompletionHandler:`` → exit 0 (at
most :data:`STOP_WAIT_S` later even without the completion); SIGKILL (``kill``)
ends the VM with the process; the guest powering off (``halt``: the delegate's
``guestDidStopVirtualMachine:``) → exit 0; ``virtualMachine:didStopWithError:``
→ the error logged, exit 1.  A fatal error is logged as one line
``microagent-vmhost: error: {json}`` (:data:`.control.ERROR_LINE`), which the
supervisor turns back into the same error kind; exit status 2.

Snapshots (macOS 14+): the ``save`` control op writes the paused VM's
state with ``saveMachineStateToURL:completionHandler:`` (the VM stays
paused; the supervisor pauses and resumes it around the op).  ``--restore
FILE`` creates the VM from the same configuration and, instead of starting
it, restores it with ``restoreMachineStateFromURL:completionHandler:`` and
resumes it; everything after that (``running``, ``vsock.sock``) is as after
a start.  Both first ask the configuration ``validateSaveRestoreSupportWithError:``.

``--check`` builds and validates the configuration of ``--spec FILE`` and
prints the outcome as JSON; ``--probe`` prints what this Mac allows and the
framework's version (what a snapshot records and a restore compares).  Both
exist so that only this process (run by the signed interpreter) ever touches
Virtualization.framework.

The OS API arrives through a *platform*: ``vz`` (the ``Virtualization``
module), ``run_slice(seconds)``, ``make_delegate(on_guest_stop,
on_error)`` and ``framework_version()``.  :mod:`.runloop` supplies the macOS one; tests pass
``tests/applevf/fake_vz.py``'s.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from microagent.errors import Conflict, MicroagentError, Permanent, PolicyDenied, Transient, Unsupported
from microagent.supervisors.applevf import control
from microagent.supervisors.applevf.vzconfig import SPEC_FILE, build_configuration
from microagent.unixsock import listen_unix

STOP_WAIT_S = 3.0
CONNECT_RETRY_S = 0.1
#: bytes buffered per direction of a bridge before we stop reading the other side
BRIDGE_CAP = 1024 * 1024
READ_CHUNK = 64 * 1024


class Platform(Protocol):
    """What the host process needs from the OS (see the module docstring)."""

    vz: Any

    def run_slice(self, seconds: float) -> None: ...

    def make_delegate(self, on_guest_stop: Callable[[], None], on_error: Callable[[str], None]) -> Any: ...

    def framework_version(self) -> str:
        """The OS and Virtualization.framework version a saved state is bound to."""
        ...


def log(message: str) -> None:
    sys.stderr.write(f"{time.strftime('%H:%M:%S')} microagent-vmhost: {message}\n")
    sys.stderr.flush()


def log_error(err: MicroagentError) -> None:
    sys.stderr.write(control.ERROR_LINE + json.dumps(err.to_dict()) + "\n")
    sys.stderr.flush()


def _describe(err: Any) -> str:
    describe = getattr(err, "localizedDescription", None)
    return str(describe()) if callable(describe) else str(err)


@dataclass(eq=False)
class Bridge:
    """One host client bridged to one guest vsock connection."""

    client: socket.socket
    port: int
    #: ``connect-vsock`` over the control socket: answer once, never retry
    one_shot: bool = False
    conn: Any = None  # the VZVirtioSocketConnection (kept alive while in use)
    fd: int | None = None
    connecting: bool = False
    retry_at: float = 0.0
    closed: bool = False
    to_guest: bytearray = field(default_factory=bytearray)
    to_client: bytearray = field(default_factory=bytearray)
    client_events: int = 0
    guest_events: int = 0


class VMHost:
    """The VM, its sockets and its loop."""

    def __init__(self, platform: Platform, spec: dict[str, Any], restore: str | None = None) -> None:
        self.platform = platform
        self.vz = platform.vz
        self.spec = spec
        #: a saved-state file to restore instead of booting
        self.restore = restore
        self.sel = selectors.DefaultSelector()
        self.vm: Any = None
        self.config: Any = None
        self.delegate: Any = None  # VZ holds its delegate weakly: keep it here
        self.state = "starting"
        self.severed: list[str] = []
        self.bridges: list[Bridge] = []
        self.control: socket.socket | None = None
        self.vsock: socket.socket | None = None
        self.exit_code: int | None = None
        self.term_requested = False
        self.stop_deadline: float | None = None

    # --- sockets ---------------------------------------------------------------

    @staticmethod
    def _listen(name: str) -> socket.socket:
        """Listen on ``name`` in the cwd (bind a temp name, rename: it appears ready)."""
        sock = socket.socket(fileno=listen_unix(name, backlog=16).detach())  # for accept()
        sock.setblocking(False)
        return sock

    def _set_events(self, fileobj: Any, events: int, data: Any) -> None:
        try:
            key = self.sel.get_key(fileobj)
        except (KeyError, ValueError):
            key = None
        if key is None:
            if events:
                self.sel.register(fileobj, events, data)
        elif events:
            if key.events != events:
                self.sel.modify(fileobj, events, data)
        else:
            self.sel.unregister(fileobj)

    def _unregister(self, fileobj: Any) -> None:
        try:
            self.sel.unregister(fileobj)
        except (KeyError, ValueError):
            pass

    # --- the VM ----------------------------------------------------------------

    def boot(self) -> None:
        """Build, validate, create and start the VM (the start completes later).

        :raises MicroagentError: the configuration was refused.
        """
        self.control = self._listen(control.CONTROL_SOCKET)
        self.sel.register(self.control, selectors.EVENT_READ, ("control",))
        self.config = config = build_configuration(self.vz, self.spec)
        if self.restore is not None:
            self._check_save_restore("restore")
        self.vm = self.vz.VZVirtualMachine.alloc().initWithConfiguration_(config)
        self.delegate = self.platform.make_delegate(self._guest_stopped, self._stopped_with_error)
        self.vm.setDelegate_(self.delegate)
        if self.restore is not None:
            restore = getattr(self.vm, "restoreMachineStateFromURL_completionHandler_", None)
            if restore is None:
                raise Unsupported("restoring a VM needs macOS 14 or later", "start the workspace without a snapshot")
            restore(self.vz.NSURL.fileURLWithPath_(self.restore), self._restored)
            log(f"restoring {self.spec.get('name', '?')} from {self.restore}")
            return
        self.vm.startWithCompletionHandler_(self._started)
        log(f"starting {self.spec.get('name', '?')}: {self.spec['commandLine']}")

    def _check_save_restore(self, what: str) -> None:
        """:raises Permanent: the framework says this configuration cannot be saved or restored."""
        validate = getattr(self.config, "validateSaveRestoreSupportWithError_", None)
        if validate is None:
            raise Unsupported(f"{what} of a VM's state needs macOS 14 or later", "use a cold start")
        ok, err = validate(None)
        if not ok:
            raise Permanent(f"Virtualization.framework cannot {what} this VM's state: {_describe(err)}",
                            "snapshots need a configuration the framework can save (see docs/backends/apple-vf.md)")

    def _restored(self, err: Any) -> None:
        if err is not None:
            self._fatal(Permanent(f"Virtualization.framework could not restore the VM from {self.restore}: "
                                  f"{_describe(err)}", "take a new snapshot after a cold start"))
            return
        log("restored; resuming")
        self.vm.resumeWithCompletionHandler_(self._started)

    def _started(self, err: Any) -> None:
        if err is not None:
            verb = "resume the restored" if self.restore is not None else "start the"
            self._fatal(MicroagentError(f"Virtualization.framework could not {verb} VM: {_describe(err)}",
                                        "see serial.log and vmm.log in the runtime directory"))
            return
        self.vsock = self._listen(control.VSOCK_SOCKET)
        self.sel.register(self.vsock, selectors.EVENT_READ, ("vsock",))
        self.state = "running"  # only now: "running" promises that vsock.sock accepts
        log("running")

    def _guest_stopped(self) -> None:
        log("the guest stopped the VM (power-off)")
        self.state = "stopped"
        self.exit_code = 0

    def _stopped_with_error(self, message: str) -> None:
        self.state = "error"
        self._fatal(MicroagentError(f"the VM stopped with an error: {message}", "see serial.log"), code=1)

    def _fatal(self, err: MicroagentError, code: int = 2) -> None:
        log_error(err)
        if self.exit_code is None:
            self.exit_code = code

    def vz_state(self) -> str:
        if self.vm is None:
            return self.state
        return control.VZ_STATES.get(int(self.vm.state()), f"unknown({int(self.vm.state())})")

    def _begin_stop(self, reason: str) -> None:
        """Stop the VM (SIGTERM or ``stop``); exit when it completes or after :data:`STOP_WAIT_S`."""
        if self.stop_deadline is not None:
            return
        self.stop_deadline = time.monotonic() + STOP_WAIT_S
        log(f"stopping ({reason})")
        if self.vm is not None and bool(self.vm.canStop()):
            self.vm.stopWithCompletionHandler_(self._stop_done)
        else:
            self.state = "stopped"
            self.exit_code = 0

    def _stop_done(self, err: Any) -> None:
        if err is not None:
            log(f"stopWithCompletionHandler reported: {_describe(err)}")
        self.state = "stopped"
        self.exit_code = 0

    # --- control requests ------------------------------------------------------

    def _reply(self, sock: socket.socket, answer: dict[str, Any], *, keep: bool = False) -> None:
        try:
            sock.setblocking(True)
            sock.settimeout(5.0)
            sock.sendall(json.dumps(answer).encode() + b"\n")
        except OSError:
            keep = False
        if not keep:
            sock.close()

    def _refuse(self, sock: socket.socket, err: MicroagentError) -> None:
        self._reply(sock, {"ok": False, "error": err.to_dict()})

    def state_answer(self) -> dict[str, Any]:
        vm = self.vm
        flags = {}
        if vm is not None:
            flags = {name: bool(getattr(vm, name)()) for name in ("canStop", "canPause", "canResume",
                                                                 "canRequestStop")}
        return {"ok": True, "state": self.state, "vzState": self.vz_state(), "pid": os.getpid(),
                "severed": list(self.severed), "bridges": sum(1 for b in self.bridges if b.fd is not None),
                "framework": self.platform.framework_version(), **flags}

    def handle_request(self, sock: socket.socket, request: dict[str, Any]) -> None:
        op = request.get("op")
        vm = self.vm
        if op == "state":
            self._reply(sock, self.state_answer())
        elif op == "stop":
            self._begin_stop("stop request")
            self._reply(sock, {"ok": True, "state": "stopping"})
        elif vm is None or self.state == "starting":
            self._refuse(sock, Conflict(f"the VM is {self.vz_state()}; {op} needs a running VM"))
        elif op == "request-stop":
            if not bool(vm.canRequestStop()):
                self._refuse(sock, Conflict(f"the VM is {self.vz_state()} and cannot be asked to stop"))
                return
            ok, err = vm.requestStopWithError_(None)
            if ok:
                self._reply(sock, {"ok": True})
            else:
                self._refuse(sock, Transient(f"requestStop failed: {_describe(err)}", "use stop or kill"))
        elif op in ("pause", "resume"):
            able = vm.canPause() if op == "pause" else vm.canResume()
            if not bool(able):
                self._refuse(sock, Conflict(f"the VM is {self.vz_state()} and cannot {op}"))
                return

            def done(err: Any, sock: socket.socket = sock, op: str = op) -> None:
                if err is not None:
                    self._refuse(sock, Transient(f"{op} failed: {_describe(err)}"))
                    return
                self.state = "paused" if op == "pause" else "running"
                self._reply(sock, {"ok": True, "state": self.state, "vzState": self.vz_state()})

            if op == "pause":
                vm.pauseWithCompletionHandler_(done)
            else:
                vm.resumeWithCompletionHandler_(done)
        elif op == "save":
            self._save(sock, request.get("path"))
        elif op == "sever":
            self._reply(sock, {"ok": True, "severed": self.sever()})
        elif op == "connect-vsock":
            port = request.get("port")
            if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 2**32:
                self._refuse(sock, MicroagentError("connect-vsock needs an integer port"))
            elif self.severed:
                self._refuse(sock, PolicyDenied("the workspace is quarantined: its vsock paths are severed",
                                                "stop or kill it"))
            else:
                self._add_bridge(sock, port, one_shot=True)
        else:
            self._refuse(sock, MicroagentError(f"unknown op {op!r}; use one of {', '.join(control.OPS)}"))

    def _save(self, sock: socket.socket, path: Any) -> None:
        """``saveMachineStateToURL:``; the framework refuses a VM that is not paused."""
        if not isinstance(path, str) or not os.path.isabs(path):
            self._refuse(sock, MicroagentError("save needs an absolute path"))
            return
        try:
            self._check_save_restore("save")
        except MicroagentError as err:
            self._refuse(sock, err)
            return
        save = getattr(self.vm, "saveMachineStateToURL_completionHandler_", None)
        if save is None:
            self._refuse(sock, Unsupported("saving a VM's state needs macOS 14 or later"))
            return
        was = self.vz_state()

        def done(err: Any, sock: socket.socket = sock) -> None:
            if err is None:
                log(f"saved the VM's state to {path}")
                self._reply(sock, {"ok": True, "path": path, "vzState": self.vz_state()})
            elif was != "paused":
                self._refuse(sock, Conflict(f"Virtualization.framework refused to save the {was} VM: "
                                            f"{_describe(err)}", "pause it first"))
            else:
                self._refuse(sock, Permanent(f"Virtualization.framework could not save the VM: {_describe(err)}",
                                             "check the free space of the state directory's disk; see vmm.log"))

        save(self.vz.NSURL.fileURLWithPath_(path), done)

    def sever(self) -> list[str]:
        """Cut every host path into the guest; the VM itself keeps running."""
        severed = []
        if self.vsock is not None:
            self._unregister(self.vsock)
            self.vsock.close()
            self.vsock = None
            try:
                os.unlink(control.VSOCK_SOCKET)
            except FileNotFoundError:
                pass
            severed.append(control.VSOCK_SOCKET)
        if self.bridges:
            severed.append(f"{len(self.bridges)} vsock connection(s)")
        for bridge in list(self.bridges):
            self._close_bridge(bridge)
        for device in list(self.vm.networkDevices() or []) if self.vm is not None else []:
            device.setAttachment_(None)  # VZNetworkDevice.attachment = nil: link down (macOS 13+)
            severed.append("network")
        self.severed = severed or ["nothing left"]
        log(f"severed: {', '.join(self.severed)}")
        return severed

    # --- bridges ---------------------------------------------------------------

    def _add_bridge(self, client: socket.socket, port: int, *, one_shot: bool) -> None:
        client.setblocking(False)
        bridge = Bridge(client=client, port=port, one_shot=one_shot)
        self.bridges.append(bridge)
        self._connect(bridge)
        self._update(bridge)

    def _connect(self, bridge: Bridge) -> None:
        devices = list(self.vm.socketDevices() or [])
        if not devices:
            self._fail_bridge(bridge, "the VM has no virtio socket device")
            return
        bridge.connecting = True

        def done(connection: Any, err: Any, bridge: Bridge = bridge) -> None:
            bridge.connecting = False
            if bridge.closed:
                if connection is not None:
                    connection.close()
                return
            if connection is None:
                if bridge.one_shot:
                    self._fail_bridge(bridge, f"guest vsock port {bridge.port} refused: {_describe(err)}")
                else:
                    bridge.retry_at = time.monotonic() + CONNECT_RETRY_S
                return
            bridge.conn = connection
            bridge.fd = int(connection.fileDescriptor())
            os.set_blocking(bridge.fd, False)
            if bridge.one_shot:
                bridge.to_client += json.dumps({"ok": True, "port": bridge.port}).encode() + b"\n"
            self._update(bridge)

        devices[0].connectToPort_completionHandler_(bridge.port, done)

    def _fail_bridge(self, bridge: Bridge, message: str) -> None:
        self._unregister(bridge.client)
        bridge.closed = True
        self.bridges.remove(bridge)
        self._refuse(bridge.client, Transient(message, "retry once guest init logs 'channel ready'"))

    def _update(self, b: Bridge) -> None:
        if b.closed:
            return
        want_client = (selectors.EVENT_READ if len(b.to_guest) < BRIDGE_CAP else 0) | (
            selectors.EVENT_WRITE if b.to_client else 0)
        self._set_events(b.client, want_client, ("client", b))
        if b.fd is not None:
            want_guest = (selectors.EVENT_READ if len(b.to_client) < BRIDGE_CAP else 0) | (
                selectors.EVENT_WRITE if b.to_guest else 0)
            self._set_events(b.fd, want_guest, ("guest", b))

    def _close_bridge(self, b: Bridge) -> None:
        if b.closed:
            return
        b.closed = True
        self._unregister(b.client)
        b.client.close()
        if b.fd is not None:
            self._unregister(b.fd)
        if b.conn is not None:
            b.conn.close()  # closes the connection's file descriptor
        if b in self.bridges:
            self.bridges.remove(b)

    def _pump(self, b: Bridge, side: str, events: int) -> None:
        if events & selectors.EVENT_WRITE:
            out = b.to_client if side == "client" else b.to_guest
            try:
                n = b.client.send(out) if side == "client" else os.write(b.fd, out)  # type: ignore[arg-type]
                del out[:n]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self._close_bridge(b)
                return
        if events & selectors.EVENT_READ:
            try:
                data = b.client.recv(READ_CHUNK) if side == "client" else os.read(b.fd, READ_CHUNK)  # type: ignore[arg-type]
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                data = b""
            if data == b"":
                self._flush_quietly(b)
                self._close_bridge(b)
                return
            if data:
                (b.to_guest if side == "client" else b.to_client).extend(data)
        self._update(b)

    def _flush_quietly(self, b: Bridge) -> None:
        """Best effort: hand over what is buffered before a bridge closes."""
        try:
            b.client.settimeout(1.0)
        except OSError:
            pass
        for out, write in ((b.to_client, b.client.send),
                           (b.to_guest, (lambda d: os.write(b.fd, d)) if b.fd is not None else None)):  # type: ignore[arg-type]
            if write is None:
                continue
            try:
                while out:
                    del out[:write(bytes(out))]
            except OSError:
                pass

    # --- the loop --------------------------------------------------------------

    def _accept(self, listener: socket.socket, kind: str) -> None:
        try:
            sock, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        if kind == "vsock":
            self._add_bridge(sock, int(self.spec.get("vsockPort", 1024)), one_shot=False)
        else:
            sock.setblocking(False)
            self.sel.register(sock, selectors.EVENT_READ, ("request", sock, bytearray()))

    def _read_request(self, sock: socket.socket, buf: bytearray) -> None:
        try:
            data = sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._unregister(sock)
            sock.close()
            return
        buf += data
        if b"\n" not in buf and len(buf) < control.MAX_LINE:
            return
        self._unregister(sock)
        line = bytes(buf).split(b"\n", 1)[0]
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("not an object")
        except ValueError:
            self._refuse(sock, MicroagentError("control request is not a JSON object line"))
            return
        self.handle_request(sock, request)

    def step(self, timeout: float = 0.01) -> None:
        """One turn of the loop: sockets, then the run loop, then timers."""
        for key, events in self.sel.select(timeout=timeout):
            data = key.data
            if data[0] in ("control", "vsock"):
                self._accept(key.fileobj, data[0])  # type: ignore[arg-type]
            elif data[0] == "request":
                self._read_request(data[1], data[2])
            else:
                bridge = data[1]
                if not bridge.closed:
                    self._pump(bridge, data[0], events)
        self.platform.run_slice(0.002)
        now = time.monotonic()
        for bridge in list(self.bridges):
            if bridge.fd is None and not bridge.connecting and not bridge.closed and bridge.retry_at <= now:
                self._connect(bridge)
        if self.term_requested:
            self._begin_stop("SIGTERM")
        if self.stop_deadline is not None and now >= self.stop_deadline and self.exit_code is None:
            log(f"the VM did not report stopped within {STOP_WAIT_S:.0f}s; exiting (the VM ends with us)")
            self.exit_code = 0

    def serve(self) -> int:
        while self.exit_code is None:
            self.step()
        return self.exit_code

    def _drain(self, b: Bridge) -> None:
        """Before a bridge closes for good: take what the guest already sent (e.g. the
        ``EXIT`` of a ``shutdown`` session written just before power-off)."""
        if b.fd is None:
            return
        for _ in range(64):
            try:
                data = os.read(b.fd, READ_CHUNK)
            except OSError:
                break
            if not data:
                break
            b.to_client.extend(data)
        self._flush_quietly(b)

    def close(self) -> None:
        for bridge in list(self.bridges):
            self._drain(bridge)
            self._close_bridge(bridge)
        for sock, name in ((self.vsock, control.VSOCK_SOCKET), (self.control, control.CONTROL_SOCKET)):
            if sock is not None:
                self._unregister(sock)
                sock.close()
                try:
                    os.unlink(name)
                except FileNotFoundError:
                    pass
        self.vsock = self.control = None


# --- entry points ----------------------------------------------------------------


def probe(platform: Platform) -> dict[str, Any]:
    """What this Mac allows (``host`` shows it)."""
    vz = platform.vz
    cls = vz.VZVirtualMachineConfiguration
    mib = 1024 * 1024
    return {"ok": True, "supported": bool(vz.VZVirtualMachine.isSupported()),
            "framework": platform.framework_version(),
            "cpuCount": [int(cls.minimumAllowedCPUCount()), int(cls.maximumAllowedCPUCount())],
            "memoryMiB": [-(-int(cls.minimumAllowedMemorySize()) // mib), int(cls.maximumAllowedMemorySize()) // mib]}


def main(argv: list[str] | None = None, platform: Platform | None = None) -> int:
    parser = argparse.ArgumentParser(prog="microagent-applevf-vmhost")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--spec", help="the VM spec (default: <state-dir>/<name>/applevf.json)")
    parser.add_argument("--restore", metavar="FILE", help="restore this saved state instead of booting")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="build and validate the configuration; print JSON")
    mode.add_argument("--probe", action="store_true", help="print what this Mac allows as JSON")
    args = parser.parse_args(argv)
    runtime = Path(args.state_dir) / args.name
    try:
        if platform is None:
            from microagent.supervisors.applevf.runloop import load_platform

            platform = load_platform()
        if args.probe:
            print(json.dumps(probe(platform)))
            return 0
        spec = json.loads(Path(args.spec or runtime / SPEC_FILE).read_text())
        if args.check:
            build_configuration(platform.vz, spec)
            print(json.dumps({"ok": True}))
            return 0
    except MicroagentError as err:
        if args.check or args.probe:
            print(json.dumps({"ok": False, "error": err.to_dict()}))
            return 1
        log_error(err)
        return 2
    except (OSError, ValueError) as exc:
        unreadable = MicroagentError(f"cannot read the VM spec: {exc}", "start the workspace through its supervisor")
        if args.check or args.probe:
            print(json.dumps({"ok": False, "error": unreadable.to_dict()}))
            return 1
        log_error(unreadable)
        return 2

    os.chdir(runtime)
    host = VMHost(platform, spec, restore=args.restore)

    def on_term(*_: Any) -> None:
        host.term_requested = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        host.boot()
        code = host.serve()
    except MicroagentError as err:
        log_error(err)
        code = 2
    finally:
        host.close()
    log(f"exiting with status {code}")
    return code


if __name__ == "__main__":
    sys.exit(main())

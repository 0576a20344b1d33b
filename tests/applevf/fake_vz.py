"""``FakeVirtualization``: a recording fake of PyObjC's ``Virtualization`` module.

It stands in for the ``vz`` seam of :mod:`microagent.supervisors.applevf.vzconfig`
and :mod:`~microagent.supervisors.applevf.vmhost`.  It is a *fake*: nothing
here talks to Virtualization.framework.  What it holds to:

- only the selectors the real classes have (as PyObjC spells them: ``initWithURL_readOnly_error_``,
  ``setCPUCount_``, ``connectToPort_completionHandler_``, ...): anything else is
  an ``AttributeError``, so a misspelt selector fails here as it would on macOS;
- ``*_error_`` selectors return ``(result, error)`` like PyObjC's out-parameters;
- every constructor, property set and method call is appended to
  ``FakeVirtualization.calls`` as ``(class, selector, args)``;
  :func:`describe` renders a configuration as a plain tree for assertions;
- the VM (``VZVirtualMachine``) follows ``VZVirtualMachineState`` (starting →
  running → pausing/paused/resuming → stopping → stopped, or error), and its
  completion handlers and delegate calls run only inside
  :meth:`FakePlatform.run_slice`, the way VZ's run on the main queue;
- a *guest*: when ``guest_init`` is set, starting the VM starts
  ``microagent-init --agent --listen <cwd>/fake-guest.sock`` (its output
  goes to the serial port's write handle, i.e. ``serial.log``), and
  ``VZVirtioSocketDevice.connectToPort_completionHandler_`` connects to it.
  When that process exits (a ``shutdown`` session), the fake VM stops and
  calls the delegate's ``guestDidStopVirtualMachine_``, as a guest power-off
  does.  Pause/resume SIGSTOP/SIGCONT it.  The guest is a host process, so
  it runs under a seccomp filter (:func:`sandbox_guest`) that makes setting
  the clock, the hostname and the kernel's random pool succeed without
  doing anything: a ``restore`` session must not change *this* host;
- save/restore (macOS 14+): ``saveMachineStateToURL_completionHandler_``
  refuses unless the VM is paused (the VM stays as it was), and writes a
  saved-state file: the configuration's hardware (:meth:`FakeVirtualization.hardware`:
  CPUs, memory, devices, not file paths), a stand-in for memory and a
  checksum.  ``restoreMachineStateFromURL_completionHandler_`` needs a VM
  that was never started; it refuses a file it cannot read, a corrupt one,
  or one saved from another hardware configuration, and leaves the VM
  paused.  The restored guest is a *new* guest init process: nothing of
  the saved guest's memory (its processes) comes back;
  ``validateSaveRestoreSupportWithError_`` answers ``save_restore_error``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import signal
import socket
import subprocess
from typing import Any, Callable

STOPPED, RUNNING, PAUSED, ERROR, STARTING, PAUSING, RESUMING, STOPPING, SAVING, RESTORING = range(10)
GUEST_SOCKET = "fake-guest.sock"
SAVE_FORMAT = "fake-vz-saved-state/1"
#: the error codes the fake reports (its own numbers; the names follow VZError.h's VZErrorCode)
VZ_ERROR_INVALID_STATE, VZ_ERROR_SAVE, VZ_ERROR_RESTORE = 3, 12, 13

# seccomp: syscall numbers (x86_64, aarch64) whose effect a guest may ask for but a host
# process must not have: clock_settime, settimeofday, sethostname; ioctl is filtered by request
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_SWALLOWED = {"x86_64": (227, 164, 170), "aarch64": (112, 170, 161)}
_IOCTL = {"x86_64": 16, "aarch64": 29}
_RANDOM_IOCTLS = (0x40085203, 0x5207)  # RNDADDENTROPY, RNDRESEEDCRNG


def _seccomp_program(machine: str) -> list[tuple[int, int, int, int]]:
    """A classic-BPF filter: the calls above return 0 without running; the rest run."""
    ld, jeq, ret = 0x20, 0x15, 0x06
    allow, swallow = 0x7FFF0000, 0x00050000  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO | 0
    swallowed = _SWALLOWED[machine]
    prog: list[tuple[int, int, int, int]] = [(ld, 0, 0, 4), (jeq, 1, 0, _AUDIT_ARCH[machine]), (ret, 0, 0, allow),
                                             (ld, 0, 0, 0)]
    # after these: [JEQ ioctl] [LD arg1] [JEQ r1] [JEQ r2] [RET allow] [RET swallow]
    n = len(swallowed)
    for i, nr in enumerate(swallowed):
        prog.append((jeq, (n - i - 1) + 5, 0, nr))  # to RET swallow
    prog.append((jeq, 0, 3, _IOCTL[machine]))  # not ioctl: to RET allow
    prog.append((ld, 0, 0, 24))  # args[1], low 32 bits (little endian)
    prog.append((jeq, 2, 0, _RANDOM_IOCTLS[0]))
    prog.append((jeq, 1, 0, _RANDOM_IOCTLS[1]))
    prog += [(ret, 0, 0, allow), (ret, 0, 0, swallow)]
    return prog


def sandbox_guest() -> None:
    """In the fake guest's child before exec: die with the vmhost, and swallow the calls that
    would set this host's clock, hostname or random pool (the guest is a host process)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 1, 38, 22, 2
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    machine = platform.machine()
    if machine not in _AUDIT_ARCH:
        raise OSError(f"the fake guest's sandbox knows x86_64 and aarch64, not {machine}")

    class Insn(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                    ("k", ctypes.c_uint32)]

    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(Insn))]

    insns = _seccomp_program(machine)
    array = (Insn * len(insns))(*[Insn(*i) for i in insns])
    prog = Prog(len(insns), ctypes.cast(array, ctypes.POINTER(Insn)))
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 or \
            libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "cannot install the fake guest's seccomp filter")


def start_fake_guest(guest_init: str, socket_path: str, out: Any) -> subprocess.Popen[bytes]:
    """The real guest init in agent mode, listening on ``socket_path``, sandboxed."""
    try:
        os.unlink(socket_path)
    except FileNotFoundError:
        pass
    return subprocess.Popen([guest_init, "--agent", "--listen", os.path.abspath(socket_path)],
                            stdin=subprocess.DEVNULL, stdout=out, stderr=out, preexec_fn=sandbox_guest)


def saved_state(hardware: Any) -> bytes:
    """A fake saved-state file: its JSON body, then a line with the body's sha256."""
    body = json.dumps({"format": SAVE_FORMAT, "hardware": hardware, "memory": os.urandom(32).hex()},
                      sort_keys=True).encode()
    return body + b"\n" + hashlib.sha256(body).hexdigest().encode() + b"\n"


def read_saved_state(path: str) -> tuple[Any, str]:
    """``(hardware, "")`` from a fake saved-state file, or ``(None, why it is unusable)``."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        return None, f"the saved state file cannot be opened: {exc.strerror}"
    body, _, rest = data.partition(b"\n")
    if hashlib.sha256(body).hexdigest().encode() != rest.strip():
        return None, "the saved state file is corrupt"
    try:
        doc = json.loads(body)
    except ValueError:
        return None, "the saved state file is corrupt"
    if not isinstance(doc, dict) or doc.get("format") != SAVE_FORMAT:
        return None, "the saved state file is not a saved state"
    return doc.get("hardware"), ""


class FakeNSError:
    def __init__(self, message: str, code: int = 1) -> None:
        self.message = message
        self.code = code

    def localizedDescription(self) -> str:
        return self.message


class FakeObject:
    """An instance of a fake class: selectors from its class's table only."""

    def __init__(self, vz: "FakeVirtualization", cls: "FakeClass") -> None:
        self._vz = vz
        self._cls = cls
        self._init: tuple[str, tuple[Any, ...]] | None = None
        self._props: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"<fake {self._cls.name} {self._init} {self._props}>"

    def __getattr__(self, selector: str) -> Callable[..., Any]:
        cls = self.__dict__.get("_cls")
        if cls is None:
            raise AttributeError(selector)
        if selector in cls.inits:
            def init(*args: Any) -> Any:
                self._vz.calls.append((cls.name, selector, args))
                self._init = (selector, args)
                return (self, None) if selector.endswith("_error_") else self
            return init
        if selector.startswith("set") and selector.endswith("_"):
            prop = _prop_name(selector[3:-1], cls._props)
            if prop is not None:
                def setter(value: Any) -> None:
                    self._vz.calls.append((cls.name, selector, (value,)))
                    self._props[prop] = value
                return setter
        if selector in cls._props:
            return lambda: self._props.get(selector)
        if selector in cls.methods:
            return lambda *args: cls.methods[selector](self, *args)
        raise AttributeError(f"{cls.name} has no selector {selector!r} (fake of the real API)")


def _prop_name(cap: str, props: tuple[str, ...]) -> str | None:
    for prop in props:
        if prop[0].upper() + prop[1:] == cap:
            return prop
    return None


class FakeClass:
    """A fake ObjC class: ``alloc()`` plus the class methods in its table."""

    def __init__(self, vz: "FakeVirtualization", name: str, inits: tuple[str, ...] = ("init",),
                 props: tuple[str, ...] = (), methods: dict[str, Callable[..., Any]] | None = None,
                 class_methods: dict[str, Callable[..., Any]] | None = None,
                 factory: Callable[["FakeVirtualization", "FakeClass"], FakeObject] | None = None) -> None:
        self.vz, self.name, self.inits, self._props = vz, name, inits, props
        self.methods = methods or {}
        self.class_methods = class_methods or {}
        self.factory = factory or FakeObject

    def alloc(self) -> FakeObject:
        return self.factory(self.vz, self)

    def __getattr__(self, selector: str) -> Callable[..., Any]:
        methods = self.__dict__.get("class_methods") or {}
        if selector in methods:
            def call(*args: Any) -> Any:
                self.vz.calls.append((self.name, selector, args))
                return methods[selector](*args)
            return call
        raise AttributeError(f"{self.__dict__.get('name')} has no class selector {selector!r} (fake)")


# --- the VM ---------------------------------------------------------------------


class FakeConnection:
    """A ``VZVirtioSocketConnection``: a connected fd to the guest."""

    def __init__(self, sock: socket.socket, port: int) -> None:
        self._sock = sock
        self.port = port
        self.closed = False

    def fileDescriptor(self) -> int:
        return self._sock.fileno()

    def destinationPort(self) -> int:
        return self.port

    def close(self) -> None:
        self.closed = True
        self._sock.close()


class FakeVM(FakeObject):
    """``VZVirtualMachine``."""

    def __init__(self, vz: "FakeVirtualization", cls: FakeClass) -> None:
        super().__init__(vz, cls)
        self._state = STOPPED
        self._delegate: Any = None
        self.guest: subprocess.Popen[bytes] | None = None
        self.socket_device = FakeSocketDevice(self)
        self.network_devices: list[FakeObject] = []
        self.started_once = False
        vz.vms.append(self)

    # initWithConfiguration_ comes through the table; keep the devices
    def initWithConfiguration_(self, config: FakeObject) -> "FakeVM":
        self._vz.calls.append(("VZVirtualMachine", "initWithConfiguration_", (config,)))
        self._init = ("initWithConfiguration_", (config,))
        self.config = config
        self.network_devices = [FakeNetworkDevice(self._vz, nic) for nic in config._props.get("networkDevices", [])]
        return self

    def _call(self, selector: str, *args: Any) -> None:
        self._vz.calls.append(("VZVirtualMachine", selector, args))

    def state(self) -> int:
        return self._state

    def canStart(self) -> bool:
        return self._state in (STOPPED, ERROR)

    def canStop(self) -> bool:
        return self._state in (RUNNING, PAUSED, STARTING)

    def canPause(self) -> bool:
        return self._state == RUNNING

    def canResume(self) -> bool:
        return self._state == PAUSED

    def canRequestStop(self) -> bool:
        return self._state == RUNNING

    def setDelegate_(self, delegate: Any) -> None:
        self._call("setDelegate_", delegate)
        self._delegate = delegate

    def delegate(self) -> Any:
        return self._delegate

    def socketDevices(self) -> list[Any]:
        return [self.socket_device]

    def networkDevices(self) -> list[Any]:
        return list(self.network_devices)

    def startWithCompletionHandler_(self, handler: Callable[[Any], None]) -> None:
        self._call("startWithCompletionHandler_", handler)
        self._state = STARTING
        self.started_once = True

        def finish() -> None:
            if self._vz.start_error:
                self._state = ERROR
                handler(FakeNSError(self._vz.start_error))
                return
            self._boot_guest()
            self._state = RUNNING
            handler(None)
        self._vz.later(finish)

    def _serial_fd(self) -> int | None:
        ports = self.config._props.get("serialPorts") or []
        if not ports:
            return None
        handle = ports[0]._props["attachment"]._init[1][1]  # (reading, writing)
        return int(handle.fileDescriptor())

    def _boot_guest(self) -> None:
        serial = self._serial_fd()
        boot = self.config._props["bootLoader"]
        if serial is not None:
            os.write(serial, f"[fake-vz] booting {boot._init[1][0].path} {boot._props.get('commandLine')}\n".encode())
        if self._vz.guest_init:
            out = serial if serial is not None else subprocess.DEVNULL
            self.guest = start_fake_guest(self._vz.guest_init, GUEST_SOCKET, out)

    # --- save and restore (macOS 14+) -------------------------------------------------

    def saveMachineStateToURL_completionHandler_(self, url: "FakeURL", handler: Callable[[Any], None]) -> None:
        self._call("saveMachineStateToURL_completionHandler_", url, handler)
        if self._state != PAUSED:
            self._vz.later(lambda: handler(FakeNSError(
                "the virtual machine must be paused to save its state", VZ_ERROR_INVALID_STATE)))
            return
        self._state = SAVING

        def finish() -> None:
            self._state = PAUSED  # saved or not, the VM stays paused
            try:
                fd = os.open(url.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(saved_state(self._vz.hardware(self.config)))
            except OSError as exc:
                handler(FakeNSError(f"the saved state file cannot be written: {exc.strerror}", VZ_ERROR_SAVE))
                return
            handler(None)
        self._vz.later(finish)

    def restoreMachineStateFromURL_completionHandler_(self, url: "FakeURL",
                                                       handler: Callable[[Any], None]) -> None:
        self._call("restoreMachineStateFromURL_completionHandler_", url, handler)
        if self._state != STOPPED or self.started_once:
            self._vz.later(lambda: handler(FakeNSError(
                "only a virtual machine that was never started can be restored", VZ_ERROR_INVALID_STATE)))
            return
        self._state = RESTORING

        def finish() -> None:
            hardware, why = read_saved_state(url.path)
            if not why and hardware != self._vz.hardware(self.config):
                why = "the saved state is incompatible with the virtual machine's configuration"
            if why:
                self._state = STOPPED
                handler(FakeNSError(why, VZ_ERROR_RESTORE))
                return
            serial = self._serial_fd()
            if serial is not None:
                os.write(serial, f"[fake-vz] restored from {url.path} (a new guest init stands in)\n".encode())
            if self._vz.guest_init:
                self.guest = start_fake_guest(self._vz.guest_init, GUEST_SOCKET,
                                              serial if serial is not None else subprocess.DEVNULL)
                self.guest.send_signal(signal.SIGSTOP)
            self.started_once = True
            self._state = PAUSED
            handler(None)
        self._vz.later(finish)

    def stopWithCompletionHandler_(self, handler: Callable[[Any], None]) -> None:
        self._call("stopWithCompletionHandler_", handler)
        self._state = STOPPING

        def finish() -> None:
            self._end_guest()
            self._state = STOPPED
            handler(None)
        self._vz.later(finish)

    def requestStopWithError_(self, error: Any) -> tuple[bool, Any]:
        self._call("requestStopWithError_", error)
        return True, None

    def pauseWithCompletionHandler_(self, handler: Callable[[Any], None]) -> None:
        self._call("pauseWithCompletionHandler_", handler)
        self._state = PAUSING

        def finish() -> None:
            if self.guest is not None:
                self.guest.send_signal(signal.SIGSTOP)
            self._state = PAUSED
            handler(None)
        self._vz.later(finish)

    def resumeWithCompletionHandler_(self, handler: Callable[[Any], None]) -> None:
        self._call("resumeWithCompletionHandler_", handler)
        self._state = RESUMING

        def finish() -> None:
            if self.guest is not None:
                self.guest.send_signal(signal.SIGCONT)
            self._state = RUNNING
            handler(None)
        self._vz.later(finish)

    def _end_guest(self) -> None:
        if self.guest is not None and self.guest.poll() is None:
            self.guest.send_signal(signal.SIGCONT)
            self.guest.kill()
            self.guest.wait()

    def poll_guest(self) -> None:
        """A guest that exited on its own powered the VM off."""
        if self._state == RUNNING and self.guest is not None and self.guest.poll() is not None:
            self._state = STOPPED
            self._call("guestDidStop")
            if self._delegate is not None:
                self._delegate.guestDidStopVirtualMachine_(self)


class FakeSocketDevice:
    """``VZVirtioSocketDevice``."""

    def __init__(self, vm: FakeVM) -> None:
        self.vm = vm

    def connectToPort_completionHandler_(self, port: int, handler: Callable[[Any, Any], None]) -> None:
        self.vm._call("connectToPort_completionHandler_", port, handler)

        def finish() -> None:
            if self.vm._state != RUNNING or self.vm.guest is None or port != 1024:
                handler(None, FakeNSError(f"connection to port {port} refused", 54))
                return
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(GUEST_SOCKET)
            except OSError as exc:
                sock.close()
                handler(None, FakeNSError(f"connection to port {port} refused: {exc}", 54))
                return
            conn = FakeConnection(sock, port)
            self.vm._vz.connections.append(conn)
            handler(conn, None)
        self.vm._vz.later(finish)


class FakeNetworkDevice:
    """``VZVirtioNetworkDevice`` (runtime), whose ``attachment`` can be set to None."""

    def __init__(self, vz: "FakeVirtualization", config: FakeObject) -> None:
        self.vz = vz
        self._attachment = config._props.get("attachment")

    def attachment(self) -> Any:
        return self._attachment

    def setAttachment_(self, value: Any) -> None:
        self.vz.calls.append(("VZVirtioNetworkDevice", "setAttachment_", (value,)))
        self._attachment = value


class FakeURL:
    def __init__(self, path: str) -> None:
        self._path = path

    @property
    def path(self) -> str:
        return self._path

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FakeURL) and other._path == self._path

    def __repr__(self) -> str:
        return f"file://{self._path}"


class FakeFileHandle(FakeObject):
    def fileDescriptor(self) -> int:
        assert self._init is not None
        return int(self._init[1][0])


# --- the module -------------------------------------------------------------------


class FakeVirtualization:
    """The fake ``Virtualization`` module (plus the few Foundation names PyObjC re-exports)."""

    MIB = 1024 * 1024

    def __init__(self, *, guest_init: str | None = None, cpu_range: tuple[int, int] = (1, 8),
                 memory_mib_range: tuple[int, int] = (128, 16384), supported: bool = True) -> None:
        self.calls: list[tuple[str, str, tuple[Any, ...]]] = []
        self.pending: list[Callable[[], None]] = []
        self.vms: list[FakeVM] = []
        self.connections: list[FakeConnection] = []
        self.guest_init = guest_init
        self.start_error = ""
        self.validation_error = ""
        self.save_restore_error = ""
        #: what the vmhost records as the framework's version (a fake's, never macOS's)
        self.framework_version = "fake-vz 1 (not Virtualization.framework)"
        self.cpu_range = cpu_range
        self.memory_range = (memory_mib_range[0] * self.MIB, memory_mib_range[1] * self.MIB)
        vz = self

        def cls(name: str, **kw: Any) -> FakeClass:
            return FakeClass(vz, name, **kw)

        def validate(config: FakeObject, error: Any) -> tuple[bool, Any]:
            vz.calls.append(("VZVirtualMachineConfiguration", "validateWithError_", (error,)))
            if vz.validation_error:
                return False, FakeNSError(vz.validation_error)
            return True, None

        def validate_save_restore(config: FakeObject, error: Any) -> tuple[bool, Any]:
            vz.calls.append(("VZVirtualMachineConfiguration", "validateSaveRestoreSupportWithError_", (error,)))
            if vz.save_restore_error:
                return False, FakeNSError(vz.save_restore_error)
            return True, None

        self.VZVirtualMachineConfiguration = cls(
            "VZVirtualMachineConfiguration",
            props=("CPUCount", "memorySize", "bootLoader", "storageDevices", "socketDevices", "networkDevices",
                   "serialPorts", "entropyDevices", "memoryBalloonDevices", "directorySharingDevices",
                   "consoleDevices", "platform"),
            methods={"validateWithError_": validate,
                     "validateSaveRestoreSupportWithError_": validate_save_restore},
            class_methods={"minimumAllowedCPUCount": lambda: vz.cpu_range[0],
                           "maximumAllowedCPUCount": lambda: vz.cpu_range[1],
                           "minimumAllowedMemorySize": lambda: vz.memory_range[0],
                           "maximumAllowedMemorySize": lambda: vz.memory_range[1]})
        self.VZLinuxBootLoader = cls("VZLinuxBootLoader", inits=("initWithKernelURL_",),
                                     props=("kernelURL", "initialRamdiskURL", "commandLine"))
        self.VZDiskImageStorageDeviceAttachment = cls(
            "VZDiskImageStorageDeviceAttachment",
            inits=("initWithURL_readOnly_error_", "initWithURL_readOnly_cachingMode_synchronizationMode_error_"))
        self.VZVirtioBlockDeviceConfiguration = cls("VZVirtioBlockDeviceConfiguration",
                                                    inits=("initWithAttachment_",), props=("blockDeviceIdentifier",))
        self.VZVirtioSocketDeviceConfiguration = cls("VZVirtioSocketDeviceConfiguration")
        self.VZSharedDirectory = cls("VZSharedDirectory", inits=("initWithURL_readOnly_",),
                                     props=("URL", "readOnly"))
        self.VZSingleDirectoryShare = cls("VZSingleDirectoryShare", inits=("initWithDirectory_",),
                                          props=("directory",))
        self.VZVirtioFileSystemDeviceConfiguration = cls("VZVirtioFileSystemDeviceConfiguration",
                                                         inits=("initWithTag_",), props=("tag", "share"))
        self.VZVirtioNetworkDeviceConfiguration = cls("VZVirtioNetworkDeviceConfiguration",
                                                      props=("attachment", "MACAddress"))
        self.VZNATNetworkDeviceAttachment = cls("VZNATNetworkDeviceAttachment")
        self.VZBridgedNetworkDeviceAttachment = cls("VZBridgedNetworkDeviceAttachment", inits=("initWithInterface_",))
        self.VZMACAddress = cls("VZMACAddress", inits=("initWithString_",),
                                class_methods={"randomLocallyAdministeredAddress": lambda: "random"})
        self.VZFileHandleSerialPortAttachment = cls(
            "VZFileHandleSerialPortAttachment", inits=("initWithFileHandleForReading_fileHandleForWriting_",))
        self.VZVirtioConsoleDeviceSerialPortConfiguration = cls("VZVirtioConsoleDeviceSerialPortConfiguration",
                                                                props=("attachment",))
        self.VZVirtioEntropyDeviceConfiguration = cls("VZVirtioEntropyDeviceConfiguration")
        self.VZVirtioTraditionalMemoryBalloonDeviceConfiguration = cls(
            "VZVirtioTraditionalMemoryBalloonDeviceConfiguration")
        self.VZVirtualMachine = cls("VZVirtualMachine", inits=(), factory=lambda v, c: FakeVM(v, c),
                                    class_methods={"isSupported": lambda: supported})
        self.NSURL = cls("NSURL", class_methods={"fileURLWithPath_": FakeURL})
        self.NSFileHandle = cls("NSFileHandle", inits=("initWithFileDescriptor_closeOnDealloc_",),
                                factory=lambda v, c: FakeFileHandle(v, c))

    def hardware(self, config: FakeObject) -> dict[str, Any]:
        """What a saved state is bound to: CPUs, memory and the devices, not the files behind them."""
        props = config._props

        def disk(dev: FakeObject) -> bool:
            return bool(dev._init[1][0]._init[1][1])  # type: ignore[index]  # the attachment's readOnly

        return {"cpus": props.get("CPUCount"), "memory": props.get("memorySize"),
                "storage": [disk(d) for d in props.get("storageDevices") or []],
                "network": [str(describe(n._props.get("MACAddress"))) for n in props.get("networkDevices") or []],
                "sockets": len(props.get("socketDevices") or []),
                "shares": [d._init[1][0] for d in props.get("directorySharingDevices") or []],  # type: ignore[index]
                "serial": len(props.get("serialPorts") or []), "entropy": len(props.get("entropyDevices") or []),
                "balloon": len(props.get("memoryBalloonDevices") or [])}

    def later(self, fn: Callable[[], None]) -> None:
        """Queue a completion handler for the next run-loop slice (VZ's main queue)."""
        self.pending.append(fn)

    def selectors(self, cls: str) -> list[str]:
        """The selectors called on ``cls``, in order."""
        return [sel for name, sel, _ in self.calls if name == cls]


class FakeDelegate:
    """What ``make_delegate`` returns: the two ``VZVirtualMachineDelegate`` methods."""

    def __init__(self, on_guest_stop: Callable[[], None], on_error: Callable[[str], None]) -> None:
        self.on_guest_stop, self.on_error = on_guest_stop, on_error

    def guestDidStopVirtualMachine_(self, vm: Any) -> None:
        self.on_guest_stop()

    def virtualMachine_didStopWithError_(self, vm: Any, error: Any) -> None:
        self.on_error(error.localizedDescription())


class FakePlatform:
    """The vmhost platform around a :class:`FakeVirtualization` (the fake main run loop)."""

    def __init__(self, vz: FakeVirtualization) -> None:
        self.vz = vz

    def framework_version(self) -> str:
        return self.vz.framework_version

    def run_slice(self, seconds: float) -> None:
        while self.vz.pending:
            self.vz.pending.pop(0)()
        for vm in self.vz.vms:
            vm.poll_guest()

    def make_delegate(self, on_guest_stop: Callable[[], None], on_error: Callable[[str], None]) -> FakeDelegate:
        return FakeDelegate(on_guest_stop, on_error)


def describe(obj: Any) -> Any:
    """A fake object tree as plain data: ``{"class", "init": [selector, args], **props}``."""
    if isinstance(obj, FakeObject):
        out: dict[str, Any] = {"class": obj._cls.name}
        if obj._init is not None:
            out["init"] = [obj._init[0], [describe(a) for a in obj._init[1]]]
        out.update({k: describe(v) for k, v in sorted(obj._props.items())})
        return out
    if isinstance(obj, (list, tuple)):
        return [describe(x) for x in obj]
    if isinstance(obj, FakeURL):
        return repr(obj)
    return obj

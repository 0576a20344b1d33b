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
  does.  Pause/resume SIGSTOP/SIGCONT it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from typing import Any, Callable

STOPPED, RUNNING, PAUSED, ERROR, STARTING, PAUSING, RESUMING, STOPPING = 0, 1, 2, 3, 4, 5, 6, 7
GUEST_SOCKET = "fake-guest.sock"


def _die_with_parent() -> None:
    """The fake guest ends with the vmhost, as a VM ends with its process (Linux prctl)."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


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
            try:
                os.unlink(GUEST_SOCKET)
            except FileNotFoundError:
                pass
            out = serial if serial is not None else subprocess.DEVNULL
            self.guest = subprocess.Popen([self._vz.guest_init, "--agent", "--listen", os.path.abspath(GUEST_SOCKET)],
                                          stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                          preexec_fn=_die_with_parent)

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

        self.VZVirtualMachineConfiguration = cls(
            "VZVirtualMachineConfiguration",
            props=("CPUCount", "memorySize", "bootLoader", "storageDevices", "socketDevices", "networkDevices",
                   "serialPorts", "entropyDevices", "memoryBalloonDevices", "directorySharingDevices",
                   "consoleDevices", "platform"),
            methods={"validateWithError_": validate},
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

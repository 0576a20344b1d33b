"""Supervisor request/response types and their validation (no I/O).

The wire format is camelCase JSON (docs/supervisor-api.md).  Decoding goes
through :func:`parse_request`, which fails closed: unknown fields, wrong
types and out-of-range values raise :class:`~microagent.errors.InvalidRequest`
naming the exact field, before anything is built or started.
"""

from __future__ import annotations

import dataclasses
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from microagent.errors import InvalidRequest

BACKENDS = ("firecracker", "qemu", "apple-vf", "windows-hyperv")
ROLES = ("workload", "enforcer")
NETWORK_MODES = ("isolated", "user", "nat")
#: What ``start`` waits for: guest init's channel ``HELLO`` (``guest``), or
#: only the VMM process and its API (``vmm``: process-model checks on hosts
#: where the guest cannot boot, e.g. Firecracker without hardware KVM).
READINESS_MODES = ("guest", "vmm")
STATES = (
    "unknown", "prepared", "starting", "running", "paused", "stopping",
    "stopped", "halted", "quarantined", "failed",
)

#: Which parts of a request each command needs (docs/supervisor-api.md, "Request").
COMMANDS_NEEDING_NOTHING = frozenset({"host"})
COMMANDS_NEEDING_FULL_CONFIG = frozenset({"check", "prepare", "start", "run"})
COMMANDS_NEEDING_STATE_DIR = frozenset(
    {"inspect", "halt", "quarantine", "stop", "kill", "delete", "pause", "resume", "console"}
)
COMMANDS = COMMANDS_NEEDING_NOTHING | COMMANDS_NEEDING_FULL_CONFIG | COMMANDS_NEEDING_STATE_DIR

MEMORY_MIB_RANGE = (64, 1024 * 1024)
CPU_RANGE = (1, 64)
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def is_safe_name(name: str) -> bool:
    """A workspace/runtime name usable as a path basename and hostname stem."""
    return isinstance(name, str) and bool(_SAFE_NAME.fullmatch(name))


def now_rfc3339() -> str:
    """The current time as RFC 3339 UTC with millisecond precision."""
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


def new_request_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Identity:
    requestID: str
    runtimeID: str
    role: str
    backend: str
    sessionID: str | None = None
    correlationID: str | None = None


@dataclass(frozen=True)
class Disk:
    name: str
    path: str
    mountpoint: str
    mode: str = "rw"


@dataclass(frozen=True)
class PortForward:
    hostPort: int
    guestPort: int
    host: str = "127.0.0.1"
    protocol: str = "tcp"


@dataclass(frozen=True)
class Network:
    mode: str = "isolated"
    portForwards: tuple[PortForward, ...] = ()
    #: the guest may reach the host through its gateway (off: see network/egress.py)
    allowHostLoopback: bool = False


@dataclass(frozen=True)
class Config:
    stateDir: str
    kernelPath: str = ""
    rootfsPath: str = ""
    initrdPath: str = ""
    memoryMiB: int = 512
    cpuCount: int = 2
    hostname: str = ""
    configDiskPath: str = ""
    kernelArgs: str = ""
    timeoutSeconds: float = 60.0
    readiness: str = "guest"
    env: tuple[str, ...] = ()  # per-boot environment, applied by guest init to every process
    stopSignal: int = 15  # what halt sends every guest process first (the image's StopSignal)
    disks: tuple[Disk, ...] = ()
    network: Network = field(default_factory=Network)


@dataclass(frozen=True)
class ExecSpec:
    """What a foreground ``run`` executes once the guest channel is up."""

    argv: tuple[str, ...]
    env: tuple[str, ...] = ()
    cwd: str = ""
    user: str = ""
    timeoutSeconds: float = 0.0


@dataclass(frozen=True)
class Request:
    command: str
    identity: Identity | None = None
    config: Config | None = None
    exec: ExecSpec | None = None


def to_wire(obj: Any) -> Any:
    """A dataclass tree as plain JSON-able data, dropping ``None`` fields."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {
            f.name: to_wire(getattr(obj, f.name))
            for f in dataclasses.fields(obj)
            if getattr(obj, f.name) is not None
        }
    if isinstance(obj, (list, tuple)):
        return [to_wire(x) for x in obj]
    if isinstance(obj, dict):
        return {k: to_wire(v) for k, v in obj.items()}
    return obj


# --- validation -------------------------------------------------------------


class _Fields:
    """Reads one JSON object, remembering the path for precise messages."""

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, dict):
            raise InvalidRequest(f"{where} must be a JSON object, got {_type_name(data)}")
        self.data = data
        self.where = where
        self.seen: set[str] = set()

    def _path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get(self, key: str) -> Any:
        self.seen.add(key)
        return self.data.get(key)

    def string(self, key: str, *, required: bool = False, default: str = "", choices: tuple[str, ...] = ()) -> str:
        value = self.get(key)
        if value is None:
            if required:
                raise InvalidRequest(f"{self._path(key)} is required")
            return default
        if not isinstance(value, str):
            raise InvalidRequest(f"{self._path(key)} must be a string, got {_type_name(value)}")
        if required and not value:
            raise InvalidRequest(f"{self._path(key)} must not be empty")
        if choices and value not in choices:
            raise InvalidRequest(f"{self._path(key)} must be one of {', '.join(choices)}; got {value!r}")
        return value

    def integer(self, key: str, *, default: int, bounds: tuple[int, int]) -> int:
        value = self.get(key)
        if value is None:
            return default
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidRequest(f"{self._path(key)} must be an integer, got {_type_name(value)}")
        lo, hi = bounds
        if not lo <= value <= hi:
            raise InvalidRequest(f"{self._path(key)} must be between {lo} and {hi}, got {value}")
        return value

    def number(self, key: str, *, default: float, bounds: tuple[float, float]) -> float:
        value = self.get(key)
        if value is None:
            return default
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise InvalidRequest(f"{self._path(key)} must be a number, got {_type_name(value)}")
        lo, hi = bounds
        if not lo <= value <= hi:
            raise InvalidRequest(f"{self._path(key)} must be between {lo} and {hi}, got {value}")
        return float(value)

    def strings(self, key: str, *, required: bool = False) -> tuple[str, ...]:
        value = self.get(key)
        if value is None:
            if required:
                raise InvalidRequest(f"{self._path(key)} is required")
            return ()
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            raise InvalidRequest(f"{self._path(key)} must be a list of strings")
        if required and not value:
            raise InvalidRequest(f"{self._path(key)} must not be empty")
        return tuple(value)

    def objects(self, key: str) -> list["_Fields"]:
        value = self.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise InvalidRequest(f"{self._path(key)} must be a list, got {_type_name(value)}")
        return [_Fields(item, f"{self._path(key)}[{i}]") for i, item in enumerate(value)]

    def object(self, key: str) -> "_Fields | None":
        value = self.get(key)
        return None if value is None else _Fields(value, self._path(key))

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            where = self.where or "request"
            raise InvalidRequest(f"{where} has unknown field {unknown[0]!r}")


def _type_name(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", int: "integer",
            float: "number", type(None): "null"}.get(type(value), type(value).__name__)


def _abs_path(f: _Fields, key: str, *, required: bool) -> str:
    value = f.string(key, required=required)
    if value and not value.startswith("/") and not re.match(r"^[A-Za-z]:[\\/]", value):
        raise InvalidRequest(f"{f._path(key)} must be an absolute path, got {value!r}")
    if "\x00" in value:
        raise InvalidRequest(f"{f._path(key)} must not contain NUL bytes")
    return value


def _parse_identity(f: _Fields) -> Identity:
    ident = Identity(
        requestID=f.string("requestID", required=True),
        runtimeID=f.string("runtimeID", required=True),
        role=f.string("role", required=True, choices=ROLES),
        backend=f.string("backend", required=True, choices=BACKENDS),
        sessionID=f.get("sessionID"),
        correlationID=f.get("correlationID"),
    )
    for key in ("sessionID", "correlationID"):
        value = getattr(ident, key)
        if value is not None and not isinstance(value, str):
            raise InvalidRequest(f"identity.{key} must be a string")
    if not is_safe_name(ident.runtimeID):
        raise InvalidRequest(
            f"identity.runtimeID {ident.runtimeID!r} is not a safe name",
            "use 1-63 characters from A-Z a-z 0-9 . _ - starting with a letter or digit",
        )
    f.done()
    return ident


def _parse_network(f: _Fields | None) -> Network:
    if f is None:
        return Network()
    mode = f.string("mode", default="isolated", choices=NETWORK_MODES)
    forwards = []
    seen_ports: set[tuple[str, int]] = set()
    for pf in f.objects("portForwards"):
        fwd = PortForward(
            protocol=pf.string("protocol", default="tcp", choices=("tcp", "udp")),
            host=pf.string("host", default="127.0.0.1"),
            hostPort=pf.integer("hostPort", default=0, bounds=(1, 65535)),
            guestPort=pf.integer("guestPort", default=0, bounds=(1, 65535)),
        )
        if pf.get("hostPort") is None or pf.get("guestPort") is None:
            raise InvalidRequest(f"{pf.where} needs hostPort and guestPort")
        if fwd.protocol == "udp":
            raise InvalidRequest(f"{pf.where}.protocol udp is not supported; publish tcp ports only")
        if (fwd.host, fwd.hostPort) in seen_ports:
            raise InvalidRequest(f"{pf.where}.hostPort {fwd.hostPort} is published twice")
        seen_ports.add((fwd.host, fwd.hostPort))
        pf.done()
        forwards.append(fwd)
    if forwards and mode == "isolated":
        raise InvalidRequest(
            "network.portForwards cannot be used with network mode isolated",
            "use --network user or nat to publish ports",
        )
    allow_host = f.get("allowHostLoopback")
    if allow_host is not None and not isinstance(allow_host, bool):
        raise InvalidRequest(f"{f.where}.allowHostLoopback must be a boolean, got {_type_name(allow_host)}")
    if allow_host and mode == "isolated":
        raise InvalidRequest("network.allowHostLoopback cannot be used with network mode isolated",
                             "use --network user or nat")
    f.done()
    return Network(mode=mode, portForwards=tuple(forwards), allowHostLoopback=bool(allow_host))


def _parse_config(f: _Fields, *, full: bool) -> Config:
    cfg_kwargs: dict[str, Any] = {
        "stateDir": _abs_path(f, "stateDir", required=True),
        "kernelPath": _abs_path(f, "kernelPath", required=full),
        "rootfsPath": _abs_path(f, "rootfsPath", required=full),
        "initrdPath": _abs_path(f, "initrdPath", required=False),
        "configDiskPath": _abs_path(f, "configDiskPath", required=False),
        "memoryMiB": f.integer("memoryMiB", default=512, bounds=MEMORY_MIB_RANGE),
        "cpuCount": f.integer("cpuCount", default=2, bounds=CPU_RANGE),
        "hostname": f.string("hostname"),
        "kernelArgs": f.string("kernelArgs"),
        "timeoutSeconds": f.number("timeoutSeconds", default=60.0, bounds=(0.1, 86400.0)),
        "readiness": f.string("readiness", default="guest", choices=READINESS_MODES),
        "env": _env_list(f, "env"),
        "stopSignal": f.integer("stopSignal", default=15, bounds=(1, 64)),
    }
    disks = []
    names: set[str] = set()
    mounts: set[str] = set()
    for d in f.objects("disks"):
        disk = Disk(
            name=d.string("name", required=True),
            path=_abs_path(d, "path", required=True),
            mountpoint=_abs_path(d, "mountpoint", required=True),
            mode=d.string("mode", default="rw", choices=("ro", "rw")),
        )
        d.done()
        if disk.name in ("rootfs", "config"):
            raise InvalidRequest(f"{d.where}.name {disk.name!r} is reserved")
        if disk.name in names:
            raise InvalidRequest(f"{d.where}.name {disk.name!r} is used twice")
        if disk.mountpoint in mounts:
            raise InvalidRequest(f"{d.where}.mountpoint {disk.mountpoint!r} is used twice")
        names.add(disk.name)
        mounts.add(disk.mountpoint)
        disks.append(disk)
    cfg_kwargs["disks"] = tuple(disks)
    cfg_kwargs["network"] = _parse_network(f.object("network"))
    f.done()
    return Config(**cfg_kwargs)


def _env_list(f: _Fields, key: str) -> tuple[str, ...]:
    items = f.strings(key)
    for item in items:
        if "=" not in item or item.startswith("="):
            raise InvalidRequest(f"{f._path(key)} entry {item!r} must look like KEY=VALUE")
    return items


def _parse_exec(f: _Fields) -> ExecSpec:
    spec = ExecSpec(
        argv=f.strings("argv", required=True),
        env=_env_list(f, "env"),
        cwd=f.string("cwd"),
        user=f.string("user"),
        timeoutSeconds=f.number("timeoutSeconds", default=0.0, bounds=(0.0, 86400.0)),
    )
    f.done()
    return spec


def parse_request(data: Any) -> Request:
    """Validate decoded JSON into a :class:`Request`.

    :param data: the decoded JSON document.
    :raises InvalidRequest: naming the first offending field.
    """
    f = _Fields(data, "")
    command = f.string("command", required=True)
    if command not in COMMANDS:
        raise InvalidRequest(
            f"unknown command {command!r}",
            f"use one of: {', '.join(sorted(COMMANDS))}",
        )
    identity = config = exec_spec = None
    ident_f = f.object("identity")
    config_f = f.object("config")
    exec_f = f.object("exec")
    if command not in COMMANDS_NEEDING_NOTHING:
        if ident_f is None:
            raise InvalidRequest(f"identity is required for command {command!r}")
        if config_f is None:
            raise InvalidRequest(f"config is required for command {command!r}")
        identity = _parse_identity(ident_f)
        config = _parse_config(config_f, full=command in COMMANDS_NEEDING_FULL_CONFIG)
    else:
        if ident_f is not None:
            identity = _parse_identity(ident_f)
    if exec_f is not None:
        if command != "run":
            raise InvalidRequest(f"exec is only valid for command 'run', not {command!r}")
        exec_spec = _parse_exec(exec_f)
    f.done()
    return Request(command=command, identity=identity, config=config, exec=exec_spec)


# --- responses --------------------------------------------------------------


@dataclass
class Event:
    identity: Identity
    state: str
    detail: str = ""
    observedAt: str = field(default_factory=now_rfc3339)


@dataclass
class Response:
    """One supervisor answer.  ``host`` replaces ``event`` for ``host``."""

    ok: bool
    backend: str
    event: Event | None = None
    host: dict[str, Any] | None = None
    readiness: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    network: dict[str, Any] | None = None
    runtime: dict[str, Any] | None = None
    error: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return to_wire(self)  # type: ignore[no-any-return]

    @staticmethod
    def from_json(data: Any) -> "Response":
        """Decode a supervisor's stdout document (lenient: it is our own output).

        :raises InvalidRequest: when the document is not a response object.
        """
        if not isinstance(data, dict) or not isinstance(data.get("ok"), bool):
            raise InvalidRequest("supervisor response is not an object with a boolean 'ok'")
        event = None
        if isinstance(data.get("event"), dict):
            ev = data["event"]
            ident = ev.get("identity") or {}
            event = Event(
                identity=Identity(**{k: str(ident.get(k, "")) for k in ("requestID", "runtimeID", "role", "backend")}),
                state=str(ev.get("state", "unknown")),
                detail=str(ev.get("detail", "")),
                observedAt=str(ev.get("observedAt", "")),
            )
        return Response(
            ok=data["ok"],
            backend=str(data.get("backend", "")),
            event=event,
            host=data.get("host"),
            readiness=data.get("readiness"),
            result=data.get("result"),
            network=data.get("network"),
            runtime=data.get("runtime"),
            error=data.get("error"),
        )

"""Supervisor request/response types: msgspec structs whose fields are the wire.

The wire format is camelCase JSON (docs/supervisor-api.md; its JSON Schema,
generated from these structs, is docs/supervisor-protocol.schema.json).
Attribute names are the wire names, so no renaming is involved.  Decoding
goes through :func:`parse_request`, which fails closed: unknown fields, wrong
types and out-of-range values raise :class:`~microagent.errors.InvalidRequest`
naming the exact field, before anything is built or started.

Each command group has its own request type (:class:`HostRequest`,
:class:`BootRequest`, :class:`RunRequest`, :class:`StateRequest`), so
``identity`` and ``config`` are required exactly where the command needs
them; all are :class:`Request`, the type callers build and send.
"""

import os
from typing import Annotated, Any, Literal, get_args

import msgspec

from microagent.errors import InvalidRequest
from microagent.vmkit.basics import SAFE_NAME, is_safe_name, now_rfc3339  # noqa: F401 - re-exported
from microagent.vmkit.invalid import describe

BackendName = Literal["firecracker", "qemu", "apple-vf", "windows-hyperv"]
Role = Literal["workload", "enforcer"]
NetworkMode = Literal["isolated", "user", "nat"]
#: What ``start`` waits for: guest init's channel ``HELLO`` (``guest``), or
#: only the VMM process and its API (``vmm``: process-model checks on hosts
#: where the guest cannot boot, e.g. Firecracker without hardware KVM).
Readiness = Literal["guest", "vmm"]

BACKENDS: tuple[str, ...] = get_args(BackendName)
ROLES: tuple[str, ...] = get_args(Role)
NETWORK_MODES: tuple[str, ...] = get_args(NetworkMode)
READINESS_MODES: tuple[str, ...] = get_args(Readiness)

MEMORY_MIB_RANGE = (64, 1024 * 1024)
CPU_RANGE = (1, 64)
#: End of string for both Python's ``re`` and JSON Schema's ECMA-262 regexes
#: (``$`` would accept a trailing newline in Python).
_END = r"(?![\s\S])"
SAFE_NAME_PATTERN = f"^{SAFE_NAME.pattern}{_END}"

# --- field types: the bounds live here, as metadata the decoder enforces -----

_SAFE_NAME_RULE = "1-63 characters from A-Z a-z 0-9 . _ - starting with a letter or digit"
# ``extra["message"]``: how vmkit.invalid words a value the pattern refuses
SafeName = Annotated[str, msgspec.Meta(
    pattern=SAFE_NAME_PATTERN, description=_SAFE_NAME_RULE,
    extra={"message": "{where} {value!r} is not a safe name", "remediation": f"use {_SAFE_NAME_RULE}"})]
NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]
_NOT_ABSOLUTE = {"message": "{where} must be an absolute path without NUL bytes, got {value!r}"}
#: POSIX (``/…``) or Windows (``C:\\…``) absolute path, no NUL bytes.
AbsPath = Annotated[str, msgspec.Meta(
    pattern=rf"^(?:/|[A-Za-z]:[\\/])[^\x00]*{_END}", description="an absolute path", extra=_NOT_ABSOLUTE)]
#: As :data:`AbsPath`, or empty for "not given".
OptionalAbsPath = Annotated[str, msgspec.Meta(
    pattern=rf"^(?:(?:/|[A-Za-z]:[\\/])[^\x00]*)?{_END}", description="an absolute path, or empty",
    extra=_NOT_ABSOLUTE)]
EnvEntry = Annotated[str, msgspec.Meta(
    pattern=r"^[^=]+=", description="KEY=VALUE", extra={"message": "{where} {value!r} must look like KEY=VALUE"})]
Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
MemoryMiB = Annotated[int, msgspec.Meta(ge=MEMORY_MIB_RANGE[0], le=MEMORY_MIB_RANGE[1])]
CpuCount = Annotated[int, msgspec.Meta(ge=CPU_RANGE[0], le=CPU_RANGE[1])]
Signal = Annotated[int, msgspec.Meta(ge=1, le=64)]
BootTimeout = Annotated[float, msgspec.Meta(ge=0.1, le=86400.0)]
ExecTimeout = Annotated[float, msgspec.Meta(ge=0.0, le=86400.0, description="seconds; 0 means none")]
Argv = Annotated[tuple[str, ...], msgspec.Meta(min_length=1)]

HostCommand = Literal["host"]
BootCommand = Literal["check", "prepare", "start"]
RunCommand = Literal["run"]
StateCommand = Literal["inspect", "halt", "quarantine", "stop", "kill", "delete", "pause", "resume", "console"]
SnapshotCommand = Literal["snapshot"]


def new_request_id() -> str:
    return os.urandom(16).hex()  # 128 random bits, as uuid4's hex, without importing uuid


class Identity(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """Who a request is for: the workspace (``runtimeID``) and the backend."""

    requestID: NonEmpty
    runtimeID: SafeName
    role: Role
    backend: BackendName
    sessionID: str | None = None
    correlationID: str | None = None


class Disk(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An extra block device; ``rootfs`` and ``config`` are reserved names."""

    name: NonEmpty
    path: AbsPath
    mountpoint: AbsPath
    mode: Literal["ro", "rw"] = "rw"


ShareTag = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,36}$", description="a virtiofs tag")]


class Share(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A host directory shared live with the guest (virtiofs on QEMU; docs/volumes.md)."""

    tag: ShareTag
    path: AbsPath
    mountpoint: AbsPath
    mode: Literal["ro", "rw"] = "rw"


class PortForward(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A host port published to a guest port (tcp only; ``udp`` is refused)."""

    hostPort: Port
    guestPort: Port
    host: str = "127.0.0.1"
    protocol: Literal["tcp", "udp"] = "tcp"


class EgressSecret(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A secret of the egress proxy (docs/egress.md): the guest gets ``name=placeholder``; the
    value never passes through the supervisor (the helper gets it in memory only)."""

    name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]
    placeholder: Annotated[str, msgspec.Meta(pattern=r"^microagent-secret-[0-9a-f]{32}$")]
    hosts: tuple[Annotated[str, msgspec.Meta(min_length=1, max_length=254)], ...]


class Egress(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The allowlist of the guest's egress proxy (docs/egress.md); needs network mode ``isolated``.

    ``allowHosts``: exact names or ``.suffix`` entries; ``allowCidrs``: private ranges
    the proxy may dial.  Their syntax is checked by :mod:`microagent.egress.policy`.
    """

    allowHosts: tuple[Annotated[str, msgspec.Meta(min_length=1, max_length=254)], ...] = ()
    allowCidrs: tuple[Annotated[str, msgspec.Meta(min_length=1, max_length=64)], ...] = ()
    #: where guest processes reach the proxy, on the guest's loopback
    proxyPort: Port = 3128
    #: secrets whose placeholders the proxy replaces toward their hosts
    secrets: tuple[EgressSecret, ...] = ()


class Network(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The guest's network; port forwards need mode ``user`` or ``nat``."""

    mode: NetworkMode = "isolated"
    portForwards: tuple[PortForward, ...] = ()
    #: the guest may reach the host through its gateway (off: see network/egress.py)
    allowHostLoopback: bool = False
    #: an egress allowlist proxy instead of a NIC (``isolated`` only)
    egress: Egress | None = None


RestartPolicy = Literal["never", "on-failure", "always"]
RESTART_POLICIES: tuple[str, ...] = get_args(RestartPolicy)
#: what guest init accepts per service field (guest/service.c)
SERVICE_FIELD_MAX = 8192


class Service(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The workspace's long-running command, started by guest init on every boot as
    ``sh -c command`` (docs/services.md); restarted by ``restart`` with a backoff."""

    command: Annotated[str, msgspec.Meta(min_length=1, max_length=SERVICE_FIELD_MAX)]
    restart: RestartPolicy = "never"
    #: the image's user and working directory ("" = root, the user's home)
    user: Annotated[str, msgspec.Meta(max_length=256)] = ""
    workdir: Annotated[str, msgspec.Meta(max_length=4096)] = ""


class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Where a workspace's state lives, and how to boot it (the boot fields matter only to a boot)."""

    stateDir: AbsPath
    kernelPath: OptionalAbsPath = ""
    rootfsPath: OptionalAbsPath = ""
    initrdPath: OptionalAbsPath = ""
    memoryMiB: MemoryMiB = 512
    cpuCount: CpuCount = 2
    hostname: str = ""
    configDiskPath: OptionalAbsPath = ""
    kernelArgs: str = ""
    timeoutSeconds: BootTimeout = 60.0
    readiness: Readiness = "guest"
    env: tuple[EnvEntry, ...] = ()  # per-boot environment, applied by guest init to every process
    stopSignal: Signal = 15  # what halt sends every guest process first (the image's StopSignal)
    disks: tuple[Disk, ...] = ()
    #: host directories shared with the guest, mounted by guest init like the disks
    shares: tuple[Share, ...] = ()
    network: Network = msgspec.field(default_factory=Network)
    service: Service | None = None  # started by guest init on every boot (config disk)


class BootConfig(Config, kw_only=True):
    """A full config: the kernel and root filesystem are required."""

    kernelPath: AbsPath
    rootfsPath: AbsPath


class ExecSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a foreground ``run`` executes once the guest channel is up."""

    argv: Argv
    env: tuple[EnvEntry, ...] = ()
    cwd: str = ""
    user: str = ""
    timeoutSeconds: ExecTimeout = 0.0


class SnapshotSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A VM snapshot directory: what ``snapshot`` writes into, what ``start`` restores from.

    For a restore, ``vmmVersion`` and ``layout`` are what the snapshot recorded
    (the supervisor refuses a VMM or device layout that differs); ``private``
    maps the memory file copy-on-write instead of restoring a copy of it (a fork).
    """

    path: AbsPath
    private: bool = False
    vmmVersion: str = ""
    layout: str = ""
    #: the restore generation guest init reports in its HELLO afterwards
    generation: Annotated[int, msgspec.Meta(ge=0)] = 0


class Request(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    """Any supervisor request (what callers build); decoding yields one of the subclasses.

    The subclasses narrow the fields per command group (struct options are
    inherited: frozen, unknown fields refused, ``None`` parts left out).
    """

    command: str
    identity: Identity | None = None
    config: Config | None = None
    exec: ExecSpec | None = None
    snapshot: SnapshotSpec | None = None


class HostRequest(Request, kw_only=True):
    """``host``: what this host offers; needs nothing."""

    command: HostCommand
    exec: None = None


class BootRequest(Request, kw_only=True):
    """Commands that check, prepare or boot a VM: a full config."""

    command: BootCommand
    identity: Identity
    config: BootConfig
    exec: None = None


class RunRequest(BootRequest, kw_only=True):
    """``run``: boot, execute ``exec`` over the guest channel, power off."""

    command: RunCommand  # type: ignore[assignment]
    exec: ExecSpec | None = None  # type: ignore[assignment]


class StateRequest(Request, kw_only=True):
    """Commands on an existing VM: only ``config.stateDir`` matters."""

    command: StateCommand
    identity: Identity
    config: Config
    exec: None = None


class SnapshotRequest(Request, kw_only=True):
    """``snapshot``: save a running or paused VM into ``snapshot.path`` (it stays as it was)."""

    command: SnapshotCommand
    identity: Identity
    config: Config
    exec: None = None
    snapshot: SnapshotSpec


REQUEST_TYPES: tuple[type[Request], ...] = (HostRequest, BootRequest, RunRequest, StateRequest, SnapshotRequest)
_TYPE_OF_COMMAND: dict[str, type[Request]] = {
    **dict.fromkeys(get_args(HostCommand), HostRequest),
    **dict.fromkeys(get_args(BootCommand), BootRequest),
    **dict.fromkeys(get_args(RunCommand), RunRequest),
    **dict.fromkeys(get_args(StateCommand), StateRequest),
    **dict.fromkeys(get_args(SnapshotCommand), SnapshotRequest),
}

#: Which parts of a request each command needs (docs/supervisor-api.md, "Request").
COMMANDS_NEEDING_NOTHING = frozenset(get_args(HostCommand))
COMMANDS_NEEDING_FULL_CONFIG = frozenset(get_args(BootCommand) + get_args(RunCommand))
COMMANDS_NEEDING_STATE_DIR = frozenset(get_args(StateCommand) + get_args(SnapshotCommand))
COMMANDS = frozenset(_TYPE_OF_COMMAND)


def to_wire(obj: Any) -> Any:
    """A struct tree as plain JSON-able data (``None`` request/response parts left out)."""
    return msgspec.to_builtins(obj)


# --- validation -------------------------------------------------------------


def parse_request(data: Any) -> Request:
    """Validate decoded JSON into the request type of its command.

    The command is read first; its group's type then decodes the rest.

    :param data: the decoded JSON document.
    :raises InvalidRequest: naming the first offending field.
    """
    if not isinstance(data, dict):
        raise InvalidRequest(f"request must be a JSON object, got {_json_type(data)}")
    command = data.get("command")
    if command is None:
        raise InvalidRequest("command is required")
    if not isinstance(command, str):
        raise InvalidRequest(f"command must be a string, got {_json_type(command)}")
    if not command:
        raise InvalidRequest("command must not be empty")
    cls = _TYPE_OF_COMMAND.get(command)
    if cls is None:
        raise InvalidRequest(f"unknown command {command!r}", f"use one of: {', '.join(sorted(COMMANDS))}")
    if cls is not HostRequest:
        for part in ("identity", "config"):
            if data.get(part) is None:
                raise InvalidRequest(f"{part} is required for command {command!r}")
    if data.get("exec") is not None and cls is not RunRequest:
        raise InvalidRequest(f"exec is only valid for command 'run', not {command!r}")
    if data.get("snapshot") is not None and command not in ("start", "snapshot"):
        raise InvalidRequest(f"snapshot is only valid for commands 'start' and 'snapshot', not {command!r}")
    if cls is SnapshotRequest and data.get("snapshot") is None:
        raise InvalidRequest("snapshot is required for command 'snapshot'")
    try:
        request = msgspec.convert(data, cls)
    except msgspec.ValidationError as exc:
        message, remediation = describe(exc, cls, data)
        raise InvalidRequest(message, remediation) from None
    if request.config is not None:
        _check_config(request.config)
    return request


def _check_config(cfg: Config) -> None:
    """The checks that relate fields to each other (the schema cannot say these)."""
    names: set[str] = set()
    mounts: set[str] = set()
    for i, disk in enumerate(cfg.disks):
        where = f"config.disks[{i}]"
        if disk.name in ("rootfs", "config"):
            raise InvalidRequest(f"{where}.name {disk.name!r} is reserved")
        if disk.name in names:
            raise InvalidRequest(f"{where}.name {disk.name!r} is used twice")
        if disk.mountpoint in mounts:
            raise InvalidRequest(f"{where}.mountpoint {disk.mountpoint!r} is used twice")
        names.add(disk.name)
        mounts.add(disk.mountpoint)
    tags: set[str] = set()
    for i, share in enumerate(cfg.shares):
        where = f"config.shares[{i}]"
        if share.tag in tags:
            raise InvalidRequest(f"{where}.tag {share.tag!r} is used twice")
        if share.mountpoint in mounts:
            raise InvalidRequest(f"{where}.mountpoint {share.mountpoint!r} is used twice")
        tags.add(share.tag)
        mounts.add(share.mountpoint)
    net = cfg.network
    published: set[tuple[str, int]] = set()
    for i, fwd in enumerate(net.portForwards):
        where = f"config.network.portForwards[{i}]"
        if fwd.protocol == "udp":
            raise InvalidRequest(f"{where}.protocol udp is not supported; publish tcp ports only")
        if (fwd.host, fwd.hostPort) in published:
            raise InvalidRequest(f"{where}.hostPort {fwd.hostPort} is published twice")
        published.add((fwd.host, fwd.hostPort))
    if net.portForwards and net.mode == "isolated":
        raise InvalidRequest("config.network.portForwards cannot be used with network mode isolated",
                             "use --network user or nat to publish ports")
    if net.egress is not None and net.mode != "isolated":
        raise InvalidRequest(f"config.network.egress cannot be used with network mode {net.mode}",
                             "use --network isolated with --egress-allow: with a NIC the guest could go around "
                             "the proxy, and there is no transparent egress mode yet")
    if net.allowHostLoopback and net.mode == "isolated":
        raise InvalidRequest("config.network.allowHostLoopback cannot be used with network mode isolated",
                             "use --network user or nat")


def _json_type(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", int: "integer",
            float: "number", type(None): "null"}.get(type(value), type(value).__name__)


# --- responses --------------------------------------------------------------


class Event(msgspec.Struct, forbid_unknown_fields=True):
    """What a command observed: the workspace's state afterwards."""

    identity: Identity
    state: str
    detail: str = ""
    observedAt: str = msgspec.field(default_factory=now_rfc3339)


class Response(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=True):
    """One supervisor answer; ``host`` replaces ``event`` for the host command.

    ``host``, ``readiness``, ``result``, ``network`` and ``runtime`` are
    backend-specific objects; ``error`` is ``{kind, message, remediation?, details?}``.
    """

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
        """Decode a supervisor's stdout document.

        :raises InvalidRequest: when the document is not a valid response.
        """
        if not isinstance(data, dict) or not isinstance(data.get("ok"), bool):
            raise InvalidRequest("supervisor response is not an object with a boolean 'ok'")
        if data["ok"] is False and "event" in data:
            # a refusal echoes the identity as sent, which may be what was invalid;
            # the caller needs only the error
            data = {k: v for k, v in data.items() if k != "event"}
        try:
            return msgspec.convert(data, Response)
        except msgspec.ValidationError as exc:
            message, _ = describe(exc, Response, data)
            raise InvalidRequest(f"supervisor response: {message}") from None

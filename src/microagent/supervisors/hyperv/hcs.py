"""HCS and HCN through ctypes, behind a narrow seam (:class:`HcsApi`).

Which DLL exports what (checked against Microsoft's HCS/HCN API reference):

- ``computecore.dll`` (Windows 10 1809+): the documented, operation-based HCS
  API used here — ``HcsCreateOperation``, ``HcsWaitForOperationResult``,
  ``HcsCloseOperation``, ``HcsCreateComputeSystem``, ``HcsOpenComputeSystem``,
  ``HcsStartComputeSystem``, ``HcsShutdownComputeSystem``,
  ``HcsTerminateComputeSystem``, ``HcsPauseComputeSystem``,
  ``HcsResumeComputeSystem``, ``HcsSaveComputeSystem``, ``HcsGetComputeSystemProperties``,
  ``HcsCloseComputeSystem``, ``HcsGrantVmAccess``.  A restore is no call of
  its own: ``HcsCreateComputeSystem`` with ``VirtualMachine.RestoreState``
  in the document.  Result documents are
  freed with ``LocalFree`` (kernel32).
- ``vmcompute.dll`` exports the older, synchronous "v1" functions under the
  *same names* with *different signatures* (no ``HCS_OPERATION``; a
  ``result`` out-string instead).  Calling them with the signatures above
  would corrupt the stack, so this module never loads vmcompute.dll.
- ``computenetwork.dll``: ``HcnOpenNetwork``, ``HcnCreateNetwork``,
  ``HcnCloseNetwork``, ``HcnCreateEndpoint``, ``HcnQueryEndpointProperties``,
  ``HcnCloseEndpoint``, ``HcnDeleteEndpoint``; error records and property
  documents are freed with ``CoTaskMemFree`` (ole32), as hcsshim does.

The DLLs are loaded lazily and only on Windows (``ctypes.WinDLL``); the
loader is injectable so the binding code itself runs in tests here against
fake "DLLs" (tests/hyperv/test_hcs_bindings.py).  Everything above this
module talks to :class:`HcsApi`; tests substitute ``FakeHcs``.

HRESULTs are mapped onto the error tree by value (:data:`HRESULT_KINDS`),
never by message text; every message carries the HRESULT in hex.
"""

from __future__ import annotations

import ctypes
import json
import platform
import sys
import uuid
from typing import Any, Callable, Protocol

from microagent.errors import (
    Conflict,
    MicroagentError,
    NotFound,
    Permanent,
    PolicyDenied,
    ResourceExhausted,
    Transient,
    Unsupported,
)

S_OK = 0
GENERIC_ALL = 0x10000000
INFINITE = 0xFFFFFFFF

HCS_E_HYPERV_NOT_INSTALLED = 0x80370102
HCS_E_INVALID_STATE = 0x80370105
HCS_E_UNEXPECTED_EXIT = 0x80370106
HCS_E_TERMINATED = 0x80370107
HCS_E_INVALID_JSON = 0x8037010D
HCS_E_SYSTEM_NOT_FOUND = 0x8037010E
HCS_E_SYSTEM_ALREADY_EXISTS = 0x8037010F
HCS_E_SYSTEM_ALREADY_STOPPED = 0x80370110
HCS_E_OPERATION_PENDING = 0x80370117
HCS_E_OPERATION_TIMEOUT = 0x80370118
HCS_E_ACCESS_DENIED = 0x8037011B
HCS_E_SERVICE_DISCONNECT = 0x8037011E
HCN_E_NETWORK_NOT_FOUND = 0x803B0001
HCN_E_ENDPOINT_NOT_FOUND = 0x803B0002
E_ACCESSDENIED = 0x80070005
E_OUTOFMEMORY = 0x8007000E
E_INVALIDARG = 0x80070057
ERROR_FILE_NOT_FOUND = 0x80070002
ERROR_PATH_NOT_FOUND = 0x80070003
ERROR_NOT_ENOUGH_MEMORY = 0x80070008
ERROR_DISK_FULL = 0x80070070
ERROR_FILE_CORRUPT = 0x80070570
ERROR_NO_SYSTEM_RESOURCES = 0x800705AA
ERROR_TIMEOUT = 0x800705B4

#: HRESULT -> (error class, name, remediation).  NTSTATUS-style 0xC037xxxx forms
#: HCS sometimes reports are folded onto their 0x8037xxxx twins.
HRESULT_KINDS: dict[int, tuple[type[MicroagentError], str, str]] = {
    HCS_E_HYPERV_NOT_INSTALLED: (Unsupported, "HCS_E_HYPERV_NOT_INSTALLED",
                                 "enable Hyper-V: Enable-WindowsOptionalFeature -Online -FeatureName "
                                 "Microsoft-Hyper-V -All, then reboot"),
    HCS_E_INVALID_STATE: (Conflict, "HCS_E_INVALID_STATE", "inspect the workspace; stop or kill it first"),
    HCS_E_UNEXPECTED_EXIT: (Transient, "HCS_E_UNEXPECTED_EXIT", "see serial.log"),
    HCS_E_TERMINATED: (Transient, "HCS_E_TERMINATED", "see serial.log"),
    HCS_E_INVALID_JSON: (Permanent, "HCS_E_INVALID_JSON", "this is a bug in microagent's HCS document"),
    HCS_E_SYSTEM_NOT_FOUND: (NotFound, "HCS_E_SYSTEM_NOT_FOUND", "the compute system is gone; start it again"),
    HCS_E_SYSTEM_ALREADY_EXISTS: (Conflict, "HCS_E_SYSTEM_ALREADY_EXISTS",
                                  "a compute system with this ID exists; kill the workspace first"),
    HCS_E_SYSTEM_ALREADY_STOPPED: (Conflict, "HCS_E_SYSTEM_ALREADY_STOPPED", "the compute system already stopped"),
    HCS_E_OPERATION_TIMEOUT: (Transient, "HCS_E_OPERATION_TIMEOUT", "retry; HCS is slow or overloaded"),
    HCS_E_ACCESS_DENIED: (PolicyDenied, "HCS_E_ACCESS_DENIED",
                          "run from an elevated shell or join the Hyper-V Administrators group"),
    HCS_E_SERVICE_DISCONNECT: (Transient, "HCS_E_SERVICE_DISCONNECT", "the vmcompute service restarted; retry"),
    HCN_E_NETWORK_NOT_FOUND: (NotFound, "HCN_E_NETWORK_NOT_FOUND", "the HNS network is gone"),
    HCN_E_ENDPOINT_NOT_FOUND: (NotFound, "HCN_E_ENDPOINT_NOT_FOUND", "the HNS endpoint is gone"),
    E_ACCESSDENIED: (PolicyDenied, "E_ACCESSDENIED",
                     "run from an elevated shell or join the Hyper-V Administrators group"),
    E_OUTOFMEMORY: (ResourceExhausted, "E_OUTOFMEMORY", "lower --memory or stop other VMs"),
    ERROR_NOT_ENOUGH_MEMORY: (ResourceExhausted, "ERROR_NOT_ENOUGH_MEMORY", "lower --memory or stop other VMs"),
    ERROR_NO_SYSTEM_RESOURCES: (ResourceExhausted, "ERROR_NO_SYSTEM_RESOURCES", "stop other VMs and retry"),
    ERROR_DISK_FULL: (ResourceExhausted, "ERROR_DISK_FULL", "free disk space"),
    ERROR_FILE_CORRUPT: (Permanent, "ERROR_FILE_CORRUPT", "the saved state is damaged: take a new snapshot"),
    ERROR_FILE_NOT_FOUND: (NotFound, "ERROR_FILE_NOT_FOUND", "check the kernel, initrd and disk paths"),
    ERROR_PATH_NOT_FOUND: (NotFound, "ERROR_PATH_NOT_FOUND", "check the kernel, initrd and disk paths"),
    ERROR_TIMEOUT: (Transient, "ERROR_TIMEOUT", "retry"),
    E_INVALIDARG: (Permanent, "E_INVALIDARG", "this is a bug in microagent's HCS call"),
}


def normalize_hresult(hr: int) -> int:
    """An HRESULT as an unsigned 32-bit value, NTSTATUS 0xC037xxxx folded onto 0x8037xxxx."""
    hr &= 0xFFFFFFFF
    if hr & 0xFFFF0000 in (0xC0370000, 0xC03B0000):
        hr = (hr & 0x0FFFFFFF) | 0x80000000
    return hr


def failed(hr: int) -> bool:
    return bool(hr & 0x80000000)


def error_for(hr: int, what: str, result_doc: str = "") -> MicroagentError:
    """The error for a failed HCS/HCN call: class by HRESULT, message naming the call and the HRESULT.

    :param what: what was attempted, e.g. ``"HcsStartComputeSystem(microagent-ws1-…)"``.
    :param result_doc: the ``ResultError``/``ErrorRecord`` JSON HCS returned, if any.
    """
    code = normalize_hresult(hr)
    cls, name, remediation = HRESULT_KINDS.get(code, (Permanent, "", "see the Windows event log "
                                                      "(Microsoft-Windows-Hyper-V-Compute-Operational)"))
    detail = _error_detail(result_doc)
    message = f"{what} failed with HRESULT {code:#010x}" + (f" ({name})" if name else "")
    if detail:
        message += f": {detail}"
    return cls(message, remediation, hresult=f"{code:#010x}")


def _error_detail(doc: str) -> str:
    if not doc:
        return ""
    try:
        data = json.loads(doc)
    except ValueError:
        return doc.strip()[:300]
    if isinstance(data, dict):
        for key in ("ErrorMessage", "Error", "Message"):
            if data.get(key):
                return str(data[key])[:300]
    return ""


class HcsApi(Protocol):
    """What the backend needs from HCS and HCN; every compute system is named by its ID.

    Implementations raise :class:`~microagent.errors.MicroagentError`
    subclasses (see :func:`error_for`); timeouts are in seconds.
    """

    def grant_vm_access(self, system_id: str, path: str) -> None:
        """Let the VM's worker account open ``path`` (``HcsGrantVmAccess``)."""

    def create_compute_system(self, system_id: str, document: str, timeout: float) -> None:
        """Create (not start) a compute system from a ``ComputeSystem`` document."""

    def start_compute_system(self, system_id: str, timeout: float) -> None: ...

    def shutdown_compute_system(self, system_id: str, timeout: float) -> None:
        """Ask the guest to shut down (Hyper-V shutdown integration component)."""

    def terminate_compute_system(self, system_id: str, timeout: float) -> None:
        """Power the VM off at once."""

    def pause_compute_system(self, system_id: str, timeout: float) -> None: ...

    def resume_compute_system(self, system_id: str, timeout: float) -> None: ...

    def save_compute_system(self, system_id: str, options: str, timeout: float) -> None:
        """Save a *paused* system's state as a ``SaveOptions`` document says (``HcsSaveComputeSystem``;
        ``HCS_E_INVALID_STATE`` while it runs).  The system stays paused."""

    def host_version(self) -> str:
        """The Windows build a saved state is bound to (what a snapshot records and a restore compares)."""

    def get_compute_system_properties(self, system_id: str, query: str, timeout: float) -> dict[str, Any]:
        """The properties document (``State``, ``RuntimeId``, ...)."""

    def ensure_network(self, network_id: str, document: str) -> None:
        """Open the HNS network ``network_id``, creating it from ``document`` when absent."""

    def create_endpoint(self, network_id: str, endpoint_id: str, document: str) -> dict[str, Any]:
        """Create an endpoint; returns its properties (``IpConfigurations``, ``MacAddress``)."""

    def delete_endpoint(self, endpoint_id: str) -> None: ...


# --- the ctypes binding -------------------------------------------------------


class GUID(ctypes.Structure):
    """The Win32 ``GUID`` (``REFGUID`` arguments of HCN)."""

    _fields_ = [("Data1", ctypes.c_uint32), ("Data2", ctypes.c_uint16), ("Data3", ctypes.c_uint16),
                ("Data4", ctypes.c_ubyte * 8)]

    @classmethod
    def from_str(cls, value: str) -> "GUID":
        u = uuid.UUID(value)
        return cls(u.fields[0], u.fields[1], u.fields[2], (ctypes.c_ubyte * 8)(*u.bytes[8:]))


LibraryLoader = Callable[[str], Any]


def _win_loader(name: str) -> Any:
    """``ctypes.WinDLL`` (Windows only; the attribute does not exist elsewhere)."""
    if sys.platform != "win32":
        raise Unsupported(f"{name} exists only on Windows; this host runs {sys.platform}")
    try:
        return getattr(ctypes, "WinDLL")(name, use_last_error=True)
    except OSError as exc:
        raise Unsupported(f"cannot load {name}: {exc}",
                          "enable Hyper-V and the Windows Hypervisor Platform, then reboot") from exc


#: the compute system schema the documents are written in (documents.SCHEMA_VERSION)
SCHEMA_MAJOR_MINOR = "2.1"
HRESULT_T = ctypes.c_long
HANDLE_T = ctypes.c_void_p
PWSTR_OUT = ctypes.POINTER(ctypes.c_void_p)

_SIGNATURES: dict[str, dict[str, tuple[Any, list[Any]]]] = {
    "computecore.dll": {
        "HcsCreateOperation": (HANDLE_T, [ctypes.c_void_p, ctypes.c_void_p]),
        "HcsCloseOperation": (None, [HANDLE_T]),
        "HcsWaitForOperationResult": (HRESULT_T, [HANDLE_T, ctypes.c_uint32, PWSTR_OUT]),
        "HcsCreateComputeSystem": (HRESULT_T, [ctypes.c_wchar_p, ctypes.c_wchar_p, HANDLE_T, ctypes.c_void_p,
                                               ctypes.POINTER(HANDLE_T)]),
        "HcsOpenComputeSystem": (HRESULT_T, [ctypes.c_wchar_p, ctypes.c_uint32, ctypes.POINTER(HANDLE_T)]),
        "HcsCloseComputeSystem": (None, [HANDLE_T]),
        "HcsStartComputeSystem": (HRESULT_T, [HANDLE_T, HANDLE_T, ctypes.c_wchar_p]),
        "HcsShutdownComputeSystem": (HRESULT_T, [HANDLE_T, HANDLE_T, ctypes.c_wchar_p]),
        "HcsTerminateComputeSystem": (HRESULT_T, [HANDLE_T, HANDLE_T, ctypes.c_wchar_p]),
        "HcsPauseComputeSystem": (HRESULT_T, [HANDLE_T, HANDLE_T, ctypes.c_wchar_p]),
        "HcsResumeComputeSystem": (HRESULT_T, [HANDLE_T, HANDLE_T, ctypes.c_wchar_p]),
        "HcsSaveComputeSystem": (HRESULT_T, [HANDLE_T, HANDLE_T, ctypes.c_wchar_p]),
        "HcsGetComputeSystemProperties": (HRESULT_T, [HANDLE_T, HANDLE_T, ctypes.c_wchar_p]),
        "HcsGrantVmAccess": (HRESULT_T, [ctypes.c_wchar_p, ctypes.c_wchar_p]),
    },
    "computenetwork.dll": {
        "HcnOpenNetwork": (HRESULT_T, [ctypes.POINTER(GUID), ctypes.POINTER(HANDLE_T), PWSTR_OUT]),
        "HcnCreateNetwork": (HRESULT_T, [ctypes.POINTER(GUID), ctypes.c_wchar_p, ctypes.POINTER(HANDLE_T),
                                         PWSTR_OUT]),
        "HcnCloseNetwork": (HRESULT_T, [HANDLE_T]),
        "HcnCreateEndpoint": (HRESULT_T, [HANDLE_T, ctypes.POINTER(GUID), ctypes.c_wchar_p,
                                          ctypes.POINTER(HANDLE_T), PWSTR_OUT]),
        "HcnQueryEndpointProperties": (HRESULT_T, [HANDLE_T, ctypes.c_wchar_p, PWSTR_OUT, PWSTR_OUT]),
        "HcnCloseEndpoint": (HRESULT_T, [HANDLE_T]),
        "HcnDeleteEndpoint": (HRESULT_T, [ctypes.POINTER(GUID), PWSTR_OUT]),
    },
    "kernel32.dll": {"LocalFree": (ctypes.c_void_p, [ctypes.c_void_p])},
    "ole32.dll": {"CoTaskMemFree": (None, [ctypes.c_void_p])},
}


class ComputeCore:
    """:class:`HcsApi` over the real DLLs.

    Each call opens what it needs and closes it again: supervisor commands are
    separate processes, so no handle outlives one call.  Operations are waited
    with ``HcsWaitForOperationResult`` and a timeout; every returned string is
    freed.

    :param loader: returns a library object by DLL name (``ctypes.WinDLL`` by default).
    """

    def __init__(self, loader: LibraryLoader | None = None) -> None:
        self._loader = loader or _win_loader
        self._libs: dict[str, Any] = {}

    def _fn(self, dll: str, name: str) -> Any:
        lib = self._libs.get(dll)
        if lib is None:
            lib = self._libs[dll] = self._loader(dll)
        fn = getattr(lib, name)
        restype, argtypes = _SIGNATURES[dll][name]
        fn.restype, fn.argtypes = restype, argtypes
        return fn

    # --- strings returned by the API -------------------------------------------

    def _take(self, ptr: ctypes.c_void_p, free: str) -> str:
        """Read the wide string at ``ptr`` and free it (``LocalFree`` or ``CoTaskMemFree``)."""
        if not ptr.value:
            return ""
        try:
            return ctypes.wstring_at(ptr.value)
        finally:
            if free == "local":
                self._fn("kernel32.dll", "LocalFree")(ptr.value)
            else:
                self._fn("ole32.dll", "CoTaskMemFree")(ptr.value)

    # --- HCS -------------------------------------------------------------------

    def _check(self, hr: int, what: str, doc: str = "") -> None:
        if failed(hr & 0xFFFFFFFF):
            raise error_for(hr, what, doc)

    def _run(self, what: str, timeout: float, call: Callable[[Any], int]) -> str:
        """Create an operation, start ``call(op)``, wait for it; returns the result document."""
        op = self._fn("computecore.dll", "HcsCreateOperation")(None, None)
        if not op:
            raise ResourceExhausted(f"HcsCreateOperation failed for {what}", "retry")
        try:
            self._check(call(op), what)
            result = ctypes.c_void_p()
            ms = INFINITE if timeout <= 0 else max(1, int(timeout * 1000))
            hr = self._fn("computecore.dll", "HcsWaitForOperationResult")(op, ms, ctypes.byref(result))
            doc = self._take(result, "local")
            if normalize_hresult(hr) == HCS_E_OPERATION_TIMEOUT:
                raise error_for(hr, f"{what} (waited {timeout:.0f}s)", doc)
            self._check(hr, what, doc)
            return doc
        finally:
            self._fn("computecore.dll", "HcsCloseOperation")(op)

    def _with_system(self, system_id: str, what: str, timeout: float,
                     call: Callable[[Any, Any], int]) -> str:
        handle = HANDLE_T()
        hr = self._fn("computecore.dll", "HcsOpenComputeSystem")(system_id, GENERIC_ALL, ctypes.byref(handle))
        self._check(hr, f"HcsOpenComputeSystem({system_id})")
        try:
            return self._run(f"{what}({system_id})", timeout, lambda op: call(handle, op))
        finally:
            self._fn("computecore.dll", "HcsCloseComputeSystem")(handle)

    def grant_vm_access(self, system_id: str, path: str) -> None:
        hr = self._fn("computecore.dll", "HcsGrantVmAccess")(system_id, path)
        self._check(hr, f"HcsGrantVmAccess({system_id}, {path})")

    def create_compute_system(self, system_id: str, document: str, timeout: float) -> None:
        handle = HANDLE_T()
        create = self._fn("computecore.dll", "HcsCreateComputeSystem")
        try:
            self._run(f"HcsCreateComputeSystem({system_id})", timeout,
                      lambda op: create(system_id, document, op, None, ctypes.byref(handle)))
        finally:
            if handle.value:
                self._fn("computecore.dll", "HcsCloseComputeSystem")(handle)

    def _simple(self, name: str, system_id: str, timeout: float) -> None:
        fn = self._fn("computecore.dll", name)
        self._with_system(system_id, name, timeout, lambda h, op: fn(h, op, None))

    def start_compute_system(self, system_id: str, timeout: float) -> None:
        self._simple("HcsStartComputeSystem", system_id, timeout)

    def shutdown_compute_system(self, system_id: str, timeout: float) -> None:
        self._simple("HcsShutdownComputeSystem", system_id, timeout)

    def terminate_compute_system(self, system_id: str, timeout: float) -> None:
        self._simple("HcsTerminateComputeSystem", system_id, timeout)

    def pause_compute_system(self, system_id: str, timeout: float) -> None:
        self._simple("HcsPauseComputeSystem", system_id, timeout)

    def resume_compute_system(self, system_id: str, timeout: float) -> None:
        self._simple("HcsResumeComputeSystem", system_id, timeout)

    def save_compute_system(self, system_id: str, options: str, timeout: float) -> None:
        fn = self._fn("computecore.dll", "HcsSaveComputeSystem")
        self._with_system(system_id, "HcsSaveComputeSystem", timeout, lambda h, op: fn(h, op, options))

    def host_version(self) -> str:
        return f"Windows {platform.version()} (HCS schema {SCHEMA_MAJOR_MINOR})"

    def get_compute_system_properties(self, system_id: str, query: str, timeout: float) -> dict[str, Any]:
        fn = self._fn("computecore.dll", "HcsGetComputeSystemProperties")
        doc = self._with_system(system_id, "HcsGetComputeSystemProperties", timeout,
                                lambda h, op: fn(h, op, query or None))
        try:
            data = json.loads(doc) if doc else {}
        except ValueError as exc:
            raise Permanent(f"HcsGetComputeSystemProperties({system_id}) returned invalid JSON") from exc
        return data if isinstance(data, dict) else {}

    # --- HCN -------------------------------------------------------------------

    def _hcn(self, name: str, what: str, *args: Any) -> None:
        err = ctypes.c_void_p()
        hr = self._fn("computenetwork.dll", name)(*args, ctypes.byref(err))
        doc = self._take(err, "cotask")
        self._check(hr, what, doc)

    def ensure_network(self, network_id: str, document: str) -> None:
        guid = GUID.from_str(network_id)
        handle = HANDLE_T()
        try:
            self._hcn("HcnOpenNetwork", f"HcnOpenNetwork({network_id})", ctypes.byref(guid), ctypes.byref(handle))
        except NotFound:
            self._hcn("HcnCreateNetwork", f"HcnCreateNetwork({network_id})", ctypes.byref(guid), document,
                      ctypes.byref(handle))
        finally:
            if handle.value:
                self._fn("computenetwork.dll", "HcnCloseNetwork")(handle)

    def create_endpoint(self, network_id: str, endpoint_id: str, document: str) -> dict[str, Any]:
        net_guid, ep_guid = GUID.from_str(network_id), GUID.from_str(endpoint_id)
        network, endpoint = HANDLE_T(), HANDLE_T()
        try:
            self._hcn("HcnOpenNetwork", f"HcnOpenNetwork({network_id})", ctypes.byref(net_guid),
                      ctypes.byref(network))
            self._hcn("HcnCreateEndpoint", f"HcnCreateEndpoint({endpoint_id})", network, ctypes.byref(ep_guid),
                      document, ctypes.byref(endpoint))
            props, err = ctypes.c_void_p(), ctypes.c_void_p()
            hr = self._fn("computenetwork.dll", "HcnQueryEndpointProperties")(
                endpoint, None, ctypes.byref(props), ctypes.byref(err))
            text, err_doc = self._take(props, "cotask"), self._take(err, "cotask")
            self._check(hr, f"HcnQueryEndpointProperties({endpoint_id})", err_doc)
        finally:
            if endpoint.value:
                self._fn("computenetwork.dll", "HcnCloseEndpoint")(endpoint)
            if network.value:
                self._fn("computenetwork.dll", "HcnCloseNetwork")(network)
        try:
            data = json.loads(text) if text else {}
        except ValueError as exc:
            raise Permanent(f"HcnQueryEndpointProperties({endpoint_id}) returned invalid JSON") from exc
        return data if isinstance(data, dict) else {}

    def delete_endpoint(self, endpoint_id: str) -> None:
        guid = GUID.from_str(endpoint_id)
        self._hcn("HcnDeleteEndpoint", f"HcnDeleteEndpoint({endpoint_id})", ctypes.byref(guid))

"""HRESULT mapping, and the ctypes binding code run against fake DLLs (NOT the real ones)."""

from __future__ import annotations

import ctypes
import json

import pytest

from microagent.errors import Conflict, NotFound, Permanent, PolicyDenied, ResourceExhausted, Transient, Unsupported
from microagent.supervisors.hyperv import hcs


@pytest.mark.parametrize("hr, cls, name", [
    (0x8037010E, NotFound, "HCS_E_SYSTEM_NOT_FOUND"),
    (0xC037010E, NotFound, "HCS_E_SYSTEM_NOT_FOUND"),  # NTSTATUS form folds onto the HRESULT
    (0x8037010F, Conflict, "HCS_E_SYSTEM_ALREADY_EXISTS"),
    (0x80370105, Conflict, "HCS_E_INVALID_STATE"),
    (0x80370118, Transient, "HCS_E_OPERATION_TIMEOUT"),
    (0x8037011B, PolicyDenied, "HCS_E_ACCESS_DENIED"),
    (0x80070005, PolicyDenied, "E_ACCESSDENIED"),
    (0x80370102, Unsupported, "HCS_E_HYPERV_NOT_INSTALLED"),
    (0x8007000E, ResourceExhausted, "E_OUTOFMEMORY"),
    (0x803B0001, NotFound, "HCN_E_NETWORK_NOT_FOUND"),
    (-2143878898, NotFound, "HCS_E_SYSTEM_NOT_FOUND"),  # a signed c_long as ctypes returns it on Windows
])
def test_hresult_maps_to_kind(hr, cls, name) -> None:
    err = hcs.error_for(hr, "HcsStartComputeSystem(ws1)", json.dumps({"ErrorMessage": "boom"}))
    assert type(err) is cls
    assert name in err.message and "HcsStartComputeSystem(ws1)" in err.message and "boom" in err.message
    assert err.details["hresult"] == f"{hcs.normalize_hresult(hr):#010x}"
    assert f"{hcs.normalize_hresult(hr):#010x}" in err.message


def test_unknown_hresult_is_permanent_with_the_code() -> None:
    err = hcs.error_for(0x80004005, "HcsCreateComputeSystem(x)")
    assert type(err) is Permanent and "0x80004005" in err.message


class FakeDll:
    """A fake DLL: attribute lookups return recording Python functions (NOT computecore.dll)."""

    def __init__(self, name: str, log: list, impl: dict) -> None:
        self._name, self._log, self._impl = name, log, impl

    def __getattr__(self, fn: str):
        impl = self._impl.get(fn, lambda *a: 0)

        def call(*args):
            self._log.append((fn, args))
            return impl(*args)
        return call


def _out_string(ptr_arg, text: str, keep: list) -> None:
    buf = ctypes.create_unicode_buffer(text)
    keep.append(buf)
    ptr_arg._obj.value = ctypes.addressof(buf)


def make_core(wait_hr: int = 0, result: str = "", open_hr: int = 0):
    log: list = []
    keep: list = []

    def create(id_, doc, op, sd, handle):
        handle._obj.value = 0x5000
        return 0

    def open_(id_, access, handle):
        handle._obj.value = 0x6000
        return open_hr

    def wait(op, ms, result_ptr):
        if result:
            _out_string(result_ptr, result, keep)
        return wait_hr

    impls = {"computecore.dll": {"HcsCreateOperation": lambda *a: 0x1234, "HcsCreateComputeSystem": create,
                                 "HcsOpenComputeSystem": open_, "HcsWaitForOperationResult": wait},
             "kernel32.dll": {}, "ole32.dll": {}, "computenetwork.dll": {}}
    core = hcs.ComputeCore(loader=lambda name: FakeDll(name, log, impls[name]))
    return core, log, keep


def test_create_waits_with_timeout_and_closes_everything() -> None:
    core, log, keep = make_core(result=json.dumps({"Ok": True}))
    core.create_compute_system("ws1", '{"Owner":"microagent"}', timeout=2.5)
    names = [c[0] for c in log]
    assert names == ["HcsCreateOperation", "HcsCreateComputeSystem", "HcsWaitForOperationResult", "LocalFree",
                     "HcsCloseOperation", "HcsCloseComputeSystem"]
    create_args = log[1][1]
    assert create_args[0] == "ws1" and create_args[1] == '{"Owner":"microagent"}' and create_args[2] == 0x1234
    assert log[2][1][1] == 2500  # the timeout in milliseconds
    assert log[3][1][0] == ctypes.addressof(keep[0])  # the result document was freed


def test_failed_wait_raises_mapped_error_with_result_document_and_frees_it() -> None:
    core, log, keep = make_core(wait_hr=0x8037011B, result=json.dumps({"ErrorMessage": "denied"}))
    with pytest.raises(PolicyDenied, match=r"0x8037011b.*denied"):
        core.start_compute_system("ws1", timeout=1)
    names = [c[0] for c in log]
    assert names == ["HcsOpenComputeSystem", "HcsCreateOperation", "HcsStartComputeSystem",
                     "HcsWaitForOperationResult", "LocalFree", "HcsCloseOperation", "HcsCloseComputeSystem"]


def test_timeout_is_transient_and_open_failure_is_not_found() -> None:
    core, _, _ = make_core(wait_hr=0x80370118)
    with pytest.raises(Transient, match="waited 3s"):
        core.terminate_compute_system("ws1", timeout=3)
    core, log, _ = make_core(open_hr=0x8037010E)
    with pytest.raises(NotFound, match="HcsOpenComputeSystem"):
        core.shutdown_compute_system("ws1", timeout=3)
    assert [c[0] for c in log] == ["HcsOpenComputeSystem"]


def test_guid_structure_layout() -> None:
    g = hcs.GUID.from_str("00000400-facb-11e6-bd58-64006a7986d3")
    assert bytes(g) == bytes.fromhex("00040000" "cbfa" "e611" "bd5864006a7986d3")


def test_real_loader_refuses_off_windows() -> None:
    with pytest.raises(Unsupported, match="only on Windows"):
        hcs.ComputeCore().start_compute_system("ws1", 1)


def test_save_passes_the_save_options_and_invalid_state_is_a_conflict() -> None:
    options = json.dumps({"SaveType": "ToFile", "SaveStateFilePath": r"C:\s\state"})
    core, log, _ = make_core()
    core.save_compute_system("ws1", options, timeout=4)
    assert [c[0] for c in log] == ["HcsOpenComputeSystem", "HcsCreateOperation", "HcsSaveComputeSystem",
                                   "HcsWaitForOperationResult", "HcsCloseOperation", "HcsCloseComputeSystem"]
    save_args = log[2][1]
    assert save_args[1] == 0x1234 and save_args[2] == options and log[3][1][1] == 4000
    core, _, _ = make_core(wait_hr=0x80370105, result=json.dumps({"Error": "still running"}))
    with pytest.raises(Conflict, match="HcsSaveComputeSystem.*HCS_E_INVALID_STATE.*still running"):
        core.save_compute_system("ws1", options, timeout=4)
    assert hcs.error_for(hcs.ERROR_FILE_CORRUPT, "HcsCreateComputeSystem(ws1)").remediation.startswith(
        "the saved state is damaged")

"""Backend selection: explicit wins, wrong host OS fails closed, defaults explain themselves."""

from __future__ import annotations

import pytest

from microagent.errors import InvalidRequest, Unsupported
from microagent.host.detect import HostFacts, KvmInfo, Tool
from microagent.host.selection import check_backend_runs_here, default_backend, select_backend


def facts(kind: str, firecracker: bool) -> HostFacts:
    return HostFacts(os="linux", architecture="x86_64", kvm=KvmInfo(kind != "absent", kind, f"kvm is {kind}"),
                     vhost_vsock=False, tun=True, user_namespaces=True,
                     tools={"firecracker": Tool("firecracker", "/x/firecracker" if firecracker else "")})


def test_paravirtual_kvm_defaults_to_qemu_with_reason() -> None:
    sel = default_backend(facts("paravirtual", True))
    assert sel.backend == "qemu" and "kvm is paravirtual" in sel.reason


def test_hardware_kvm_with_binary_defaults_to_firecracker() -> None:
    assert default_backend(facts("hardware", True)).backend == "firecracker"
    no_binary = default_backend(facts("hardware", False))
    assert no_binary.backend == "qemu" and "no firecracker binary" in no_binary.reason


@pytest.mark.parametrize(("backend", "needs"), [("apple-vf", "macOS"), ("windows-hyperv", "Windows")])
def test_foreign_backend_names_host_os_and_choices(backend: str, needs: str) -> None:
    with pytest.raises(Unsupported) as info:
        check_backend_runs_here(backend, "linux")
    assert needs in info.value.message and "runs Linux" in info.value.message
    assert "firecracker, qemu" in info.value.remediation


def test_unknown_backend() -> None:
    with pytest.raises(InvalidRequest, match="unknown backend 'vbox'"):
        check_backend_runs_here("vbox", "linux")


def test_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MICROAGENT_BACKEND", "firecracker")
    sel = select_backend(None, facts("paravirtual", True))
    assert sel.backend == "firecracker" and sel.explicit
    assert select_backend("qemu", facts("hardware", True)).reason == "chosen with --backend"


def test_the_boot_paths_choice_is_the_full_detections() -> None:
    """host_default_backend probes only KVM (and firecracker under hardware KVM), for the same answer."""
    from microagent.host.detect import detect
    from microagent.host.selection import host_default_backend

    assert host_default_backend() == default_backend(detect(versions=False))

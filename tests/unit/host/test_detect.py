"""KVM classification against synthetic /sys trees, and the real host."""

from __future__ import annotations

from pathlib import Path

from microagent.host.detect import detect, probe_kvm


def test_pvm_module_means_paravirtual(tmp_path: Path) -> None:
    (tmp_path / "sys" / "kvm_pvm").mkdir(parents=True)
    dev = tmp_path / "kvm"
    dev.write_text("")
    info = probe_kvm(tmp_path / "sys", dev)
    assert info.kind == "paravirtual" and "kvm_pvm" in info.detail


def test_no_dev_kvm_is_absent(tmp_path: Path) -> None:
    assert probe_kvm(tmp_path, tmp_path / "missing").kind == "absent"


def test_real_host_is_probed_consistently() -> None:
    facts = detect()
    assert facts.os == "linux"
    pvm = Path("/sys/module/kvm_pvm").exists()
    assert (facts.kvm.kind == "paravirtual") == (pvm and Path("/dev/kvm").exists())
    assert facts.tools["mke2fs"].available

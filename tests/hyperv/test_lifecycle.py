"""The Hyper-V lifecycle against FakeHcs (a recording fake, NOT HCS): call sequences and state."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hyperv.fake_hcs import FakeHcs, FakeHelpers
from microagent.errors import Conflict, Transient, Unsupported
from microagent.images.ext4 import build_ext4
from microagent.supervisors.hyperv import documents as d
from microagent.supervisors.hyperv.backend import HyperVBackend
from microagent.vmkit.types import parse_request


@pytest.fixture(scope="module")
def seed(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("seed")
    (root / "tree" / "etc").mkdir(parents=True)
    (root / "tree" / "etc" / "hostname").write_text("ws1\n")
    return build_ext4(root / "tree", root / "rootfs.ext4", key="hyperv-lifecycle", size_bytes=32 * 2**20)


@pytest.fixture
def env(tmp_path: Path, seed: Path):
    kernel = tmp_path / "Image"
    kernel.write_bytes(b"kernel")
    initrd = tmp_path / "initramfs.cpio"
    initrd.write_bytes(b"initrd")
    hcs, helpers = FakeHcs(), FakeHelpers()
    backend = HyperVBackend(hcs=hcs, helpers=helpers)

    def req(command: str, mode: str = "isolated", publish: bool = False, **cfg):
        config = {"stateDir": str(tmp_path / "state"), "kernelPath": str(kernel), "rootfsPath": str(seed),
                  "initrdPath": str(initrd), "memoryMiB": 256, "cpuCount": 1, "timeoutSeconds": 5,
                  "network": {"mode": mode, "portForwards": [{"hostPort": 18080, "guestPort": 80}] if publish else []},
                  **cfg}
        if command not in ("check", "prepare", "start", "run"):
            config = {"stateDir": config["stateDir"]}
        return parse_request({"command": command, "identity": {"requestID": "r", "runtimeID": "ws1",
                                                                "role": "workload", "backend": "windows-hyperv"},
                              "config": config})
    return backend, hcs, helpers, req, tmp_path / "state"


def runtime(state: Path) -> dict:
    return json.loads((state / "run" / "ws1" / "runtime.json").read_text())


def test_start_isolated_sequence_and_state(env) -> None:
    backend, hcs, helpers, req, state = env
    resp = backend.start(req("start"))
    assert resp.ok and resp.event.state == "running" and resp.readiness["guestReady"]["ready"]
    sid = d.compute_system_id(str(state), "ws1")
    assert hcs.names() == ["grant_vm_access"] * 4 + ["create_compute_system", "start_compute_system"]
    granted = [c[2] for c in hcs.calls if c[0] == "grant_vm_access"]
    assert granted[2] == str(state / "workspaces" / "ws1" / "rootfs.vhd") and granted[3] == str(state / "run" / "ws1" / "config.vhd")
    doc = hcs.documents[f"compute_system:{sid}"]
    assert doc == json.loads((state / "run" / "ws1" / "hcs-document.json").read_text())
    assert "NetworkAdapters" not in doc["VirtualMachine"]["Devices"]
    assert doc["VirtualMachine"]["ComputeTopology"] == {"Memory": {"SizeInMB": 256}, "Processor": {"Count": 1}}
    rt = runtime(state)
    assert rt["systemId"] == sid and rt["vmId"] == hcs.systems[sid]["RuntimeId"] and rt["state"] == "running"
    argv = helpers.spawned[0]
    assert argv[argv.index("--vm-id") + 1] == rt["vmId"] and argv[argv.index("--port") + 1] == "1024"
    config = json.loads((state / "run" / "ws1" / "config.disk").read_bytes().rstrip(b"\0"))
    assert config == {"hostname": "ws1", "env": [], "network": {"interfaces": [], "dns": [], "hosts": []}}
    with pytest.raises(Conflict, match="already running"):
        backend.start(req("start"))


def test_nat_endpoint_config_disk_publish_and_quarantine(env) -> None:
    backend, hcs, helpers, req, state = env
    backend.start(req("start", mode="nat", publish=True))
    assert hcs.names()[:2] == ["ensure_network", "create_endpoint"]
    assert hcs.documents[f"network:{d.NAT_NETWORK_ID}"] == d.nat_network_document()
    endpoint_id = next(c[2] for c in hcs.calls if c[0] == "create_endpoint")
    sid = runtime(state)["systemId"]
    adapters = hcs.documents[f"compute_system:{sid}"]["VirtualMachine"]["Devices"]["NetworkAdapters"]
    assert adapters == {"eth0": {"EndpointId": endpoint_id, "MacAddress": "00-15-5D-00-00-02"}}
    config = json.loads((state / "run" / "ws1" / "config.disk").read_bytes().rstrip(b"\0"))
    assert config["network"]["interfaces"] == [{"name": "eth0", "address": "192.168.127.2", "prefix": 24,
                                                "gateway": "192.168.127.1"}]
    assert "--publish" in helpers.spawned[0] and "127.0.0.1:18080:80" in helpers.spawned[0]
    hcs.calls.clear()
    resp = backend.quarantine(req("quarantine"))
    assert resp.event.state == "quarantined" and "HNS endpoint" in resp.event.detail
    assert hcs.names() == ["delete_endpoint"]  # no shutdown, no terminate: the VM is kept
    assert sid in hcs.systems and hcs.systems[sid]["State"] == "Running"
    assert helpers.killed and not (state / "run" / "ws1" / "control.sock").exists()
    with pytest.raises(Conflict, match="quarantined"):
        backend.start(req("start", mode="nat"))
    with pytest.raises(Conflict, match="running"):
        backend.delete(req("delete"))
    assert backend.kill(req("kill")).event.state == "stopped"


def test_stop_is_shutdown_then_failed_without_silent_terminate(env, monkeypatch) -> None:
    import microagent.supervisors.vmm as lifecycle

    monkeypatch.setattr(lifecycle, "STOP_GRACE_S", 0.2)
    backend, hcs, helpers, req, state = env
    backend.start(req("start"))
    hcs.ignore_shutdown = True
    hcs.calls.clear()
    with pytest.raises(Transient, match="still alive .* after HcsShutdownComputeSystem"):
        backend.stop(req("stop"))
    assert hcs.names() == ["shutdown_compute_system"]
    assert runtime(state)["state"] == "failed"
    hcs.calls.clear()
    assert backend.kill(req("kill")).event.state == "stopped"
    assert hcs.names() == ["terminate_compute_system"]


def test_stop_and_delete(env) -> None:
    backend, hcs, helpers, req, state = env
    backend.start(req("start"))
    hcs.calls.clear()
    resp = backend.stop(req("stop"))
    assert resp.event.state == "stopped" and resp.event.detail == "HcsShutdownComputeSystem"
    assert hcs.names() == ["shutdown_compute_system"] and not hcs.systems
    with pytest.raises(Conflict, match="not running"):
        backend.kill(req("kill"))
    assert backend.delete(req("delete")).event.detail == "deleted"
    assert not (state / "run" / "ws1").exists() and not (state / "workspaces" / "ws1").exists()


def test_inspect_reconciles_a_vanished_compute_system(env) -> None:
    backend, hcs, helpers, req, state = env
    backend.start(req("start"))
    hcs.systems.clear()  # died behind our back
    resp = backend.inspect(req("inspect"))
    assert resp.event.state == "failed" and "Absent" in resp.event.detail and resp.runtime["alive"] is False


def test_boot_failure_terminates_and_cleans_up(env) -> None:
    backend, hcs, helpers, req, state = env
    hcs.fail["start_compute_system"] = 0x8037011B
    with pytest.raises(Exception, match="0x8037011b"):
        backend.start(req("start", mode="nat"))
    assert hcs.names()[-2:] == ["terminate_compute_system", "delete_endpoint"]
    assert runtime(state)["state"] == "failed" and not hcs.systems and not hcs.endpoints


def test_helper_that_never_sees_the_guest_is_a_boot_timeout(env) -> None:
    backend, hcs, helpers, req, state = env
    helpers.ready = False
    with pytest.raises(Transient, match="boot timeout"):
        backend.start(req("start", timeoutSeconds=0.3))
    assert "terminate_compute_system" in hcs.names() and not hcs.systems


def test_connect_fails_closed_and_raw_disks_are_refused(env, tmp_path) -> None:
    backend, hcs, helpers, req, state = env
    with pytest.raises(Unsupported, match="use 'microagent connect'"):
        backend.connect(req("inspect"))
    raw = tmp_path / "data.img"
    raw.write_bytes(b"")
    with pytest.raises(Unsupported, match="not a VHD"):
        backend.check(req("check", disks=[{"name": "data", "path": str(raw), "mountpoint": "/data"}]))
    assert hcs.calls == []


def test_halt_sends_the_images_stop_signal_with_the_halt_grace(env, monkeypatch) -> None:
    """Halt is the shared lifecycle's: the image's StopSignal and the halt grace reach guest init."""
    import microagent.channel
    import microagent.supervisors.vmm as lifecycle

    backend, hcs, helpers, req, state = env
    backend.start(req("start", stopSignal=3))
    sid = runtime(state)["systemId"]
    shutdowns: list[tuple[str, dict]] = []

    class PowerOffChannel:
        """The guest side of a channel whose guest init obeys poweroff (the compute system goes)."""

        def __init__(self, path, **kwargs) -> None:
            assert str(path) == str(state / "run" / "ws1" / "control.sock")

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            pass

        def shutdown(self, action: str, **kwargs) -> None:
            shutdowns.append((action, kwargs))
            del hcs.systems[sid]

    monkeypatch.setattr(microagent.channel, "open_channel", PowerOffChannel)
    monkeypatch.setattr(lifecycle, "HALT_GRACE_S", 7.5)
    resp = backend.halt(req("halt"))
    assert resp.event.state == "halted" and runtime(state)["state"] == "halted"
    assert shutdowns == [("poweroff", {"grace_s": 7.5, "signal": 3})]
    assert "terminate_compute_system" not in hcs.names() and helpers.killed

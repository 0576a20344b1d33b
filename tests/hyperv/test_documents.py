"""The exact HCS/HCN documents the Hyper-V backend hands to the real API, checked against the schema shapes."""

from __future__ import annotations

import pytest

from microagent.supervisors.hyperv import documents as d

ROOT = r"C:\Users\u\.microagent"


def spec(**kw):
    base = dict(system_id="microagent-ws1-0123456789ab", kernel_path=ROOT + r"\kernels\windows-hyperv\x86_64\Image",
                initrd_path=ROOT + r"\kernels\windows-hyperv\x86_64\initramfs.cpio",
                rootfs_vhd=ROOT + r"\workspaces\ws1\rootfs.vhd", config_vhd=ROOT + r"\ws1\config.vhd",
                hostname="ws1", memory_mib=512, cpu_count=2)
    base.update(kw)
    return d.VmSpec(**base)


CMDLINE = ("console=ttyS0 panic=-1 quiet microagent.root=/dev/sda microagent.channel=vsock:1024 "
           "microagent.hostname=ws1 microagent.shutdown=poweroff microagent.config=/dev/sdb")
HVSOCKET = {"HvSocketConfig": {
    "DefaultBindSecurityDescriptor": "D:P", "DefaultConnectSecurityDescriptor": "D:P",
    "ServiceTable": {"00000400-facb-11e6-bd58-64006a7986d3": {
        "ConnectSecurityDescriptor": "D:P(A;;FA;;;SY)(A;;FA;;;BA)(A;;FA;;;HA)", "BindSecurityDescriptor": "D:P"}}}}


def test_service_guid_for_port_1024() -> None:
    assert d.service_id(1024) == "00000400-facb-11e6-bd58-64006a7986d3"
    assert d.service_id(0xFFFFFFFF) == "ffffffff-facb-11e6-bd58-64006a7986d3"
    with pytest.raises(ValueError):
        d.service_id(-1)


def test_isolated_document_exact() -> None:
    assert d.compute_system_document(spec()) == {
        "Owner": "microagent",
        "SchemaVersion": {"Major": 2, "Minor": 1},
        "ShouldTerminateOnLastHandleClosed": False,
        "VirtualMachine": {
            "StopOnReset": True,
            "Chipset": {"LinuxKernelDirect": {
                "KernelFilePath": ROOT + r"\kernels\windows-hyperv\x86_64\Image",
                "InitRdPath": ROOT + r"\kernels\windows-hyperv\x86_64\initramfs.cpio",
                "KernelCmdLine": CMDLINE}},
            "ComputeTopology": {"Memory": {"SizeInMB": 512}, "Processor": {"Count": 2}},
            "Devices": {
                "Scsi": {"0": {"Attachments": {
                    "0": {"Type": "VirtualDisk", "Path": ROOT + r"\workspaces\ws1\rootfs.vhd", "ReadOnly": False},
                    "1": {"Type": "VirtualDisk", "Path": ROOT + r"\ws1\config.vhd", "ReadOnly": True}}}},
                "HvSocket": HVSOCKET,
                "ComPorts": {"0": {"NamedPipe": r"\\.\pipe\microagent-ws1-0123456789ab-com1"}},
            },
        },
    }


def test_nat_document_adds_exactly_one_adapter() -> None:
    net = d.NetworkAttachment("5d1d5a5e-2c4e-4a4a-9d43-2a8c3f0e6b11", "00-15-5D-01-02-03")
    doc = d.compute_system_document(spec(network=net))
    assert doc["VirtualMachine"]["Devices"]["NetworkAdapters"] == {
        "eth0": {"EndpointId": "5d1d5a5e-2c4e-4a4a-9d43-2a8c3f0e6b11", "MacAddress": "00-15-5D-01-02-03"}}
    isolated = d.compute_system_document(spec())
    assert "NetworkAdapters" not in isolated["VirtualMachine"]["Devices"]


def test_extra_disks_follow_config_disk_and_kernel_args_append() -> None:
    doc = d.compute_system_document(spec(
        extra_disks=(d.DiskAttachment(r"D:\data.vhdx", False), d.DiskAttachment(r"D:\ref.vhd", True)),
        kernel_args="loglevel=7", initrd_path=""))
    att = doc["VirtualMachine"]["Devices"]["Scsi"]["0"]["Attachments"]
    assert list(att) == ["0", "1", "2", "3"]
    assert att["2"] == {"Type": "VirtualDisk", "Path": r"D:\data.vhdx", "ReadOnly": False}
    assert att["3"] == {"Type": "VirtualDisk", "Path": r"D:\ref.vhd", "ReadOnly": True}
    kernel = doc["VirtualMachine"]["Chipset"]["LinuxKernelDirect"]
    assert "InitRdPath" not in kernel
    assert kernel["KernelCmdLine"] == CMDLINE + " loglevel=7"


def test_hns_network_and_endpoint_exact() -> None:
    assert d.nat_network_document() == {
        "SchemaVersion": {"Major": 2, "Minor": 0}, "Owner": "microagent", "Name": "microagent-nat",
        "Type": "NAT", "Flags": 0,
        "Ipams": [{"Type": "Static", "Subnets": [{"IpAddressPrefix": "192.168.127.0/24", "Routes": [
            {"NextHop": "192.168.127.1", "DestinationPrefix": "0.0.0.0/0"}]}]}]}
    assert d.endpoint_document(d.NAT_NETWORK_ID, "ws1") == {
        "SchemaVersion": {"Major": 2, "Minor": 0}, "Owner": "microagent", "Name": "microagent-ws1",
        "HostComputeNetwork": d.NAT_NETWORK_ID,
        "Routes": [{"NextHop": "192.168.127.1", "DestinationPrefix": "0.0.0.0/0"}],
        "Dns": {"ServerList": ["1.1.1.1", "8.8.8.8"]}}


def test_endpoint_address_and_guest_config() -> None:
    props = {"IpConfigurations": [{"IpAddress": "192.168.127.9", "PrefixLength": 24}], "MacAddress": "00:15:5d:aa:bb:cc"}
    assert d.endpoint_address(props) == ("192.168.127.9", 24, "00-15-5D-AA-BB-CC")
    with pytest.raises(ValueError):
        d.endpoint_address({"IpConfigurations": []})
    assert d.guest_network_config("192.168.127.9")["interfaces"] == [
        {"name": "eth0", "address": "192.168.127.9", "prefix": 24, "gateway": "192.168.127.1"}]
    assert d.guest_network_config(None) == {"interfaces": [], "dns": [], "hosts": []}


@pytest.mark.parametrize("mutate, message", [
    (lambda doc: doc["VirtualMachine"].update(Chipsett={}), "unknown field 'Chipsett'"),
    (lambda doc: doc["VirtualMachine"]["ComputeTopology"]["Memory"].update(SizeInMB="512"), "must be an integer"),
    (lambda doc: doc["VirtualMachine"]["Devices"]["Scsi"]["0"]["Attachments"]["0"].update(Type="Vhd"),
     "must be one of"),
    (lambda doc: doc["VirtualMachine"]["Devices"]["HvSocket"]["HvSocketConfig"]["ServiceTable"].update(
        {"port-1024": {}}), "does not match"),
    (lambda doc: doc["VirtualMachine"]["Chipset"]["LinuxKernelDirect"].pop("KernelFilePath"), "is required"),
    (lambda doc: doc["VirtualMachine"]["Devices"].update(
        NetworkAdapters={"eth0": {"EndpointId": "not-a-guid"}}), "must match"),
])
def test_shape_checker_rejects_malformed_documents(mutate, message) -> None:
    doc = d.compute_system_document(spec())
    mutate(doc)
    with pytest.raises(d.ShapeError, match=message):
        d.check_shape(doc, d.COMPUTE_SYSTEM_SHAPE)


def test_ids_are_stable_and_distinct_per_state_dir() -> None:
    a = d.compute_system_id(r"C:\a", "ws1")
    assert a == d.compute_system_id(r"C:\a", "ws1") and a.startswith("microagent-ws1-")
    assert a != d.compute_system_id(r"C:\b", "ws1")
    assert d.scsi_device(0) == "/dev/sda" and d.scsi_device(2) == "/dev/sdc"


def test_save_options_and_restore_state() -> None:
    assert d.save_options(r"C:\snap\state") == {"SaveType": "ToFile", "SaveStateFilePath": r"C:\snap\state"}
    with pytest.raises(d.ShapeError, match="SaveType"):
        d.check_shape({"SaveType": "ToTape"}, d.SAVE_OPTIONS_SHAPE)
    doc = d.compute_system_document(spec(restore_from=r"C:\snap\state"))
    assert doc["VirtualMachine"]["RestoreState"] == {"SaveStateFilePath": r"C:\snap\state"}
    assert "RestoreState" not in d.compute_system_document(spec())["VirtualMachine"]


def test_device_layout_ignores_files_and_names_but_not_devices() -> None:
    base = d.device_layout(d.compute_system_document(spec()))
    moved = d.device_layout(d.compute_system_document(spec(system_id="microagent-fork-0123456789ab",
                                                            rootfs_vhd=r"D:\fork\rootfs.vhd", hostname="fork")))
    assert moved == base  # a fork: other files, pipe name and hostname, the same hardware
    assert d.device_layout(d.compute_system_document(spec(memory_mib=1024))) != base
    assert d.device_layout(d.compute_system_document(spec(extra_disks=(d.DiskAttachment(r"C:\x.vhdx", True),)))) != base

"""Hyper-V socket address packing (SOCKADDR_HV) and the no-AF_HYPERV refusal."""

from __future__ import annotations

import socket
import struct

import pytest

from microagent.errors import Unsupported
from microagent.supervisors.hyperv import hvsock
from microagent.supervisors.hyperv.documents import service_id

VM = "5d1d5a5e-2c4e-4a4a-9d43-2a8c3f0e6b11"


def test_sockaddr_layout() -> None:
    raw = hvsock.pack_sockaddr_hv(VM, service_id(1024))
    assert len(raw) == 36
    assert struct.unpack("<HH", raw[:4]) == (34, 0)
    assert raw[4:8] == bytes.fromhex("5e5a1d5d")  # Data1 little-endian
    assert raw[8:10] == bytes.fromhex("4e2c") and raw[10:12] == bytes.fromhex("4a4a")
    assert raw[12:20] == bytes.fromhex("9d432a8c3f0e6b11")
    assert raw[20:24] == (1024).to_bytes(4, "little")  # the vsock port is Data1 of the service id
    assert raw[24:36] == bytes.fromhex("cbfa" "e611" "bd5864006a7986d3")
    assert hvsock.unpack_sockaddr_hv(raw) == (VM, service_id(1024))


def test_bad_addresses() -> None:
    with pytest.raises(ValueError):
        hvsock.pack_sockaddr_hv("nope", service_id(1))
    with pytest.raises(ValueError):
        hvsock.unpack_sockaddr_hv(b"\x02\x00" + bytes(34))


@pytest.mark.skipif(hasattr(socket, "AF_HYPERV"), reason="this Python has AF_HYPERV")
def test_connect_refuses_without_af_hyperv() -> None:
    with pytest.raises(Unsupported, match="AF_HYPERV"):
        hvsock.connect(VM, service_id(1024))

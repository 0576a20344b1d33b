"""The server name of a TLS ClientHello (RFC 8446 4.1.2, RFC 6066 3), read without a TLS library.

The proxy reads what the guest sends after ``CONNECT host:443`` and
compares this name with ``host``, so a tunnel allowed for one name cannot
carry a TLS session to another server behind the same address.
"""

from __future__ import annotations

#: the most the proxy reads looking for a ClientHello (records of up to 16 KiB, a few of them)
MAX_HELLO_BYTES = 64 * 1024


class NotClientHello(ValueError):
    """The bytes are not (the start of) a TLS ClientHello."""


def handshake_needed(data: bytes) -> int:
    """How many more bytes a complete ClientHello needs (0: ``data`` holds it).

    :raises NotClientHello: the bytes are not TLS handshake records.
    """
    return _handshake_bytes(data)[1]


def server_name(data: bytes) -> str | None:
    """The ``host_name`` in the ClientHello's server_name extension, lower-cased; ``None`` if absent.

    :raises NotClientHello: malformed or incomplete.
    """
    body, need = _handshake_bytes(data)
    if need:
        raise NotClientHello("incomplete ClientHello")
    if body[0] != 1:
        raise NotClientHello("the first handshake message is not a ClientHello")
    length = int.from_bytes(body[1:4], "big")
    r = _Reader(body[4:4 + length])
    r.take(2 + 32)  # legacy_version, random
    r.take(r.int(1))  # session id
    r.take(r.int(2))  # cipher suites
    r.take(r.int(1))  # compression methods
    if r.done():
        return None
    ext = _Reader(r.take(r.int(2)))
    while not ext.done():
        kind, data_ = ext.int(2), ext.take(ext.int(2))
        if kind != 0:
            continue
        names = _Reader(data_)
        names = _Reader(names.take(names.int(2)))
        while not names.done():
            name_type, name = names.int(1), names.take(names.int(2))
            if name_type == 0:
                try:
                    return name.decode("ascii").lower().rstrip(".")
                except UnicodeDecodeError:
                    raise NotClientHello("server name is not ASCII") from None
        return None
    return None


def _handshake_bytes(data: bytes) -> tuple[bytes, int]:
    """The handshake bytes carried by the complete records in ``data``, and how many more are needed."""
    body = bytearray()
    pos = 0
    while True:
        if len(data) - pos < 5:
            need = 5 - (len(data) - pos)
            break
        if data[pos] != 0x16 or data[pos + 1] != 3:
            raise NotClientHello("not a TLS handshake record")
        rec_len = int.from_bytes(data[pos + 3:pos + 5], "big")
        if rec_len == 0 or rec_len > 16384 + 256:
            raise NotClientHello("bad TLS record length")
        if len(data) - pos - 5 < rec_len:
            need = rec_len - (len(data) - pos - 5)
            break
        body += data[pos + 5:pos + 5 + rec_len]
        pos += 5 + rec_len
        if len(body) >= 4:
            total = 4 + int.from_bytes(body[1:4], "big")
            if len(body) >= total:
                return bytes(body), 0
    if len(data) + need > MAX_HELLO_BYTES:
        raise NotClientHello("ClientHello larger than the proxy reads")
    return bytes(body), need


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise NotClientHello("truncated ClientHello")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def int(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def done(self) -> bool:
        return self.pos >= len(self.data)

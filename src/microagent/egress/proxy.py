"""One proxied connection: read the request, decide, dial the checked address, splice, audit.

The guest side is any duplex with ``recv(n, timeout)``, ``sendall(data)``,
``shutdown_write()`` and ``close()`` (an accepted channel session,
:class:`~microagent.channel.forward.ForwardStream`).  Two request forms:

- ``CONNECT host:port``: a tunnel; answered ``200`` once the upstream is
  connected.  To port 443 the guest's first bytes must be a TLS ClientHello
  naming ``host`` (SNI), or the tunnel is closed before a byte goes up.
- ``METHOD http://host[:port]/path``: plain HTTP; sent upstream in origin
  form with ``Host`` set to the URL's authority and ``Connection: close``
  (one request per connection, so a kept-alive connection cannot switch
  hosts), proxy headers dropped.
- ``METHOD /https/host[:port]/path`` (the guest calls the proxy port as a
  server, ``http://127.0.0.1:3128/https/host/...``): the broker; the same
  request goes to ``https://host[:port]/path``, over TLS the host verifies
  with its trust store.  How a guest reaches HTTPS APIs with a secret.

Secrets (:mod:`microagent.egress.secrets`): a request head carrying a
placeholder is refused unless its host is bound to that secret; toward a
bound host the placeholder is replaced by the value in the header lines
(plain HTTP and the broker; a CONNECT tunnel is opaque, so never).

Anything refused gets ``403`` (``400`` for what is not a proxy request,
``502`` when the upstream cannot be reached) with the reason in the body.
Every connection ends as one audit record.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any, Protocol

from microagent.egress import secrets, sni
from microagent.egress.audit import AuditLog
from microagent.egress.policy import EgressPolicy, normalize_host
from microagent.errors import InvalidRequest

#: the request head (line and headers) the proxy reads at most
MAX_HEAD_BYTES = 64 * 1024
#: seconds the guest has to send its request head, or its ClientHello
HEAD_TIMEOUT_S = 30.0
DIAL_TIMEOUT_S = 10.0
#: seconds a refused client has to read its answer and close
ANSWER_LINGER_S = 5.0
CHUNK = 32 * 1024
log = logging.getLogger(__name__)
_HOP_HEADERS = {b"proxy-connection", b"proxy-authorization", b"connection", b"keep-alive", b"host"}
#: what the broker also drops: it sends the body itself, by Content-Length
_BROKER_DROPPED = _HOP_HEADERS | {b"expect", b"te", b"upgrade"}
BROKER_PREFIX = "/https/"


class GuestStream(Protocol):
    def recv(self, bufsize: int = ..., timeout: float | None = ...) -> bytes: ...
    def sendall(self, data: bytes, timeout: float | None = ...) -> None: ...
    def shutdown_write(self) -> None: ...
    def close(self) -> None: ...


class Refused(Exception):
    """The request is not let through; ``status`` and the reason go back to the guest."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


_STATUS_TEXT = {400: "Bad Request", 403: "Forbidden", 502: "Bad Gateway"}


def serve(guest: GuestStream, policy: Callable[[], EgressPolicy], audit: AuditLog,
          value_of: Callable[[str], bytes | None] = lambda name: None) -> None:
    """Handle one guest connection to the end; never raises.

    ``value_of(name)``: a secret's value (:class:`~microagent.egress.vault.Vault`), or ``None``.
    """
    record: dict[str, Any] = {"host": None, "port": None, "address": None, "method": None}
    upstream: socket.socket | None = None
    try:
        head, rest = _read_head(guest)
        method, host, port, upstream_head, broker = _parse_request(head)
        record.update(method=method, host=host, port=port)
        if broker:
            record["broker"] = True
        current = policy()
        refusal = current.refusal(host, port)
        if refusal is not None:
            raise Refused(403, refusal)
        upstream_head = _apply_secrets(current, head, upstream_head, host, method, value_of, record)
        address = _resolve_checked(current, host, port)
        record["address"] = address
        if broker:
            sent, received = _broker(guest, address, host, port, upstream_head, rest)
            audit.write(**record, decision="allowed", bytesSent=sent, bytesReceived=received)
            return
        if method == "CONNECT" and port == 443:
            # The server name comes after our 200: check it before anything reaches the upstream.
            record["tunnel"] = True
            guest.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            rest = _check_sni(guest, rest, host)
            upstream = _dial(address, port)
        elif method == "CONNECT":
            upstream = _dial(address, port)
            guest.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            upstream = _dial(address, port)
            rest = upstream_head + rest
        if rest:
            upstream.sendall(rest)
        sent, received = _splice(guest, upstream)
        record.pop("tunnel", None)
        audit.write(**record, decision="allowed", bytesSent=len(rest) + sent, bytesReceived=received)
    except Refused as exc:
        tunnel = record.pop("tunnel", False)
        audit.write(**record, decision="refused", reason=exc.reason)
        if not tunnel:  # once the tunnel is up, HTTP answers are over: it is just closed
            _answer(guest, exc.status, exc.reason)
    except Exception as exc:  # noqa: BLE001 - the guest went away, the channel closed: log and end
        record.pop("tunnel", None)
        audit.write(**record, decision="error", reason=f"{type(exc).__name__}: {exc}"[:300])
    finally:
        if upstream is not None:
            upstream.close()
        guest.close()


def _read_head(guest: GuestStream) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > MAX_HEAD_BYTES:
            raise Refused(400, f"request head larger than {MAX_HEAD_BYTES} bytes")
        chunk = guest.recv(CHUNK, HEAD_TIMEOUT_S)
        if not chunk:
            raise ConnectionError("the guest closed before sending a request")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def _apply_secrets(policy: EgressPolicy, head: bytes, upstream_head: bytes, host: str, method: str,
                   value_of: Callable[[str], bytes | None], record: dict[str, Any]) -> bytes:
    """The head to send with placeholders replaced; refuses a placeholder toward an unbound host."""
    try:
        # all the guest sent is checked (even headers not forwarded): a placeholder is refused to any other host
        secrets.rewrite_head(head, host, policy.secrets, None, substitute=False)
        used = [b.name for b in policy.secrets if b.placeholder.encode() in upstream_head]
        if used:
            record["secrets"] = used
        return secrets.rewrite_head(upstream_head, host, policy.secrets, lambda b: value_of(b.name),
                                    substitute=method != "CONNECT")
    except secrets.SecretRefused as exc:
        raise Refused(403, str(exc)) from None


def _parse_request(head: bytes) -> tuple[str, str, int, bytes, bool]:
    """``(method, host, port, upstream head, broker)``; the head is empty for CONNECT."""
    line, *headers = head.split(b"\r\n")
    parts = line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        raise Refused(400, "not an HTTP/1.x proxy request")
    method, target, version = (p.decode("latin-1") for p in parts)
    if method == "CONNECT":
        host, port = _split_authority(target, None)
        return method, host, port, b"", False
    if target.startswith(BROKER_PREFIX):
        authority, _, path = target[len(BROKER_PREFIX):].partition("/")
        host, port = _split_authority(authority, 443)
        kept = [h for h in headers if h.split(b":", 1)[0].strip().lower() not in _BROKER_DROPPED]
        if any(h.split(b":", 1)[0].strip().lower() == b"transfer-encoding" for h in kept):
            raise Refused(400, "the broker takes request bodies with Content-Length, not Transfer-Encoding")
        out = [f"{method} /{path} {version}".encode("latin-1"), b"Host: " + authority.encode("latin-1"),
               *kept, b"Connection: close"]
        return method, host, port, b"\r\n".join(out) + b"\r\n\r\n", True
    if not target.lower().startswith("http://"):
        raise Refused(400, "plain requests need an absolute http:// URL; use CONNECT for https, or "
                           f"the broker: http://127.0.0.1:PORT{BROKER_PREFIX}HOST/PATH")
    authority, _, path = target[7:].partition("/")
    host, port = _split_authority(authority.rpartition("@")[2], 80)
    kept = [h for h in headers if h.split(b":", 1)[0].strip().lower() not in _HOP_HEADERS]
    host_header = authority.rpartition("@")[2]
    out = [f"{method} /{path} {version}".encode("latin-1"), b"Host: " + host_header.encode("latin-1"),
           *kept, b"Connection: close"]
    return method, host, port, b"\r\n".join(out) + b"\r\n\r\n", False


def _split_authority(authority: str, default_port: int | None) -> tuple[str, int]:
    if authority.startswith("["):
        host, _, port_text = authority[1:].partition("]")
        port_text = port_text[1:] if port_text.startswith(":") else ""
    else:
        host, _, port_text = authority.rpartition(":") if ":" in authority else (authority, "", "")
    if not port_text and default_port is None:
        raise Refused(400, f"CONNECT needs host:port, not {authority!r}")
    try:
        port = int(port_text) if port_text else int(default_port or 0)
        if not 1 <= port <= 65535:
            raise ValueError
        return normalize_host(host), port
    except (ValueError, InvalidRequest):
        raise Refused(400, f"bad host or port in {authority!r}") from None


def _resolve_checked(policy: EgressPolicy, host: str, port: int) -> str:
    """Resolve once; the first address the policy lets through (what is dialed, exactly)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise Refused(502, f"cannot resolve {host}: {exc}") from None
    refusals = []
    for family, _, _, _, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        address = str(sockaddr[0])
        why = policy.address_refusal(address)
        if why is None:
            return address
        refusals.append(why)
    raise Refused(403, f"{host}: " + ("; ".join(dict.fromkeys(refusals)) or "no IP address"))


def _dial(address: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(DIAL_TIMEOUT_S)
    try:
        sock.connect((address, port))
    except OSError as exc:
        sock.close()
        raise Refused(502, f"cannot connect to {address}:{port}: {exc.strerror or exc}") from None
    sock.settimeout(None)
    return sock


_tls_context: ssl.SSLContext | None = None


def tls_context() -> ssl.SSLContext:
    """The broker's client context: the host's trust store (OpenSSL's defaults, so
    ``SSL_CERT_FILE``/``SSL_CERT_DIR`` in the helper's environment apply), hostname checked."""
    global _tls_context
    if _tls_context is None:
        _tls_context = ssl.create_default_context()
    return _tls_context


def _content_length(head: bytes) -> int:
    """The body length the head announces (0: none); one Content-Length, a decimal number."""
    values = [line.partition(b":")[2].strip() for line in head.split(b"\r\n")[1:]
              if line.partition(b":")[0].strip().lower() == b"content-length"]
    if not values:
        return 0
    if len(values) > 1 or not values[0].isdigit():
        raise Refused(400, "a request needs at most one Content-Length, a decimal number")
    return int(values[0])


def _broker(guest: GuestStream, address: str, host: str, port: int, head: bytes,
            rest: bytes) -> tuple[int, int]:
    """Send the request over TLS to ``host`` at ``address``, relay the answer; ``(sent, received)``.

    One direction at a time (a TLS connection is not shared between threads): the body
    (by Content-Length) goes up, then the answer comes back until the upstream closes.
    """
    length = _content_length(head)  # checked before anything is dialed
    raw = _dial(address, port)
    try:
        raw.settimeout(DIAL_TIMEOUT_S)
        tls = tls_context().wrap_socket(raw, server_hostname=host)
    except (ssl.SSLError, OSError) as exc:
        raw.close()
        raise Refused(502, f"TLS to {host}:{port} failed: {getattr(exc, 'reason', None) or exc}") from None
    with tls:
        body = rest[:length]
        tls.settimeout(HEAD_TIMEOUT_S)
        tls.sendall(head + body)
        sent = len(head) + len(body)
        while sent - len(head) < length:
            chunk = guest.recv(min(CHUNK, length - (sent - len(head))), HEAD_TIMEOUT_S)
            if not chunk:
                raise ConnectionError("the guest closed before sending its whole body")
            tls.sendall(chunk)
            sent += len(chunk)
        tls.settimeout(None)
        received = 0
        while True:
            try:
                chunk = tls.recv(CHUNK)
            except ssl.SSLEOFError:  # closed without close_notify: the answer ends here anyway
                chunk = b""
            if not chunk:
                break
            guest.sendall(chunk)
            received += len(chunk)
        guest.shutdown_write()
    return sent, received


def _check_sni(guest: GuestStream, data: bytes, host: str) -> bytes:
    """Read the ClientHello and require its server name to be ``host``; returns the bytes read."""
    try:
        while (need := sni.handshake_needed(data)) > 0:
            chunk = guest.recv(max(need, 1), HEAD_TIMEOUT_S)
            if not chunk:
                raise Refused(403, "the guest closed before its TLS ClientHello")
            data += chunk
        name = sni.server_name(data)
    except sni.NotClientHello as exc:
        raise Refused(403, f"a tunnel to port 443 must start with a TLS ClientHello ({exc})") from None
    if name != host:
        raise Refused(403, f"TLS server name {name!r} does not match the CONNECT host {host}")
    return data


def _answer(guest: GuestStream, status: int, reason: str) -> None:
    body = f"microagent egress: {reason}\n".encode()
    head = (f"HTTP/1.1 {status} {_STATUS_TEXT.get(status, 'Error')}\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    try:
        guest.sendall(head + body)
        guest.shutdown_write()
        # Closing the session now would drop what guest init has not written to the
        # socket yet: wait for the client's end (it closes once it read the answer).
        drained = 0
        while drained < MAX_HEAD_BYTES and (chunk := guest.recv(CHUNK, ANSWER_LINGER_S)):
            drained += len(chunk)
    except Exception as exc:  # noqa: BLE001 - the guest is gone already; the audit line says what it asked
        log.debug("egress: answering %d failed: %r", status, exc)


def _splice(guest: GuestStream, upstream: socket.socket) -> tuple[int, int]:
    """Copy both ways until both directions end; ``(bytes to upstream, bytes to guest)``."""
    counts = [0, 0]

    def up() -> None:
        try:
            while chunk := guest.recv(CHUNK):
                upstream.sendall(chunk)
                counts[0] += len(chunk)
            upstream.shutdown(socket.SHUT_WR)
        except Exception:  # noqa: BLE001 - either end failed: end both
            _shut(upstream)
            guest.close()

    thread = threading.Thread(target=up, daemon=True, name="egress-up")
    thread.start()
    try:
        while chunk := upstream.recv(CHUNK):
            guest.sendall(chunk)
            counts[1] += len(chunk)
        guest.shutdown_write()
    except Exception:  # noqa: BLE001
        _shut(upstream)
        guest.close()
    thread.join()
    return counts[0], counts[1]


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass

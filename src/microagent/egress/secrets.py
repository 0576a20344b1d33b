"""Secrets for the egress proxy (pure: no I/O but reading a secret's source).

A secret has a name (the guest's environment variable), a source on the host
(an environment variable or a file, read when the workspace starts) and the
hosts its value may go to.  The guest only ever sees the secret's
*placeholder* (``microagent-secret-`` and 32 hex digits, unique per
workspace); the proxy replaces the placeholder with the value in the request
headers of requests to a bound host, and refuses a request that carries a
placeholder to any other host (docs/egress.md, "Secrets").

Nothing here puts a value into an error message, a log line or the wire form
of a binding: only names, sources and hosts.
"""

from __future__ import annotations

import os
import re
import secrets as random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from microagent.errors import InvalidRequest
from microagent.egress.policy import parse_host_pattern

PLACEHOLDER_PREFIX = "microagent-secret-"
#: a placeholder, as the proxy looks for it in request heads
PLACEHOLDER_RE = re.compile(rb"microagent-secret-[0-9a-f]{32}")
#: the longest value a secret may have (a header value: tokens, keys, JWTs)
MAX_VALUE_BYTES = 16 * 1024
MAX_SECRETS = 32
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
# what a header value may hold (RFC 9110 field-value): no control characters but tab
_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]+")


@dataclass(frozen=True)
class SecretBinding:
    """One secret: where its value comes from and where it may go; never the value."""

    name: str
    #: ``env:VAR`` or ``file:/absolute/path``
    source: str
    #: exact names or ``.suffix`` entries, as on the allowlist
    hosts: tuple[str, ...]
    placeholder: str

    def bound_to(self, host: str) -> bool:
        return any(host.endswith(h) if h.startswith(".") else host == h for h in self.hosts)

    def to_wire(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "hosts": list(self.hosts),
                "placeholder": self.placeholder}

    @classmethod
    def from_wire(cls, doc: Mapping[str, Any]) -> SecretBinding:
        """From a manifest or ``egress.json``; checked like user input.

        :raises InvalidRequest: a malformed entry.
        """
        try:
            name, source, placeholder = str(doc["name"]), str(doc.get("source") or ""), str(doc["placeholder"])
            hosts = tuple(parse_host_pattern(str(h)) for h in doc.get("hosts") or ())
        except (KeyError, TypeError):
            raise InvalidRequest(f"malformed secret entry {sorted(doc)}", "recreate the workspace") from None
        if not _NAME.fullmatch(name) or not PLACEHOLDER_RE.fullmatch(placeholder.encode()) or not hosts:
            raise InvalidRequest(f"malformed secret entry {name!r}", "recreate the workspace")
        return cls(name, source, hosts, placeholder)


def new_placeholder() -> str:
    return PLACEHOLDER_PREFIX + random.token_hex(16)


def parse_options(secrets: Sequence[str], secret_hosts: Sequence[str],
                  cwd: Path | None = None) -> tuple[SecretBinding, ...]:
    """``--secret NAME[=@env:VAR|=@file:PATH]`` and ``--secret-host NAME=HOST`` as bindings,
    each with a new placeholder.  File paths are made absolute (against ``cwd``).

    :raises InvalidRequest: a bad name or source, a name given twice, a ``--secret-host``
        for a secret not given, a secret without a host, a malformed host.
    """
    if isinstance(secrets, str) or isinstance(secret_hosts, str):
        raise InvalidRequest("secrets and secret hosts are lists", "pass a list, e.g. ['API_KEY']")
    sources: dict[str, str] = {}
    for entry in secrets:
        name, source = _parse_secret(str(entry), cwd or Path.cwd())
        if name in sources:
            raise InvalidRequest(f"secret {name} is given twice", "give each --secret once")
        sources[name] = source
    if len(sources) > MAX_SECRETS:
        raise InvalidRequest(f"{len(sources)} secrets; at most {MAX_SECRETS}", "bind fewer secrets")
    hosts: dict[str, list[str]] = {name: [] for name in sources}
    for entry in secret_hosts:
        name, sep, host = str(entry).partition("=")
        if not sep or not host:
            raise InvalidRequest(f"--secret-host {entry!r} is not NAME=HOST",
                                 "bind a secret to a host, e.g. --secret-host API_KEY=api.example.com")
        if name not in hosts:
            raise InvalidRequest(f"--secret-host {entry!r} names no --secret {name}",
                                 f"add --secret {name} (its value from the host's ${name}), or fix the name")
        hosts[name].append(parse_host_pattern(host))
    for name, bound in hosts.items():
        if not bound:
            raise InvalidRequest(f"secret {name} is bound to no host, so its value could never be used",
                                 f"add --secret-host {name}=HOST (the host its value may go to)")
    return tuple(SecretBinding(name, sources[name], tuple(dict.fromkeys(hosts[name])), new_placeholder())
                 for name in sources)


def _parse_secret(entry: str, cwd: Path) -> tuple[str, str]:
    name, sep, spec = entry.partition("=")
    if not _NAME.fullmatch(name):
        raise InvalidRequest(f"--secret {entry.partition('=')[0]!r}: not a valid name",
                             "a secret name is an environment variable name: letters, digits and _ "
                             "(not starting with a digit), at most 64 characters")
    if not sep:
        return name, f"env:{name}"
    if spec.startswith("@env:") and _NAME.fullmatch(spec[5:]):
        return name, f"env:{spec[5:]}"
    if spec.startswith("@file:") and len(spec) > 6:
        return name, f"file:{(cwd / spec[6:]).absolute()}"
    # never echo what follows '=': it may be a value pasted by mistake
    raise InvalidRequest(f"--secret {name}=...: the source must be @env:VAR or @file:PATH",
                         f"give --secret {name} (from ${name}), --secret {name}=@env:VAR or "
                         f"--secret {name}=@file:PATH; a value itself is never taken on the command line")


def read_values(bindings: Sequence[SecretBinding],
                environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Each secret's value, read from its source now.

    :raises InvalidRequest: an unset variable, an unreadable file, or a value that cannot be a
        header value (empty, control characters, longer than ``MAX_VALUE_BYTES``).
    """
    env = os.environ if environ is None else environ
    out: dict[str, str] = {}
    for b in bindings:
        kind, _, where = b.source.partition(":")
        if kind == "env":
            if where not in env:
                raise InvalidRequest(f"secret {b.name}: the environment variable {where} is not set",
                                     f"export {where} in this shell, or take the value from a file with "
                                     f"--secret {b.name}=@file:PATH")
            value = env[where]
        elif kind == "file":
            value = _read_file(b.name, Path(where))
        else:
            raise InvalidRequest(f"secret {b.name}: unknown source {kind!r}", "recreate the workspace")
        check_value(b.name, value)
        out[b.name] = value
    return out


def _read_file(name: str, path: Path) -> str:
    try:
        if not path.is_file():
            raise InvalidRequest(f"secret {name}: {path} is not a regular file",
                                 f"give a file holding the value: --secret {name}=@file:PATH")
        if path.stat().st_size > MAX_VALUE_BYTES + 2:
            raise InvalidRequest(f"secret {name}: {path} is larger than {MAX_VALUE_BYTES} bytes",
                                 "a secret is one header value (a key or a token)")
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidRequest(f"secret {name}: cannot read {path}: {exc.strerror}",
                             "make the file readable by this user") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest(f"secret {name}: {path} is not UTF-8 text", "store the value as text") from None
    return text[:-1] if text.endswith("\n") else text  # the newline an editor adds is not the value


def check_value(name: str, value: str) -> None:
    if not value:
        raise InvalidRequest(f"secret {name}: the value is empty", "give the secret a value")
    try:
        raw = value.encode("latin-1")
    except UnicodeEncodeError:
        raise InvalidRequest(f"secret {name}: the value has characters a header cannot carry",
                             "use an ASCII value") from None
    if len(raw) > MAX_VALUE_BYTES or not _VALUE.fullmatch(value):
        raise InvalidRequest(f"secret {name}: the value is longer than {MAX_VALUE_BYTES} bytes or holds "
                             "control characters (a newline inside it?)",
                             "a secret is one header value: a single line of text")


class SecretRefused(Exception):
    """The request is refused because of a placeholder it carries; the reason names no value."""


def rewrite_head(head: bytes, host: str, bindings: Sequence[SecretBinding],
                 value_of: Any, *, substitute: bool = True) -> bytes:
    """``head`` (request line and header lines) with each bound placeholder replaced in the
    header lines by its value, for a request to ``host``.

    The request line is never rewritten.  ``value_of(binding)`` returns the value as bytes,
    or ``None`` when the proxy has none.  ``substitute=False`` (a tunnel): only checked.

    :raises SecretRefused: the head carries a placeholder of a secret not bound to ``host``,
        or one that is no secret of this workspace, or one whose value the proxy does not have.
    """
    found = set(PLACEHOLDER_RE.findall(head))
    if not found:
        return head
    by_placeholder = {b.placeholder.encode(): b for b in bindings}
    for token in sorted(found):
        binding = by_placeholder.get(token)
        if binding is None:
            raise SecretRefused("the request carries a secret placeholder that is not one of this "
                                "workspace's secrets")
        if not binding.bound_to(host):
            raise SecretRefused(f"the request carries the placeholder of secret {binding.name}, "
                                f"which is not bound to {host}")
    if not substitute:
        return head
    line, sep, headers = head.partition(b"\r\n")
    for token in sorted(found):
        if token not in headers:
            continue
        binding = by_placeholder[token]
        value = value_of(binding)
        if value is None:
            raise SecretRefused(f"the egress proxy has no value for secret {binding.name} (its helper "
                                "restarted since the workspace started); supply it with "
                                f"'microagent egress set WORKSPACE --secret {binding.name} ...' or restart "
                                "the workspace")
        headers = headers.replace(token, value)
    return line + sep + headers

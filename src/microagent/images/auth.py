"""Registry credentials and authentication challenges.

Owns reading credentials (``$REGISTRY_AUTH_FILE`` → ``<state>/auth.json`` →
``~/.microagent/auth.json``; Docker-config-like ``{"auths": {"host[:port]":
{"auth": base64("user:pass")}}}``, ``username``/``password`` also accepted)
and parsing ``WWW-Authenticate`` challenges (RFC 7235 as registries send
them).  The HTTP exchange itself (token fetch, retries) is in :mod:`.registry`.
"""

from __future__ import annotations

import base64
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from microagent.errors import Permanent

AUTH_FILE_ENV = "REGISTRY_AUTH_FILE"


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def basic_header(self) -> str:
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return f"Basic {token}"

    def __repr__(self) -> str:  # never print the password
        return f"Credentials(username={self.username!r}, password=***)"


@dataclass(frozen=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge: ``scheme`` lowercased, params as given."""

    scheme: str
    params: dict[str, str]


def auth_file_candidates(state_root: Path | None = None) -> list[Path]:
    """Where credentials are looked up, first hit wins."""
    env = os.environ.get(AUTH_FILE_ENV)
    if env:
        return [Path(env).expanduser()]
    out: list[Path] = []
    if state_root is not None:
        out.append(Path(state_root) / "auth.json")
    home = os.environ.get("HOME")
    if home:
        default = Path(home) / ".microagent" / "auth.json"
        if default not in out:
            out.append(default)
    return out


def _host_keys(registry: str) -> list[str]:
    keys = [registry, f"https://{registry}", f"http://{registry}"]
    if registry in ("docker.io", "registry-1.docker.io"):
        keys += ["docker.io", "registry-1.docker.io", "index.docker.io",
                 "https://index.docker.io/v1/", "https://index.docker.io/v1"]
    return keys


def load_credentials(registry: str, state_root: Path | None = None) -> Credentials | None:
    """Credentials for ``registry`` (``host[:port]``), or ``None``.

    :raises Permanent: when the auth file exists but is malformed.
    """
    for path in auth_file_candidates(state_root):
        try:
            raw = path.read_text()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise Permanent(f"cannot read registry auth file {path}: {exc.strerror}",
                            "check its permissions") from exc
        try:
            doc = json.loads(raw)
            auths = doc.get("auths", {})
            if not isinstance(auths, dict):
                raise ValueError("'auths' is not an object")
        except (ValueError, AttributeError) as exc:
            raise Permanent(f"registry auth file {path} is not valid JSON of the form "
                            '{"auths": {"HOST": {"auth": "BASE64(user:pass)"}}}',
                            f"fix or remove {path}") from exc
        for key in _host_keys(registry):
            entry = auths.get(key)
            if isinstance(entry, dict):
                return _entry_credentials(entry, path, key)
        return None
    return None


def _entry_credentials(entry: dict[str, object], path: Path, key: str) -> Credentials:
    if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
        return Credentials(str(entry["username"]), str(entry["password"]))
    encoded = entry.get("auth")
    try:
        if not isinstance(encoded, str):
            raise ValueError("no 'auth'")
        user, sep, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        if not sep:
            raise ValueError("no ':'")
    except (ValueError, UnicodeDecodeError) as exc:
        raise Permanent(f"registry auth file {path}: the entry for {key!r} is not base64 of 'user:password'",
                        f"fix the 'auth' field for {key} in {path}") from exc
    return Credentials(user, password)


_PARAM = re.compile(r'\s*([A-Za-z0-9_.-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))\s*,?')


def parse_challenges(header: str) -> list[Challenge]:
    """Parse a ``WWW-Authenticate`` value into challenges.

    >>> parse_challenges('Bearer realm="https://a/token",service="reg",scope="repository:x:pull"')[0].params["service"]
    'reg'
    """
    out: list[Challenge] = []
    pos = 0
    header = header.strip()
    while pos < len(header):
        m = re.match(r"\s*([A-Za-z][A-Za-z0-9_-]*)\s*", header[pos:])
        if not m:
            break
        scheme = m.group(1).lower()
        pos += m.end()
        params: dict[str, str] = {}
        while pos < len(header):
            pm = _PARAM.match(header, pos)
            if not pm or not pm.group(0).strip():
                break
            # a bare token followed by a space is the next scheme, not a param
            params[pm.group(1).lower()] = (pm.group(2) if pm.group(2) is not None else pm.group(3) or "").replace(
                '\\"', '"')
            pos = pm.end()
        out.append(Challenge(scheme, params))
        if pos < len(header) and header[pos] == ",":
            pos += 1
    return out

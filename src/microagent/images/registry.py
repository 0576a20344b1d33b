"""An OCI distribution client: manifests and blobs over HTTP(S).

Owns the HTTP exchange with one registry (distribution spec ``/v2/``
endpoints): content negotiation for manifests, streaming blobs into the
:class:`~.blobs.BlobStore` (verified there), authentication (anonymous,
``Basic`` from the auth file, the ``Bearer`` token flow of Docker Hub),
bounded retries with backoff for transient failures, and translating HTTP and
socket failures into microagent's error kinds:

=====================================  ===================================
registry says / does                   error
=====================================  ===================================
404 (``MANIFEST_UNKNOWN``, ``NAME_…``)  :class:`NotFound`
401 without credentials                 :class:`PolicyDenied` (how to log in)
401 with credentials, 403               :class:`PolicyDenied`
429, 5xx, refused, reset, timeout       retried, then :class:`Transient`
anything else 4xx                       :class:`Permanent`
=====================================  ===================================

Plain HTTP is used only for loopback registries (``localhost``,
``127.0.0.0/8``, ``::1``) and hosts listed in
``MICROAGENT_INSECURE_REGISTRIES`` or allowed by the caller; everything else
is HTTPS with certificate verification.

What to fetch and in which order is :mod:`.pull`'s business.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import random
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Iterator

import urllib3

from microagent.errors import MicroagentError, NotFound, Permanent, PolicyDenied, Transient
from microagent.images.auth import Challenge, Credentials, parse_challenges
from microagent.images.blobs import BlobStore
from microagent.images.limits import Limits, resolve
from microagent.images.manifest import ACCEPT

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

INSECURE_ENV = "MICROAGENT_INSECURE_REGISTRIES"
USER_AGENT = "microagent (+oci-distribution)"
_RETRY_STATUS = {408, 429, 500, 502, 503, 504}
_CHUNK = 1 << 20
_ERROR_BODY = 64 * 1024


def is_loopback(host: str) -> bool:
    """Whether ``host`` (no port) names this machine."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def insecure_allowed(registry: str, host: str, allow: bool = False) -> bool:
    """Whether plain HTTP may be used for ``registry`` (``host[:port]``)."""
    if allow or is_loopback(host):
        return True
    listed = {h.strip().lower() for h in os.environ.get(INSECURE_ENV, "").split(",") if h.strip()}
    return registry.lower() in listed or host.lower() in listed


@dataclass
class RequestCounter:
    """Counts requests sent (tests and ``--json`` stats read it)."""

    count: int = 0


class RegistryClient:
    """One registry, one repository namespace, one auth state.

    :param registry: ``host[:port]`` as written in references (``docker.io``).
    :param api_host: where to send HTTP (``registry-1.docker.io`` for Docker Hub).
    :param credentials: for ``Basic`` auth and for the token endpoint.
    :param insecure: use plain HTTP (decided by :func:`insecure_allowed`).
    :param attempts: total tries for a transient failure (bounded).
    :param limits: the cap on manifests (and token responses) read into memory.
    """

    def __init__(self, registry: str, api_host: str | None = None, *, credentials: Credentials | None = None,
                 insecure: bool = False, attempts: int = 3, backoff: float = 0.5, timeout: float = 30.0,
                 counter: RequestCounter | None = None, limits: Limits | None = None) -> None:
        self.registry = registry
        self.api_host = api_host or registry
        self.credentials = credentials
        self.scheme = "http" if insecure else "https"
        self.attempts = max(1, attempts)
        self.backoff = backoff
        self.timeout = urllib3.Timeout(connect=min(10.0, timeout), read=timeout)
        self.counter = counter or RequestCounter()
        self.limits = resolve(limits)
        self._pool = urllib3.PoolManager(num_pools=4, headers={"User-Agent": USER_AGENT})
        self._tokens: dict[str, str] = {}
        self._scheme_hint: str | None = None  # "bearer" or "basic" once the registry told us

    # -- public API -------------------------------------------------------

    def get_manifest(self, repository: str, reference: str) -> tuple[bytes, str, str | None]:
        """Fetch a manifest or index.

        :returns: ``(body, content type, Docker-Content-Digest header or None)``.
        :raises NotFound: unknown repository or tag/digest.
        :raises PolicyDenied: credentials missing or rejected.
        :raises Transient: the registry is unreachable or failing.
        """
        what = f"{self.registry}/{repository}:{reference}" if ":" not in reference else \
            f"{self.registry}/{repository}@{reference}"
        resp = self._request("GET", repository, f"/v2/{repository}/manifests/{reference}",
                             {"Accept": ACCEPT}, what=what, stream=True)
        body = _read_capped(resp, self.limits, f"manifest {what}")
        return body, _content_type(resp), resp.headers.get("Docker-Content-Digest")

    def head_manifest(self, repository: str, reference: str) -> str | None:
        """The digest a tag points at (``Docker-Content-Digest``), or ``None`` if not reported.

        :raises NotFound: unknown repository or tag.
        """
        what = f"{self.registry}/{repository}:{reference}"
        resp = self._request("HEAD", repository, f"/v2/{repository}/manifests/{reference}",
                             {"Accept": ACCEPT}, what=what)
        return resp.headers.get("Docker-Content-Digest")

    def fetch_blob(self, repository: str, digest: str, size: int, store: BlobStore,
                   on_bytes: Callable[[int], None] | None = None) -> Path:
        """Stream a blob into ``store``, verified against ``digest`` and ``size``.

        A transfer that breaks off is restarted from scratch, within the
        retry budget.  A digest mismatch is not retried.

        :raises DigestMismatch: the registry served other bytes (nothing stored).
        :raises NotFound: the registry does not have the blob.
        :raises Transient: the registry is unreachable or the transfer kept failing.
        """
        what = f"blob {digest} of {self.registry}/{repository}"
        last: Exception | None = None
        for attempt in range(self.attempts):
            resp = self._request("GET", repository, f"/v2/{repository}/blobs/{digest}", {}, what=what,
                                 stream=True)
            sent = 0

            def counted(n: int) -> None:
                nonlocal sent
                sent += n
                if on_bytes is not None:
                    on_bytes(n)

            try:
                path = store.write(digest, _stream(resp), size=size, on_bytes=counted)
            except urllib3.exceptions.HTTPError as exc:
                resp.close()
                last = exc
                if on_bytes is not None and sent:
                    on_bytes(-sent)  # let progress rewind
                log.info("blob %s transfer broke off (%s), attempt %d", digest, exc, attempt + 1)
                if attempt + 1 < self.attempts:
                    self._sleep(attempt, None)
                continue
            except BaseException:
                resp.close()
                raise
            resp.release_conn()
            return path
        raise Transient(f"downloading {what} kept failing: {last}",
                        "the registry or network is unstable; retry the pull later") from last

    # -- push (microagent commit --push) ----------------------------------

    def has_blob(self, repository: str, digest: str) -> bool:
        """Whether the repository already has the blob (a ``HEAD``)."""
        try:
            resp = self._request("HEAD", repository, f"/v2/{repository}/blobs/{digest}", {},
                                 what=f"blob {digest} of {self.registry}/{repository}")
        except NotFound:
            return False
        _drain(resp)
        return True

    def push_blob(self, repository: str, digest: str, path: Path) -> None:
        """Upload one blob (a monolithic upload: ``POST`` then ``PUT ?digest=``).

        :raises PolicyDenied: no push access; :raises Transient: unreachable.
        """
        what = f"upload of blob {digest} to {self.registry}/{repository}"
        resp = self._request("POST", repository, f"/v2/{repository}/blobs/uploads/", {"Content-Length": "0"},
                             what=what)
        location = resp.headers.get("Location") or ""
        _drain(resp)
        split = urllib.parse.urlsplit(location)
        if not split.path.startswith(f"/v2/{repository}/blobs/uploads/") or \
                (split.netloc and split.netloc != self.api_host):
            raise Permanent(f"registry {self.registry} sent an upload location {location!r} elsewhere",
                            "report this to the registry's operator")
        query = f"{split.query}&" if split.query else ""
        target = f"{split.path}?{query}{urllib.parse.urlencode({'digest': digest})}"
        size = path.stat().st_size
        opened: list[IO[bytes]] = []

        def body() -> IO[bytes]:
            fh = open(path, "rb")
            opened.append(fh)
            return fh

        try:
            resp = self._request("PUT", repository, target, {"Content-Type": "application/octet-stream",
                                                             "Content-Length": str(size)},
                                 what=what, body=body)
            _drain(resp)
        finally:
            for fh in opened:
                fh.close()

    def put_manifest(self, repository: str, tag: str, manifest: bytes, media_type: str) -> None:
        """Tag ``manifest`` in the repository."""
        resp = self._request("PUT", repository, f"/v2/{repository}/manifests/{tag}", {"Content-Type": media_type},
                             what=f"manifest {self.registry}/{repository}:{tag}",
                             body=lambda: manifest)
        _drain(resp)

    # -- HTTP -------------------------------------------------------------

    def _url(self, path: str) -> str:
        return f"{self.scheme}://{self.api_host}{path}"

    def _auth_header(self, repository: str) -> str | None:
        scope = _scope(repository)
        if scope in self._tokens:
            return f"Bearer {self._tokens[scope]}"
        if self._scheme_hint == "basic" and self.credentials is not None:
            return self.credentials.basic_header()
        return None

    def _request(self, method: str, repository: str, path: str, headers: dict[str, str], *, what: str,
                 stream: bool = False, body: Callable[[], Any] | None = None) -> urllib3.BaseHTTPResponse:
        """Send with auth and retries; returns a 2xx response or raises a mapped error.

        :param body: makes the request body afresh for each attempt (bytes or an open file).
        """
        authed_once = False
        attempt = 0
        while True:
            h = dict(headers)
            auth = self._auth_header(repository)
            if auth:
                h["Authorization"] = auth
            try:
                resp = self._send(method, self._url(path), h, stream=stream, body=body)
            except urllib3.exceptions.HTTPError as exc:
                if attempt + 1 >= self.attempts:
                    raise _unreachable(self.registry, self._url(path), exc) from exc
                self._sleep(attempt, None)
                attempt += 1
                continue
            if resp.status == 401 and not authed_once:
                challenge_header = resp.headers.get("WWW-Authenticate", "")
                _drain(resp)
                self._authenticate(challenge_header, repository, what)
                authed_once = True
                continue
            if resp.status in _RETRY_STATUS and attempt + 1 < self.attempts:
                retry_after = resp.headers.get("Retry-After")
                _drain(resp)
                self._sleep(attempt, retry_after)
                attempt += 1
                continue
            if 200 <= resp.status < 300:
                return resp
            raise self._error(resp, what)

    def _send(self, method: str, url: str, headers: dict[str, str], *, stream: bool,
              body: Callable[[], Any] | None = None) -> urllib3.BaseHTTPResponse:
        self.counter.count += 1
        retries = urllib3.Retry(total=10, connect=0, read=0, status=0, other=0, redirect=10,
                                raise_on_redirect=True)
        return self._pool.request(method, url, headers=headers, preload_content=not stream,
                                  retries=retries, timeout=self.timeout, redirect=True,
                                  body=body() if body is not None else None)

    def _sleep(self, attempt: int, retry_after: str | None) -> None:
        delay = self.backoff * (2 ** attempt) * (0.75 + random.random() / 2)
        if retry_after:
            try:
                delay = max(delay, min(float(retry_after), 10.0))
            except ValueError:
                pass
        time.sleep(min(delay, 10.0))

    def _authenticate(self, header: str, repository: str, what: str) -> None:
        """Answer a 401 challenge: fetch a bearer token or switch to basic auth.

        :raises PolicyDenied: no credentials for a basic challenge, or the token
            endpoint refused ours.
        """
        challenges = {c.scheme: c for c in parse_challenges(header)}
        if "bearer" in challenges and "realm" in challenges["bearer"].params:
            self._scheme_hint = "bearer"
            self._tokens[_scope(repository)] = self._fetch_token(challenges["bearer"], repository, what)
            return
        if "basic" in challenges or not challenges:
            self._scheme_hint = "basic"
            if self.credentials is None:
                raise _needs_login(self.registry, what)
            return
        raise Permanent(f"registry {self.registry} asks for unsupported authentication {header!r}",
                        "microagent supports anonymous, Basic and Bearer-token registries")

    def _fetch_token(self, challenge: Challenge, repository: str, what: str) -> str:
        realm = challenge.params["realm"]
        parsed = urllib.parse.urlsplit(realm)
        if parsed.scheme not in ("https", "http"):
            raise Permanent(f"registry {self.registry} sent a token realm {realm!r} that is not http(s)",
                            "report this to the registry's operator")
        if parsed.scheme == "http" and not insecure_allowed(parsed.netloc, parsed.hostname or ""):
            raise PolicyDenied(f"registry {self.registry} wants credentials sent to a plain-HTTP token "
                               f"service {realm}", f"add {parsed.netloc} to {INSECURE_ENV} if you trust it")
        query: list[tuple[str, str]] = []
        if challenge.params.get("service"):
            query.append(("service", challenge.params["service"]))
        query.append(("scope", challenge.params.get("scope") or _scope(repository)))
        sep = "&" if parsed.query else "?"
        url = realm + sep + urllib.parse.urlencode(query)
        headers: dict[str, str] = {}
        if self.credentials is not None:
            headers["Authorization"] = self.credentials.basic_header()
        resp: urllib3.BaseHTTPResponse | None = None
        for attempt in range(self.attempts):
            try:
                resp = self._send("GET", url, headers, stream=True)
            except urllib3.exceptions.HTTPError as exc:
                if attempt + 1 >= self.attempts:
                    raise _unreachable(f"token service of {self.registry}", url, exc) from exc
                self._sleep(attempt, None)
                continue
            if resp.status in _RETRY_STATUS and attempt + 1 < self.attempts:
                resp.close()
                self._sleep(attempt, resp.headers.get("Retry-After"))
                continue
            break
        assert resp is not None
        if resp.status in (401, 403):
            if self.credentials is None:
                raise _needs_login(self.registry, what)
            raise PolicyDenied(f"registry {self.registry} rejected the credentials for {self.credentials.username!r}",
                               "check the user and password in the registry auth file")
        if resp.status in _RETRY_STATUS:
            raise Transient(f"token service of {self.registry} answered HTTP {resp.status}",
                            "retry the pull in a minute")
        if resp.status != 200:
            raise Permanent(f"token service of {self.registry} answered HTTP {resp.status}",
                            "check the registry address and your credentials")
        try:
            doc = json.loads(_read_capped(resp, self.limits, f"token response of {self.registry}"))
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise Permanent(f"token service of {self.registry} returned no token",
                            "report this to the registry's operator")
        return token

    def _error(self, resp: urllib3.BaseHTTPResponse, what: str) -> MicroagentError:
        codes, message = _registry_errors(resp)
        detail = f" ({message})" if message else ""
        status = resp.status
        if status == 404 or {"MANIFEST_UNKNOWN", "NAME_UNKNOWN", "BLOB_UNKNOWN"} & codes:
            return NotFound(f"{what} not found in registry {self.registry}{detail}",
                            "check the image name and tag (e.g. with the registry's web UI or 'skopeo list-tags')",
                            status=status)
        if status == 401:
            if self.credentials is None:
                if self._scheme_hint == "bearer":
                    return PolicyDenied(
                        f"pull access denied for {what}: the repository does not exist or needs credentials",
                        _login_hint(self.registry), status=status)
                return _needs_login(self.registry, what)
            return PolicyDenied(f"registry {self.registry} rejected the credentials for "
                                f"{self.credentials.username!r} on {what}{detail}",
                                "check the user and password in the registry auth file", status=status)
        if status == 403:
            return PolicyDenied(f"registry {self.registry} denied access to {what}{detail}",
                                "check that your account may pull this repository", status=status)
        if status in _RETRY_STATUS:
            return Transient(f"registry {self.registry} answered HTTP {status} for {what}{detail}",
                             "the registry is overloaded or failing; retry later", status=status)
        if status in (406, 415):
            return Permanent(f"registry {self.registry} cannot serve {what} in a supported format "
                             f"(HTTP {status}){detail}",
                             "microagent needs OCI or Docker v2 schema 2 manifests", status=status)
        return Permanent(f"registry {self.registry} answered HTTP {status} for {what}{detail}",
                         "check the reference; retrying will not help", status=status)


# -- helpers ------------------------------------------------------------------


def _scope(repository: str) -> str:
    return f"repository:{repository}:pull"


def _content_type(resp: urllib3.BaseHTTPResponse) -> str:
    return (resp.headers.get("Content-Type") or "").split(";", 1)[0].strip()


def _read_capped(resp: urllib3.BaseHTTPResponse, limits: Limits, what: str) -> bytes:
    """A streamed response's body, refused once it passes the document cap (not read whole first).

    :raises Permanent: the body (or its Content-Length) is over the cap.
    """
    cap = limits.document_bytes
    length = resp.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > cap:
        resp.close()
        raise limits.exceeded("document_bytes", what, int(length))
    body = bytearray()
    try:
        for chunk in resp.stream(64 * 1024):
            body += chunk
            if len(body) > cap:
                resp.close()
                raise limits.exceeded("document_bytes", what)
    except urllib3.exceptions.HTTPError as exc:
        resp.close()
        raise Transient(f"reading {what} broke off: {exc}", "retry the pull") from exc
    resp.release_conn()
    return bytes(body)


def _stream(resp: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
    yield from resp.stream(_CHUNK)


def _drain(resp: urllib3.BaseHTTPResponse) -> None:
    try:
        resp.drain_conn()
    except urllib3.exceptions.HTTPError:
        pass
    resp.release_conn()


def _registry_errors(resp: urllib3.BaseHTTPResponse) -> tuple[set[str], str]:
    try:
        # an error body only feeds a message: a bounded prefix is enough
        doc = json.loads(resp.read(_ERROR_BODY) or b"{}")
        errors = doc.get("errors") or []
        codes = {str(e.get("code", "")) for e in errors if isinstance(e, dict)}
        messages = [str(e.get("message", "")) for e in errors if isinstance(e, dict) and e.get("message")]
        return codes, "; ".join(messages)[:300]
    except (ValueError, AttributeError, urllib3.exceptions.HTTPError):
        return set(), ""


def _login_hint(registry: str) -> str:
    return (f'add credentials for {registry} to ~/.microagent/auth.json (or $REGISTRY_AUTH_FILE) as '
            f'{{"auths": {{"{registry}": {{"auth": "BASE64(user:password)"}}}}}}')


def _needs_login(registry: str, what: str) -> PolicyDenied:
    return PolicyDenied(f"registry {registry} requires authentication to pull {what}", _login_hint(registry))


def _unreachable(registry: str, url: str, exc: Exception) -> Transient:
    import re

    reason = str(getattr(exc, "reason", None) or exc)
    reason = re.sub(r"^\w+\(host=[^)]*\): ", "", reason)
    reason = re.sub(r"^<[^>]*>: ", "", reason)
    return Transient(f"registry {registry} is unreachable at {url.split('/v2/')[0]}: {reason}",
                     "check that the registry is running and reachable, then retry the pull")


def client_for(registry: str, api_host: str, host: str, *, state_root: Path | None = None,
               allow_insecure: bool = False, counter: RequestCounter | None = None,
               **kwargs: Any) -> RegistryClient:
    """A client for ``registry`` with credentials and the HTTP/HTTPS decision applied.

    :raises Permanent: the auth file is malformed.
    """
    from microagent.images.auth import load_credentials

    return RegistryClient(registry, api_host, credentials=load_credentials(registry, state_root),
                          insecure=insecure_allowed(registry, host, allow_insecure), counter=counter, **kwargs)

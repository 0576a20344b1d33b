"""A real OCI registry on 127.0.0.1 for tests, images built from Debian packages, and a push helper.

Importable by any test package (``tests/`` is on ``sys.path``)::

    from support_registry import RegistryServer, build_image, busybox_layer, push_image

* :class:`RegistryServer` runs Debian's ``docker-registry`` (CNCF distribution
  2.8) on ``127.0.0.1:<free port>`` with a temp storage dir and config file,
  optionally behind htpasswd basic auth; its access log counts requests.
* :func:`busybox_layer`, :func:`tar_layer`, :func:`build_image`,
  :func:`build_index` make OCI images in memory (deterministic bytes);
  :func:`write_oci_layout` and :func:`write_docker_archive` write them out.
* :func:`push_image` / :func:`push_index` upload with the distribution API
  (monolithic blob upload + manifest PUT), stdlib only, so the client under
  test is never used to set up its own test.
* :func:`debian_rootfs_layer` is a debootstrap'ed Debian 12 minbase tree as a
  gzip layer, built once per machine and cached under ``.cache/debootstrap``.
* :class:`CountingProxy` is a small HTTP front for a registry that counts
  requests and can demand the Bearer token flow (a fake token service; the
  manifests and blobs still come from the real registry behind it).
"""

from __future__ import annotations

import base64
import fcntl
import gzip
import hashlib
import http.server
import io
import json
import os
import re
import shutil
import socket
import subprocess
import tarfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from microagent.host.apt_sources import apt_mirror

AUTH_USER = ("tester", "s3cret-pass")  # the htpasswd user of an auth registry in tests
REPO_ROOT = Path(__file__).resolve().parents[1]
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
LAYER_TYPES = {
    "tar": "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the registry ------------------------------------------------------------------


class RegistryServer:
    """Debian's ``docker-registry`` on 127.0.0.1, storage and config under ``root``.

    :param htpasswd: ``(user, password)`` to require basic auth.
    """

    def __init__(self, root: Path, *, htpasswd: tuple[str, str] | None = None) -> None:
        self.root = Path(root)
        self.htpasswd = htpasswd
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.root / "registry.log"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def storage(self) -> Path:
        return self.root / "storage"

    @property
    def auth(self) -> tuple[str, str] | None:
        return self.htpasswd

    def start(self) -> "RegistryServer":
        binary = shutil.which("docker-registry")
        if binary is None:
            raise RuntimeError("docker-registry is not installed (apt-get install docker-registry)")
        self.root.mkdir(parents=True, exist_ok=True)
        self.storage.mkdir(exist_ok=True)
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
            "storage": {"filesystem": {"rootdirectory": str(self.storage)}, "delete": {"enabled": True}},
            "http": {"addr": "", "headers": {"X-Content-Type-Options": ["nosniff"]}},
        }
        if self.htpasswd:
            import bcrypt

            user, password = self.htpasswd
            hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
            (self.root / "htpasswd").write_text(f"{user}:{hashed}\n")
            config["auth"] = {"htpasswd": {"realm": "microagent-test", "path": str(self.root / "htpasswd")}}
        for _ in range(5):
            self.port = free_port()
            config["http"]["addr"] = f"127.0.0.1:{self.port}"
            cfg = self.root / "config.yml"
            cfg.write_text(json.dumps(config))  # YAML is a superset of JSON
            log = self.log_path.open("ab")
            self.proc = subprocess.Popen([binary, "serve", str(cfg)], stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL)
            log.close()
            if self._wait_ready():
                return self
            self.stop()
        raise RuntimeError(f"docker-registry did not start; see {self.log_path}:\n{self.log_path.read_text()[-2000:]}")

    def _wait_ready(self, timeout: float = 15.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.url}/v2/", timeout=1) as resp:
                    if resp.status == 200:
                        return True
            except urllib.error.HTTPError as exc:
                if exc.code == 401:
                    return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def requests(self) -> list[str]:
        """Request lines (``GET /v2/... HTTP/1.1``) from the access log so far."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return re.findall(r'"((?:GET|HEAD|POST|PUT|PATCH|DELETE) /v2/[^"]*)"', text)

    def request_count(self, settle: float = 0.3) -> int:
        """Requests logged so far (after letting the log catch up)."""
        time.sleep(settle)
        return len(self.requests())

    def blob_data_path(self, digest: str) -> Path:
        """Where the registry keeps a blob's bytes (to corrupt it in a test)."""
        hexpart = digest.split(":", 1)[1]
        return self.storage / "docker/registry/v2/blobs/sha256" / hexpart[:2] / hexpart / "data"

    def __enter__(self) -> "RegistryServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- images in memory ----------------------------------------------------------------


@dataclass
class Entry:
    """One tar entry for :func:`tar_layer`."""

    name: str
    data: bytes = b""
    kind: str = "file"  # file | dir | symlink | hardlink | whiteout
    mode: int = 0o644
    target: str = ""
    uid: int = 0
    gid: int = 0


def tar_layer(entries: Iterable[Entry]) -> bytes:
    """An uncompressed layer tar with fixed mtimes (deterministic bytes)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.mtime = 1700000000
            info.uid, info.gid, info.mode = e.uid, e.gid, e.mode
            if e.kind == "dir":
                info.type = tarfile.DIRTYPE
                info.mode = e.mode if e.mode != 0o644 else 0o755
                tar.addfile(info)
            elif e.kind == "symlink":
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, e.target, 0o777
                tar.addfile(info)
            elif e.kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, e.target
                tar.addfile(info)
            else:
                info.size = len(e.data)
                tar.addfile(info, io.BytesIO(e.data))
    return buf.getvalue()


def busybox_layer(extra: Iterable[Entry] = ()) -> bytes:
    """A root filesystem layer from Debian's busybox-static: ``/bin/busybox`` plus applet links."""
    busybox = Path("/bin/busybox").read_bytes()
    entries = [Entry("bin", kind="dir"), Entry("etc", kind="dir"), Entry("tmp", kind="dir", mode=0o1777),
               Entry("bin/busybox", busybox, mode=0o755)]
    for applet in ("sh", "ls", "cat", "echo", "id", "stat", "true"):
        entries.append(Entry(f"bin/{applet}", kind="symlink", target="busybox"))
    entries.append(Entry("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n"))
    entries.append(Entry("etc/os-release", b'NAME="microagent-test-busybox"\nID=busybox\n'))
    entries.extend(extra)
    return tar_layer(entries)


def compress(data: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.compress(data, mtime=0)
    if compression == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=3).compress(data)
    return data


@dataclass
class BuiltImage:
    """An image's blobs, by digest, and its manifest."""

    manifest: bytes
    media_type: str
    config: bytes
    layers: list[tuple[bytes, str]]  # (blob bytes, media type)
    architecture: str = "amd64"
    variant: str = ""

    @property
    def digest(self) -> str:
        return sha256(self.manifest)

    @property
    def config_digest(self) -> str:
        return sha256(self.config)

    @property
    def layer_digests(self) -> list[str]:
        return [sha256(b) for b, _ in self.layers]

    def blobs(self) -> dict[str, bytes]:
        out = {sha256(self.config): self.config}
        out.update({sha256(b): b for b, _ in self.layers})
        return out

    def descriptor(self) -> dict[str, Any]:
        plat: dict[str, str] = {"architecture": self.architecture, "os": "linux"}
        if self.variant:
            plat["variant"] = self.variant
        return {"mediaType": self.media_type, "digest": self.digest, "size": len(self.manifest), "platform": plat}


def build_image(layers: list[bytes], *, compression: str | list[str] = "gzip", architecture: str = "amd64",
                variant: str = "", config: dict[str, Any] | None = None, docker: bool = False,
                config_media_type: str | None = None, layer_media_type: str | None = None) -> BuiltImage:
    """An image from uncompressed layer tars (compressed as asked), OCI or Docker v2 schema 2 types."""
    comps = compression if isinstance(compression, list) else [compression] * len(layers)
    blobs = [compress(layer, c) for layer, c in zip(layers, comps)]
    cfg_doc: dict[str, Any] = {
        "architecture": architecture, "os": "linux",
        "config": config if config is not None else {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256(layer) for layer in layers]},
        "history": [{"created_by": "microagent tests"}],
    }
    if variant:
        cfg_doc["variant"] = variant
    cfg = json.dumps(cfg_doc, sort_keys=True).encode()
    layer_types = [layer_media_type or (DOCKER_LAYER_GZIP if docker and c == "gzip" else LAYER_TYPES[c])
                   for c in comps]
    media_type = DOCKER_MANIFEST if docker else OCI_MANIFEST
    manifest = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {"mediaType": config_media_type or (DOCKER_CONFIG if docker else OCI_CONFIG),
                   "digest": sha256(cfg), "size": len(cfg)},
        "layers": [{"mediaType": t, "digest": sha256(b), "size": len(b)} for b, t in zip(blobs, layer_types)],
    }
    return BuiltImage(json.dumps(manifest, sort_keys=True).encode(), media_type, cfg,
                      list(zip(blobs, layer_types)), architecture, variant)


def build_index(images: list[BuiltImage], *, docker: bool = False,
                extra: list[dict[str, Any]] | None = None) -> bytes:
    """An OCI image index (or Docker manifest list) over ``images``."""
    doc = {"schemaVersion": 2, "mediaType": DOCKER_LIST if docker else OCI_INDEX,
           "manifests": [im.descriptor() for im in images] + list(extra or [])}
    return json.dumps(doc, sort_keys=True).encode()


# -- pushing ------------------------------------------------------------------------


def _request(method: str, url: str, data: bytes | None = None, headers: dict[str, str] | None = None,
             auth: tuple[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    h = dict(headers or {})
    if auth:
        h["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    req = urllib.request.Request(url, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def push_blob(registry: str, repo: str, data: bytes, auth: tuple[str, str] | None = None) -> str:
    """Monolithic upload: ``POST …/blobs/uploads/`` then ``PUT <location>?digest=``."""
    digest = sha256(data)
    base = f"http://{registry}"
    status, _, _ = _request("HEAD", f"{base}/v2/{repo}/blobs/{digest}", auth=auth)
    if status == 200:
        return digest
    status, headers, body = _request("POST", f"{base}/v2/{repo}/blobs/uploads/", b"", auth=auth)
    if status != 202:
        raise RuntimeError(f"upload start failed: {status} {body[:300]!r}")
    location = headers.get("Location") or headers["location"]
    location = urllib.parse.urljoin(base + "/", location)
    sep = "&" if "?" in location else "?"
    status, _, body = _request("PUT", f"{location}{sep}digest={digest}", data,
                               {"Content-Type": "application/octet-stream"}, auth=auth)
    if status != 201:
        raise RuntimeError(f"blob upload failed: {status} {body[:300]!r}")
    return digest


def push_manifest(registry: str, repo: str, reference: str, body: bytes, media_type: str,
                  auth: tuple[str, str] | None = None) -> str:
    status, _, resp = _request("PUT", f"http://{registry}/v2/{repo}/manifests/{reference}", body,
                               {"Content-Type": media_type}, auth=auth)
    if status != 201:
        raise RuntimeError(f"manifest push failed: {status} {resp[:300]!r}")
    return sha256(body)


def push_image(registry: str, repo: str, tag: str | None, image: BuiltImage,
               auth: tuple[str, str] | None = None) -> str:
    """Push blobs then the manifest (by tag, or by digest when ``tag`` is None); returns its digest."""
    for blob in image.blobs().values():
        push_blob(registry, repo, blob, auth)
    return push_manifest(registry, repo, tag or image.digest, image.manifest, image.media_type, auth)


def push_index(registry: str, repo: str, tag: str, images: list[BuiltImage], *, docker: bool = False,
               auth: tuple[str, str] | None = None, extra: list[dict[str, Any]] | None = None) -> str:
    """Push every image by digest, then an index over them under ``tag``; returns the index digest."""
    for im in images:
        push_image(registry, repo, None, im, auth)
    body = build_index(images, docker=docker, extra=extra)
    return push_manifest(registry, repo, tag, body, DOCKER_LIST if docker else OCI_INDEX, auth)


# -- local sources ------------------------------------------------------------------


def write_oci_layout(root: Path, tagged: list[tuple[str | None, BuiltImage]],
                     indexes: list[tuple[str | None, list[BuiltImage]]] = ()) -> Path:  # type: ignore[assignment]
    """An OCI image layout with ``org.opencontainers.image.ref.name`` annotations."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    (root / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))

    def put(data: bytes) -> None:
        (blobs / sha256(data).split(":")[1]).write_bytes(data)

    manifests = []
    for tag, im in tagged:
        for blob in im.blobs().values():
            put(blob)
        put(im.manifest)
        desc: dict[str, Any] = {"mediaType": im.media_type, "digest": im.digest, "size": len(im.manifest)}
        if tag:
            desc["annotations"] = {"org.opencontainers.image.ref.name": tag}
        manifests.append(desc)
    for tag, ims in indexes:
        for im in ims:
            for blob in im.blobs().values():
                put(blob)
            put(im.manifest)
        body = build_index(ims)
        put(body)
        desc = {"mediaType": OCI_INDEX, "digest": sha256(body), "size": len(body)}
        if tag:
            desc["annotations"] = {"org.opencontainers.image.ref.name": tag}
        manifests.append(desc)
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                                                 "manifests": manifests}))
    return root


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 1700000000, 0o644
    tar.addfile(info, io.BytesIO(data))


def write_docker_archive(path: Path, images: list[tuple[list[str], BuiltImage, list[bytes]]], *,
                         oci: bool = False) -> Path:
    """A ``docker save`` tarball.

    :param images: ``(repo_tags, image, uncompressed layers)``; the legacy layout
        stores the uncompressed layers as ``<id>/layer.tar``, the Docker ≥ 25
        layout (``oci=True``) is an OCI layout plus ``manifest.json``.
    """
    with tarfile.open(path, "w") as tar:
        entries = []
        if oci:
            index_manifests = []
            written: set[str] = set()
            for tags, im, _raw in images:
                for digest, blob in [*im.blobs().items(), (im.digest, im.manifest)]:
                    if digest not in written:
                        _add(tar, f"blobs/sha256/{digest.split(':')[1]}", blob)
                        written.add(digest)
                desc: dict[str, Any] = {"mediaType": im.media_type, "digest": im.digest, "size": len(im.manifest)}
                if tags:
                    desc["annotations"] = {"io.containerd.image.name": f"docker.io/library/{tags[0]}"
                                           if "/" not in tags[0] else tags[0],
                                           "org.opencontainers.image.ref.name": tags[0].rsplit(":", 1)[-1]}
                index_manifests.append(desc)
                entries.append({"Config": f"blobs/sha256/{im.config_digest.split(':')[1]}", "RepoTags": tags,
                                "Layers": [f"blobs/sha256/{d.split(':')[1]}" for d in im.layer_digests]})
            _add(tar, "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
            _add(tar, "index.json", json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                                                "manifests": index_manifests}).encode())
        else:
            for tags, im, raw in images:
                cfg_hex = im.config_digest.split(":")[1]
                _add(tar, f"{cfg_hex}.json", im.config)
                layer_names = []
                for layer in raw:
                    lid = hashlib.sha256(layer + cfg_hex.encode()).hexdigest()
                    _add(tar, f"{lid}/VERSION", b"1.0")
                    _add(tar, f"{lid}/json", json.dumps({"id": lid}).encode())
                    _add(tar, f"{lid}/layer.tar", layer)
                    layer_names.append(f"{lid}/layer.tar")
                entries.append({"Config": f"{cfg_hex}.json", "RepoTags": tags, "Layers": layer_names})
            _add(tar, "repositories", b"{}")
        _add(tar, "manifest.json", json.dumps(entries).encode())
    return path


# -- debootstrap -----------------------------------------------------------------------


def debian_rootfs_layer(cache_dir: Path | None = None, suite: str = "bookworm") -> Path:
    """A gzip layer of ``debootstrap --variant=minbase SUITE``, built once per machine.

    Cached as ``<cache>/<suite>-minbase-<arch>.tar.gz`` (``MICROAGENT_DEBOOTSTRAP_CACHE``
    overrides the directory).  apt's caches are dropped, as Debian's own images do.
    """
    cache = Path(cache_dir or os.environ.get("MICROAGENT_DEBOOTSTRAP_CACHE") or REPO_ROOT / ".cache/debootstrap")
    cache.mkdir(parents=True, exist_ok=True)
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True).stdout.strip()
    out = cache / f"{suite}-minbase-{arch}.tar.gz"
    with (cache / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if out.exists():
            return out
        work = cache / f".work-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        try:
            root = work / "root"
            mirror = apt_mirror()
            subprocess.run(["debootstrap", "--variant=minbase", suite, str(root), *([mirror] if mirror else [])],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            for sub in ("var/cache/apt/archives", "var/lib/apt/lists"):
                for entry in (root / sub).glob("*"):
                    if entry.is_file():
                        entry.unlink()
            tmp = work / "layer.tar.gz"
            with tmp.open("wb") as fh:
                tar = subprocess.Popen(["tar", "-C", str(root), "--numeric-owner", "--xattrs", "--sort=name",
                                        "-cf", "-", "."], stdout=subprocess.PIPE)
                gz = subprocess.run(["gzip", "-n", "-6"], stdin=tar.stdout, stdout=fh, check=True)
                assert tar.stdout is not None
                tar.stdout.close()
                if tar.wait() != 0 or gz.returncode != 0:
                    raise RuntimeError("packing the debootstrap tree failed")
            os.replace(tmp, out)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return out


# -- a counting / bearer-token front -------------------------------------------------------


@dataclass
class CountingProxy:
    """An HTTP front for a registry that counts requests; with ``bearer`` it is a
    fake Docker-Hub-style token service too (a test fake: the real registry
    behind it serves the content).

    ``GET /token?service=&scope=`` issues a token (requiring ``credentials`` if
    set); ``/v2/…`` without a valid ``Bearer`` token gets 401 and a
    ``WWW-Authenticate: Bearer realm=…,service=…,scope=…`` challenge.
    """

    upstream: str
    bearer: bool = False
    credentials: tuple[str, str] | None = None
    port: int = 0
    log: list[str] = field(default_factory=list)
    token: str = "test-token-0123456789"
    _server: http.server.ThreadingHTTPServer | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "CountingProxy":
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _token(self) -> None:
                if proxy.credentials:
                    want = "Basic " + base64.b64encode(":".join(proxy.credentials).encode()).decode()
                    if self.headers.get("Authorization") != want:
                        self._send(401, b'{"details":"incorrect username or password"}')
                        return
                self._send(200, json.dumps({"token": proxy.token, "expires_in": 300}).encode(),
                           {"Content-Type": "application/json"})

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _handle(self) -> None:
                proxy.log.append(f"{self.command} {self.path}")
                if self.path.startswith("/token"):
                    self._token()
                    return
                if proxy.bearer and self.headers.get("Authorization") != f"Bearer {proxy.token}":
                    m = re.match(r"/v2/(.+)/(manifests|blobs)/", self.path)
                    scope = f',scope="repository:{m.group(1)}:pull"' if m else ""
                    self._send(401, b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}',
                               {"WWW-Authenticate": f'Bearer realm="http://{proxy.host}/token",'
                                                    f'service="microagent-test"{scope}',
                                "Content-Type": "application/json"})
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("accept",)}
                req = urllib.request.Request(f"http://{proxy.upstream}{self.path}", method=self.command,
                                             headers=headers)
                try:
                    with urllib.request.urlopen(req, timeout=60) as resp:
                        status, rh, body = resp.status, resp.headers, resp.read()
                except urllib.error.HTTPError as exc:
                    status, rh, body = exc.code, exc.headers, exc.read()
                keep = {k: v for k, v in rh.items()
                        if k.lower() in ("content-type", "docker-content-digest", "www-authenticate")}
                self.send_response(status)
                for k, v in keep.items():
                    self.send_header(k, v)
                length = rh.get("Content-Length") if self.command == "HEAD" else str(len(body))
                self.send_header("Content-Length", length or "0")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = _handle
            do_HEAD = _handle

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "CountingProxy":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def push_debian_image(registry: str, repo: str = "test/debian", tag: str = "12",
                      auth: tuple[str, str] | None = None) -> tuple[str, Path]:
    """Push the debootstrap Debian 12 layer as ``registry/repo:tag`` (Cmd ``bash``).

    :returns: the manifest digest and the cached layer path.
    """
    layer_path = debian_rootfs_layer()
    layer = layer_path.read_bytes()
    h = hashlib.sha256()
    with gzip.open(layer_path) as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    config = json.dumps({
        "architecture": "amd64" if os.uname().machine == "x86_64" else "arm64", "os": "linux",
        "config": {"Cmd": ["bash"], "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{h.hexdigest()}"]},
    }, sort_keys=True).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
        "layers": [{"mediaType": LAYER_TYPES["gzip"], "digest": sha256(layer), "size": len(layer)}],
    }, sort_keys=True).encode()
    push_blob(registry, repo, config, auth)
    push_blob(registry, repo, layer, auth)
    return push_manifest(registry, repo, tag, manifest, OCI_MANIFEST, auth), layer_path

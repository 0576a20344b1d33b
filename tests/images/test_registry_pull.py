"""Pulls from a real registry (Debian's docker-registry on 127.0.0.1)."""

from __future__ import annotations

import base64
import json
import multiprocessing
import time
from pathlib import Path

import pytest

from microagent.errors import NotFound, Permanent, PolicyDenied, Transient
from microagent.images.blobs import BlobStore, DigestMismatch
from microagent.images.pull import pull
from microagent.images.registry import RequestCounter
from microagent.images.store import list_images
from support_registry import (
    AUTH_USER,
    CountingProxy,
    Entry,
    RegistryServer,
    build_image,
    busybox_layer,
    free_port,
    push_image,
    push_index,
    sha256,
    tar_layer,
)

ARCH = "x86_64"


def _store(state: Path) -> BlobStore:
    return BlobStore.for_state(state)


def _store_digests(state: Path) -> set[str]:
    return set(_store(state).digests())


def test_pull_oci_image_verifies_and_records(registry: RegistryServer, state: Path) -> None:
    im = build_image([busybox_layer()], config={"Entrypoint": ["/bin/sh", "-c"], "Cmd": ["echo hi"],
                                                  "Env": ["PATH=/bin", "A=1"], "WorkingDir": "/tmp",
                                                  "User": "nobody", "StopSignal": "SIGINT"})
    push_image(registry.host, "pull/oci", "v1", im)
    img = pull(f"{registry.host}/pull/oci:v1", state, architecture=ARCH)
    assert img.reference == f"{registry.host}/pull/oci:v1"
    assert img.digest == im.digest
    assert img.resolved == f"{registry.host}/pull/oci@{im.digest}"
    assert str(img.platform) == "linux/amd64"
    assert img.config.entrypoint == ("/bin/sh", "-c") and img.config.cmd == ("echo hi",)
    assert img.config.env == ("PATH=/bin", "A=1") and img.config.working_dir == "/tmp"
    assert img.config.user == "nobody" and img.config.stop_signal == "SIGINT"
    assert img.config_digest == im.config_digest
    [layer] = img.layers
    assert layer.media_type == "application/vnd.oci.image.layer.v1.tar+gzip"
    assert layer.path.read_bytes() == im.layers[0][0]
    assert sha256(layer.path.read_bytes()) == layer.digest
    [rec] = list_images(state)
    assert rec.reference == img.reference and rec.digest == im.digest and rec.size == layer.size


def test_docker_schema2_and_zstd_and_plain_layers(registry: RegistryServer, state: Path) -> None:
    docker = build_image([busybox_layer()], docker=True)
    push_image(registry.host, "pull/docker", "latest", docker)
    img = pull(f"{registry.host}/pull/docker", state, architecture=ARCH)
    assert [l.media_type for l in img.layers] == ["application/vnd.docker.image.rootfs.diff.tar.gzip"]

    extra = tar_layer([Entry("etc", kind="dir"), Entry("etc/motd", b"zstd layer\n")])
    third = tar_layer([Entry("etc", kind="dir"), Entry("etc/plain", b"plain layer\n")])
    mixed = build_image([busybox_layer(), extra, third], compression=["gzip", "zstd", "tar"])
    push_image(registry.host, "pull/mixed", "1", mixed)
    img = pull(f"{registry.host}/pull/mixed:1", state, architecture=ARCH)
    assert [l.media_type.rsplit(".", 1)[-1] for l in img.layers] == ["tar+gzip", "tar+zstd", "tar"]
    import zstandard

    assert zstandard.ZstdDecompressor().decompressobj().decompress(img.layers[1].path.read_bytes()) == extra


def test_manifest_list_platform_selection(registry: RegistryServer, state: Path) -> None:
    amd = build_image([busybox_layer()], architecture="amd64")
    arm = build_image([busybox_layer([Entry("etc/arch", b"arm64\n")])], architecture="arm64", variant="v8")
    attestation = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": amd.digest,
                   "size": len(amd.manifest), "platform": {"architecture": "unknown", "os": "unknown"},
                   "annotations": {"vnd.docker.reference.type": "attestation-manifest"}}
    index_digest = push_index(registry.host, "pull/multi", "1", [amd, arm], extra=[attestation])
    push_index(registry.host, "pull/multi", "docker", [amd, arm], docker=True)

    got = pull(f"{registry.host}/pull/multi:1", state, architecture="x86_64")
    assert got.digest == amd.digest and str(got.platform) == "linux/amd64"
    got = pull(f"{registry.host}/pull/multi:1", state, architecture="aarch64")
    assert got.digest == arm.digest and str(got.platform) == "linux/arm64/v8"
    got = pull(f"{registry.host}/pull/multi:docker", state, architecture="arm64")
    assert got.digest == arm.digest
    # the index digest itself pins the platform choice too
    got = pull(f"{registry.host}/pull/multi@{index_digest}", state, architecture="aarch64")
    assert got.digest == arm.digest

    with pytest.raises(NotFound) as err:
        pull(f"{registry.host}/pull/multi:1", state, architecture="riscv64")
    assert err.value.kind == "not_found"
    assert "linux/riscv64" in err.value.message
    assert "linux/amd64" in err.value.message and "linux/arm64/v8" in err.value.message
    assert "unknown" not in err.value.message  # attestations are not platforms


def test_single_manifest_for_other_arch_is_not_found(registry: RegistryServer, state: Path) -> None:
    arm = build_image([busybox_layer()], architecture="arm64")
    push_image(registry.host, "pull/armonly", "1", arm)
    with pytest.raises(NotFound, match="linux/arm64"):
        pull(f"{registry.host}/pull/armonly:1", state, architecture=ARCH)


def test_unknown_tag_and_repo_are_not_found(registry: RegistryServer, state: Path) -> None:
    push_image(registry.host, "pull/known", "1", build_image([busybox_layer()]))
    for ref in (f"{registry.host}/pull/known:nope", f"{registry.host}/pull/unknown-repo:1"):
        with pytest.raises(NotFound) as err:
            pull(ref, state, architecture=ARCH)
        assert err.value.to_dict()["kind"] == "not_found"
        assert ref.split("/", 1)[1] in err.value.message
    assert _store_digests(state) == set()


def test_registry_down_is_transient_with_retry_advice(state: Path) -> None:
    port = free_port()  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(Transient) as err:
        pull(f"127.0.0.1:{port}/x/y:1", state, architecture=ARCH)
    elapsed = time.monotonic() - t0
    assert err.value.kind == "transient"
    assert "unreachable" in err.value.message and "retry" in err.value.remediation
    assert elapsed < 10, "retries must be bounded"


def test_corrupt_blob_in_registry_is_rejected_and_cache_untouched(registry: RegistryServer, state: Path) -> None:
    good = build_image([busybox_layer()])
    push_image(registry.host, "pull/good", "1", good)
    pull(f"{registry.host}/pull/good:1", state, architecture=ARCH)
    before = _store_digests(state)
    index_before = (state / "images" / "index.json").read_bytes()

    layer = tar_layer([Entry("corrupt-me", b"original content " * 1000)])
    bad = build_image([layer])
    push_image(registry.host, "pull/corrupt", "1", bad)
    data_path = registry.blob_data_path(bad.layer_digests[0])
    original = data_path.read_bytes()
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0xFF
    data_path.write_bytes(bytes(flipped))
    try:
        with pytest.raises(DigestMismatch) as err:
            pull(f"{registry.host}/pull/corrupt:1", state, architecture=ARCH)
    finally:
        data_path.write_bytes(original)
    assert isinstance(err.value, Permanent) and bad.layer_digests[0] in err.value.message
    after = _store_digests(state)
    assert bad.layer_digests[0] not in after
    # manifest and config may be fetched before the layer, but nothing is recorded
    assert after - before <= {bad.config_digest}
    assert (state / "images" / "index.json").read_bytes() == index_before
    assert list((state / "images" / "blobs" / "tmp").iterdir()) == []


def test_unsupported_media_types_are_permanent(registry: RegistryServer, state: Path) -> None:
    helm = build_image([busybox_layer()], config_media_type="application/vnd.cncf.helm.config.v1+json")
    push_image(registry.host, "pull/helm", "1", helm)
    with pytest.raises(Permanent, match="application/vnd.cncf.helm.config.v1\\+json"):
        pull(f"{registry.host}/pull/helm:1", state, architecture=ARCH)
    odd = build_image([busybox_layer()], layer_media_type="application/vnd.example.layer.v1+squashfs")
    push_image(registry.host, "pull/odd", "1", odd)
    with pytest.raises(Permanent, match="squashfs"):
        pull(f"{registry.host}/pull/odd:1", state, architecture=ARCH)


def test_second_pull_does_no_registry_traffic(registry: RegistryServer, state: Path) -> None:
    im = build_image([busybox_layer()])
    digest = push_image(registry.host, "pull/cached", "1", im)
    pull(f"{registry.host}/pull/cached:1", state, architecture=ARCH)

    by_digest = f"{registry.host}/pull/cached@{digest}"
    counter = RequestCounter()
    logged = registry.request_count()
    img = pull(by_digest, state, architecture=ARCH, counter=counter, policy="always")
    assert img.digest == digest
    assert counter.count == 0 and registry.request_count() == logged

    # a tag pulled before: run's default policy uses the cache with no request
    img = pull(f"{registry.host}/pull/cached:1", state, architecture=ARCH, counter=counter)
    assert counter.count == 0 and registry.request_count() == logged

    # image pull re-resolves a tag with exactly one HEAD, and fetches nothing more
    img = pull(f"{registry.host}/pull/cached:1", state, architecture=ARCH, counter=counter, policy="always")
    assert counter.count == 1
    assert registry.requests()[logged:] == ["HEAD /v2/pull/cached/manifests/1 HTTP/1.1"]

    # policy=never never talks to the registry, and says what to do
    with pytest.raises(NotFound, match="not in the cache"):
        pull(f"{registry.host}/pull/cached:2", state, architecture=ARCH, policy="never")


def test_tag_moved_is_followed_by_always_not_by_missing(registry: RegistryServer, state: Path) -> None:
    one = build_image([busybox_layer()])
    two = build_image([busybox_layer([Entry("etc/v2", b"2\n")])])
    push_image(registry.host, "pull/moving", "latest", one)
    assert pull(f"{registry.host}/pull/moving", state, architecture=ARCH).digest == one.digest
    push_image(registry.host, "pull/moving", "latest", two)
    assert pull(f"{registry.host}/pull/moving", state, architecture=ARCH).digest == one.digest
    assert pull(f"{registry.host}/pull/moving", state, architecture=ARCH, policy="always").digest == two.digest
    assert [r.digest for r in list_images(state)] == [two.digest]


def test_basic_auth(auth_registry: RegistryServer, state: Path, tmp_path: Path,
                    monkeypatch: pytest.MonkeyPatch) -> None:
    im = build_image([busybox_layer()])
    push_image(auth_registry.host, "auth/img", "1", im, auth=AUTH_USER)
    ref = f"{auth_registry.host}/auth/img:1"

    with pytest.raises(PolicyDenied) as err:
        pull(ref, state, architecture=ARCH)
    assert err.value.kind == "policy_denied"
    assert "auth.json" in err.value.remediation and auth_registry.host in err.value.remediation

    auth_file = tmp_path / "auth.json"
    token = base64.b64encode(f"{AUTH_USER[0]}:wrong".encode()).decode()
    auth_file.write_text(json.dumps({"auths": {auth_registry.host: {"auth": token}}}))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(auth_file))
    with pytest.raises(PolicyDenied, match="rejected the credentials"):
        pull(ref, state, architecture=ARCH)

    token = base64.b64encode(f"{AUTH_USER[0]}:{AUTH_USER[1]}".encode()).decode()
    auth_file.write_text(json.dumps({"auths": {auth_registry.host: {"auth": token}}}))
    assert pull(ref, state, architecture=ARCH).digest == im.digest


def test_basic_auth_from_home_auth_json(auth_registry: RegistryServer, state: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    im = build_image([busybox_layer([Entry("etc/home", b"x")])])
    push_image(auth_registry.host, "auth/home", "1", im, auth=AUTH_USER)
    home = tmp_path / "home"
    (home / ".microagent").mkdir(parents=True)
    (home / ".microagent" / "auth.json").write_text(json.dumps(
        {"auths": {auth_registry.host: {"username": AUTH_USER[0], "password": AUTH_USER[1]}}}))
    monkeypatch.setenv("HOME", str(home))
    assert pull(f"{auth_registry.host}/auth/home:1", state, architecture=ARCH).digest == im.digest


def test_bearer_token_flow(registry: RegistryServer, state: Path, tmp_path: Path,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A fake Docker-Hub-style token service in front of the real registry."""
    im = build_image([busybox_layer([Entry("etc/bearer", b"1")])])
    push_image(registry.host, "bearer/img", "1", im)
    with CountingProxy(registry.host, bearer=True) as proxy:
        img = pull(f"{proxy.host}/bearer/img:1", state, architecture=ARCH)
        assert img.digest == im.digest
        token_requests = [line for line in proxy.log if line.startswith("GET /token")]
        assert len(token_requests) == 1  # one token, reused for manifest and blobs
        assert "scope=repository%3Abearer%2Fimg%3Apull" in token_requests[0]
        assert "service=microagent-test" in token_requests[0]

    with CountingProxy(registry.host, bearer=True, credentials=("u", "p")) as proxy:
        with pytest.raises(PolicyDenied, match="requires authentication"):
            pull(f"{proxy.host}/bearer/img:1", tmp_path / "state2", architecture=ARCH)
        auth_file = tmp_path / "auth.json"
        auth_file.write_text(json.dumps({"auths": {proxy.host: {"auth": base64.b64encode(b"u:p").decode()}}}))
        monkeypatch.setenv("REGISTRY_AUTH_FILE", str(auth_file))
        assert pull(f"{proxy.host}/bearer/img:1", tmp_path / "state2", architecture=ARCH).digest == im.digest


def test_plain_http_refused_for_non_loopback_unless_allowed(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from microagent.images.registry import insecure_allowed

    assert insecure_allowed("127.0.0.1:5000", "127.0.0.1")
    assert insecure_allowed("localhost:5000", "localhost")
    assert insecure_allowed("[::1]:5000", "::1")
    assert not insecure_allowed("registry.example:5000", "registry.example")
    assert insecure_allowed("registry.example:5000", "registry.example", allow=True)
    monkeypatch.setenv("MICROAGENT_INSECURE_REGISTRIES", "other:1, registry.example:5000")
    assert insecure_allowed("registry.example:5000", "registry.example")


def test_progress_callbacks(registry: RegistryServer, state: Path) -> None:
    layers = [busybox_layer(), tar_layer([Entry("etc", kind="dir"), Entry("etc/x", b"x" * 100000)])]
    im = build_image(layers)
    push_image(registry.host, "pull/progress", "1", im)
    events: list[tuple[str, str, int]] = []

    class Recorder:
        def on_layer_start(self, digest: str, size: int) -> None:
            events.append(("start", digest, size))

        def on_bytes(self, digest: str, n: int) -> None:
            events.append(("bytes", digest, n))

        def on_layer_done(self, digest: str) -> None:
            events.append(("done", digest, 0))

    pull(f"{registry.host}/pull/progress:1", state, architecture=ARCH, progress=Recorder())
    for digest, (blob, _) in zip(im.layer_digests, im.layers):
        assert ("start", digest, len(blob)) in events and ("done", digest, 0) in events
        assert sum(n for kind, d, n in events if kind == "bytes" and d == digest) == len(blob)


def _pull_in_child(args: tuple[str, str]) -> str:
    ref, state = args
    return pull(ref, Path(state), architecture=ARCH).digest


def test_concurrent_pulls_of_one_image(registry: RegistryServer, state: Path) -> None:
    big = tar_layer([Entry("data", bytes(range(256)) * 40000)])  # ~10 MB so the writers overlap
    im = build_image([busybox_layer(), big], compression=["gzip", "tar"])
    push_image(registry.host, "pull/concurrent", "1", im)
    ref = f"{registry.host}/pull/concurrent:1"
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        digests = pool.map(_pull_in_child, [(ref, str(state))] * 4)
    assert digests == [im.digest] * 4
    store = _store(state)
    for digest in store.digests():
        assert sha256(store.path(digest).read_bytes()) == digest
    assert {im.digest, im.config_digest, *im.layer_digests} <= set(store.digests())
    assert [r.reference for r in list_images(state)] == [ref]
    assert list((state / "images" / "blobs" / "tmp").iterdir()) == []

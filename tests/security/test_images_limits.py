"""A hostile image cannot fill the host: size caps, sparse files, hostile tar headers.

Every refusal is a ``permanent`` error with a remediation, raised before the
thing it refuses is written, and leaves nothing half-written in the cache.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from layer_factory import E, blob_layer, layer, pulled, tar_bytes, write_oci_layout
from microagent.errors import Permanent
from microagent.images.layers import extract_layers
from microagent.images.pull import pull
from microagent.images.rootfs import build_base_disk

MiB = 1 << 20
SPARSE_SIZE = 256 * MiB
MARKS = {0: b"HEAD", 100 * MiB: b"MIDDLE", SPARSE_SIZE - 4: b"TAIL"}
GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
TAR = "application/vnd.oci.image.layer.v1.tar"


@pytest.fixture(autouse=True)
def _no_limit_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("DOCUMENT_BYTES", "BLOB_BYTES", "EXTRACTED_BYTES", "ENTRIES"):
        monkeypatch.delenv(f"MICROAGENT_IMAGE_MAX_{var}", raising=False)


@pytest.fixture
def init(tmp_path: Path) -> Path:
    path = tmp_path / "microagent-init"
    path.write_bytes(b"\x7fELF fake guest init")
    return path


def sparse_tar(tmp: Path, fmt: str) -> bytes:
    """GNU tar's sparse encoding of a 256 MiB file holding three short marks (the rest holes)."""
    src = tmp / f"sparse-src-{fmt.replace(' ', '_')}"
    src.mkdir()
    with open(src / "big", "wb") as fh:
        fh.truncate(SPARSE_SIZE)
        for offset, mark in MARKS.items():
            fh.seek(offset)
            fh.write(mark)
    out = subprocess.run(["tar", "--sparse", f"--format={fmt.split()[0]}", *fmt.split()[1:], "-C", str(src),
                          "-cf", "-", "big"], check=True, capture_output=True).stdout
    return out


def assert_refused(exc: Permanent, *words: str) -> None:
    assert exc.kind == "permanent" and exc.remediation, exc.to_dict()
    for word in words:
        assert word in exc.message or word in exc.remediation, exc.to_dict()


def nothing_cached(state: Path) -> None:
    images = state / "images"
    assert not list((images / "disks").glob("*.ext4")) if (images / "disks").exists() else True
    for sub in ("tmp", "blobs/tmp"):
        if (images / sub).exists():
            assert not any((images / sub).iterdir()), sorted((images / sub).iterdir())


# -- sparse files ---------------------------------------------------------------------


SPARSE_FORMATS = ["gnu", "pax --sparse-version=0.0", "pax --sparse-version=0.1", "pax --sparse-version=1.0"]


@pytest.mark.parametrize("fmt", SPARSE_FORMATS)
def test_sparse_file_stays_sparse(tmp_path: Path, fmt: str) -> None:
    """A ~300-byte gzip layer used to become a fully allocated 256 MiB file."""
    blob = gzip.compress(sparse_tar(tmp_path, fmt), mtime=0)
    assert len(blob) < 1024
    root = tmp_path / "root"
    root.mkdir()
    extract_layers([blob_layer(tmp_path / "blobs", blob, GZIP)], root)
    st = os.stat(root / "big")
    assert st.st_size == SPARSE_SIZE
    assert st.st_blocks * 512 < 4 * MiB, f"holes were filled: {st.st_blocks * 512} bytes allocated"
    with open(root / "big", "rb") as fh:
        for offset, mark in MARKS.items():
            fh.seek(offset)
            assert fh.read(len(mark)) == mark
        fh.seek(50 * MiB)
        assert fh.read(4096) == bytes(4096)


def test_sparse_apparent_size_counts_against_the_cap(tmp_path: Path, init: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MICROAGENT_IMAGE_MAX_EXTRACTED_BYTES", "100M")
    blob = gzip.compress(sparse_tar(tmp_path, "pax"), mtime=0)
    image = pulled([blob_layer(tmp_path / "blobs", blob, GZIP)])
    with pytest.raises(Permanent) as info:
        build_base_disk(image, tmp_path / "state", init)
    assert_refused(info.value, "MICROAGENT_IMAGE_MAX_EXTRACTED_BYTES", "extracted size")
    nothing_cached(tmp_path / "state")


def test_extracted_bytes_add_up_over_layers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MICROAGENT_IMAGE_MAX_EXTRACTED_BYTES", "1M")
    lays = [layer(tmp_path / "blobs", [E(f"f{i}", data=bytes(400 * 1024))], "gzip") for i in range(3)]
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(Permanent) as info:
        extract_layers(lays, root)
    assert_refused(info.value, "MICROAGENT_IMAGE_MAX_EXTRACTED_BYTES")
    assert lays[2].digest in info.value.message and not (root / "f2").exists()


def test_entry_count_is_capped(tmp_path: Path, init: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MICROAGENT_IMAGE_MAX_ENTRIES", "10")
    lay = layer(tmp_path / "blobs", [E(f"f{i}") for i in range(11)], "gzip")
    with pytest.raises(Permanent) as info:
        build_base_disk(pulled([lay]), tmp_path / "state", init)
    assert_refused(info.value, "MICROAGENT_IMAGE_MAX_ENTRIES", "entries")
    nothing_cached(tmp_path / "state")


def test_a_bad_limit_variable_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MICROAGENT_IMAGE_MAX_ENTRIES", "lots")
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(Permanent) as info:
        extract_layers([layer(tmp_path / "blobs", [E("f")])], root)
    assert_refused(info.value, "MICROAGENT_IMAGE_MAX_ENTRIES")


# -- hostile headers ---------------------------------------------------------------------


def _block(data: bytes) -> bytes:
    return data + bytes(-len(data) % 512)


def pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    n = len(body) + 1
    while len(str(n).encode()) + len(body) != n:
        n = len(str(n).encode()) + len(body)
    return str(n).encode() + body


def raw_pax_tar(records: list[tuple[bytes, bytes]], name: str = "file", data: bytes = b"data",
                kind: bytes = tarfile.REGTYPE, linkname: str = "") -> bytes:
    """One entry preceded by a PAX header with exactly these (raw, unchecked) records."""
    payload = b"".join(pax_record(k, v) for k, v in records)
    xhdr = tarfile.TarInfo("PaxHeaders/x")
    xhdr.type, xhdr.size = tarfile.XHDTYPE, len(payload)
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mtime = kind, linkname, 1_700_000_000
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    out = xhdr.tobuf(tarfile.USTAR_FORMAT) + _block(payload) + info.tobuf(tarfile.USTAR_FORMAT)
    if kind == tarfile.REGTYPE:
        out += _block(data)
    return out + bytes(1024)


HOSTILE_PAX = {
    "mtime-inf": [(b"mtime", b"inf")],
    "mtime-nan": [(b"mtime", b"nan")],
    "mtime-1e400": [(b"mtime", b"1e400")],
    "mtime-huge-exponent": [(b"mtime", b"1e999999999")],
    "mtime-huge-digits": [(b"mtime", b"9" * 5000)],
    "mtime-huge-negative": [(b"mtime", b"-1e30")],
    "mtime-not-utf8": [(b"mtime", b"\xff\xfe")],
    "atime-inf": [(b"atime", b"-inf")],
    "uid-negative": [(b"uid", b"-1")],
    "uid-huge": [(b"uid", b"99999999999999999999")],
    "gid-not-a-number": [(b"gid", b"abc")],
    "path-nul": [(b"path", b"a\x00b")],
    "xattr-name-nul": [(b"SCHILY.xattr.user.a\x00b", b"v")],
    "xattr-value-huge": [(b"SCHILY.xattr.user.big", b"v" * 70000)],
    "size-garbage": [(b"size", b"12abc")],
    "sparse-map-garbage": [(b"GNU.sparse.map", b"0,x"), (b"GNU.sparse.realsize", b"10")],
    "sparse-map-past-size": [(b"GNU.sparse.map", b"0,4,100,4"), (b"GNU.sparse.realsize", b"10")],
    "sparse-map-overlap": [(b"GNU.sparse.map", b"0,4,2,4"), (b"GNU.sparse.realsize", b"10")],
    "sparse-map-more-data-than-stored": [(b"GNU.sparse.map", b"0,4000"), (b"GNU.sparse.realsize", b"4000")],
    "sparse-10-huge-map": [(b"GNU.sparse.major", b"1"), (b"GNU.sparse.minor", b"0"),
                           (b"GNU.sparse.realsize", b"10")],
    "header-too-large": [(b"comment", b"x" * (2 * MiB))],
}


@pytest.mark.parametrize("case", sorted(HOSTILE_PAX))
@pytest.mark.parametrize("compression", ["tar", "gzip"])
def test_hostile_pax_values_are_refused_cleanly(tmp_path: Path, case: str, compression: str) -> None:
    data = b"data"
    if case == "sparse-10-huge-map":
        data = b"99999999999\n" + bytes(500)
    raw = raw_pax_tar(HOSTILE_PAX[case], data=data)
    if compression == "gzip":
        raw = gzip.compress(raw, mtime=0)
    lay = blob_layer(tmp_path / "blobs", raw, GZIP if compression == "gzip" else TAR)
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(Permanent) as info:
        extract_layers([lay], root)
    assert_refused(info.value, lay.digest)
    assert info.value.details.get("layer") == lay.digest


def test_hostile_symlink_target_with_nul_is_refused(tmp_path: Path) -> None:
    raw = raw_pax_tar([(b"linkpath", b"/etc\x00x")], kind=tarfile.SYMTYPE, linkname="x")
    lay = blob_layer(tmp_path / "blobs", raw, TAR)
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(Permanent) as info:
        extract_layers([lay], root)
    assert_refused(info.value, "NUL")


def test_non_utf8_names_still_extract(tmp_path: Path) -> None:
    """Raw bytes are legal in Linux names: kept as they are, not refused and not a traceback."""
    raw = raw_pax_tar([(b"hdrcharset", b"BINARY"), (b"path", b"caf\xe9")])
    lay = blob_layer(tmp_path / "blobs", raw, TAR)
    root = tmp_path / "root"
    root.mkdir()
    ledger = extract_layers([lay], root)
    assert os.listdir(os.fsencode(root)) == [b"caf\xe9"]
    assert len([p for p in ledger.paths() if p]) == 1


def test_pax_times_within_ext4_range_are_kept(tmp_path: Path) -> None:
    raw = raw_pax_tar([(b"mtime", b"-1000000000.5"), (b"atime", b"10000000000.25")])
    root = tmp_path / "root"
    root.mkdir()
    ledger = extract_layers([blob_layer(tmp_path / "blobs", raw, TAR)], root)
    entry = ledger.get("file")
    assert entry is not None and entry.mtime_ns == -1_000_000_000_500_000_000
    assert entry.atime_ns == 10_000_000_000_250_000_000


# -- documents and blobs at pull time ------------------------------------------------------


def layout_with_big_config(tmp: Path) -> Path:
    lay = layer(tmp / "src", [E("f", data=bytes(64 * 1024))], "tar")
    return write_oci_layout(tmp / "layout", [lay], {"Cmd": ["sh"], "Env": ["PAD=" + "x" * 8192]})


def test_oversized_config_is_refused_before_it_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    layout = layout_with_big_config(tmp_path)
    monkeypatch.setenv("MICROAGENT_IMAGE_MAX_DOCUMENT_BYTES", "4K")
    state = tmp_path / "state"
    with pytest.raises(Permanent) as info:
        pull(f"oci:{layout}:latest", state, architecture="x86_64")
    assert_refused(info.value, "MICROAGENT_IMAGE_MAX_DOCUMENT_BYTES", "--max-document-bytes")
    assert not (state / "images" / "index.json").exists()
    nothing_cached(state)


def test_oversized_index_json_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    layout = layout_with_big_config(tmp_path)
    doc = json.loads((layout / "index.json").read_text())
    doc["annotations"] = {"pad": "x" * 8192}
    (layout / "index.json").write_text(json.dumps(doc))
    monkeypatch.setenv("MICROAGENT_IMAGE_MAX_DOCUMENT_BYTES", "4K")
    with pytest.raises(Permanent) as info:
        pull(f"oci:{layout}:latest", tmp_path / "state", architecture="x86_64")
    assert_refused(info.value, "index.json")


def test_manifest_lying_about_its_size_is_capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The descriptor says small, the blob is big: never read past the cap into memory."""
    layout = layout_with_big_config(tmp_path)
    doc = json.loads((layout / "index.json").read_text())
    blob = layout / "blobs" / "sha256" / doc["manifests"][0]["digest"].split(":")[1]
    blob.write_bytes(blob.read_bytes() + b" " * (64 * 1024))
    monkeypatch.setenv("MICROAGENT_IMAGE_MAX_DOCUMENT_BYTES", "32K")
    with pytest.raises(Permanent) as info:
        pull(f"oci:{layout}:latest", tmp_path / "state", architecture="x86_64")
    assert_refused(info.value, "exceeds the limit")


def test_oversized_layer_is_refused_before_it_is_copied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    layout = layout_with_big_config(tmp_path)
    monkeypatch.setenv("MICROAGENT_IMAGE_MAX_BLOB_BYTES", "16K")
    state = tmp_path / "state"
    with pytest.raises(Permanent) as info:
        pull(f"oci:{layout}:latest", state, architecture="x86_64")
    assert_refused(info.value, "MICROAGENT_IMAGE_MAX_BLOB_BYTES", "--max-blob-bytes")
    stored = {p.stat().st_size for p in (state / "images/blobs/sha256").iterdir()} \
        if (state / "images/blobs/sha256").exists() else set()
    assert all(size < 16 * 1024 for size in stored)
    nothing_cached(state)


def test_docker_archive_manifest_json_is_capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = tmp_path / "image.tar"
    body = json.dumps([{"Config": "c.json", "RepoTags": ["x:1"], "Layers": [], "Pad": "x" * 9000}]).encode()
    with tarfile.open(archive, "w") as tf:
        info = tarfile.TarInfo("manifest.json")
        info.size = len(body)
        tf.addfile(info, io.BytesIO(body))
    monkeypatch.setenv("MICROAGENT_IMAGE_MAX_DOCUMENT_BYTES", "4K")
    with pytest.raises(Permanent) as info_:
        pull(f"docker-archive:{archive}", tmp_path / "state", architecture="x86_64")
    assert_refused(info_.value, "manifest.json")


MICROAGENT = str(Path(sys.executable).parent / "microagent")


def _cli(state: Path, *args: str) -> tuple[int, dict[str, object]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROAGENT_")}
    env["MICROAGENT_STATE_DIR"] = str(state)
    env["HOME"] = str(state.parent / "home")
    proc = subprocess.run([MICROAGENT, *args, "--json"], capture_output=True, text=True, timeout=120, env=env,
                          check=False)
    return proc.returncode, json.loads(proc.stdout)


@pytest.mark.parametrize("flag,needle", [("--max-document-bytes", "config"), ("--max-blob-bytes", "blob")])
def test_image_pull_flags_lower_and_raise_the_caps(tmp_path: Path, flag: str, needle: str) -> None:
    layout = layout_with_big_config(tmp_path)
    code, doc = _cli(tmp_path / "state", "image", "pull", f"oci:{layout}:latest", flag, "4K")
    assert code != 0 and doc["ok"] is False
    err = doc["error"]
    assert isinstance(err, dict) and err["kind"] == "permanent" and flag in err["remediation"], err
    assert needle in err["message"]
    code, doc = _cli(tmp_path / "state", "image", "pull", f"oci:{layout}:latest", flag, "1G")
    assert code == 0 and doc["ok"] is True, doc


def test_registry_manifest_is_read_with_a_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A registry serving a huge manifest is cut off at the cap, not read whole into memory."""
    if shutil.which("docker-registry") is None:
        pytest.skip("docker-registry is not installed (scripts/host-deps.sh installs it)")
    from support_registry import RegistryServer, build_image, push_image

    im = build_image([tar_bytes([E("f", data=b"x")])], config={"Cmd": ["sh"], "Env": ["PAD=" + "x" * 8192]})
    with RegistryServer(tmp_path / "registry") as reg:
        push_image(reg.host, "big/config", "1", im)
        for cap, what in (("256", "manifest"), ("1K", "config")):
            monkeypatch.setenv("MICROAGENT_IMAGE_MAX_DOCUMENT_BYTES", cap)
            with pytest.raises(Permanent) as info:
                pull(f"{reg.host}/big/config:1", tmp_path / "state", architecture="x86_64")
            assert_refused(info.value, "MICROAGENT_IMAGE_MAX_DOCUMENT_BYTES", what)
        monkeypatch.setenv("MICROAGENT_IMAGE_MAX_DOCUMENT_BYTES", "4M")
        assert pull(f"{reg.host}/big/config:1", tmp_path / "state", architecture="x86_64").digest == im.digest

"""Hypothesis: hostile layers either extract inside the root or fail Permanent; nothing outside changes.

Each example stacks up to three generated layers of random entries: ``..``
components, absolute paths, symlinks to ``/``, ``..`` or a sentinel directory
beside the root followed by entries through them (in the same or a later
layer), hard links out of the root, over-long names, duplicates, whiteouts
and opaque markers.  After each example the sentinel directory must be
byte-for-byte as it was, and the staging tree and the ledger must agree.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from layer_factory import E, layer
from microagent.errors import Permanent
from microagent.images.layers import extract_layers

COMPONENTS = ["a", "b", "c", "..", ".", "", "x" * 300, ".wh.a", ".wh..wh..opq", "sentinel", "ü"]


def _path(draw_parts: list[str], absolute: bool) -> str:
    return ("/" if absolute else "") + "/".join(draw_parts)


paths = st.builds(_path, st.lists(st.sampled_from(COMPONENTS), min_size=1, max_size=4), st.booleans())
link_targets = st.one_of(paths, st.sampled_from(["/", "..", "../..", "../sentinel", "/../sentinel", "SENTINEL"]))


@st.composite
def entries(draw: st.DrawFn) -> E:
    kind = draw(st.sampled_from(["file", "dir", "symlink", "hardlink", "fifo", "char", "file", "dir"]))
    name = draw(paths)
    if kind in ("symlink", "hardlink"):
        return E(name, kind, link=draw(link_targets))
    return E(name, kind, data=b"data" if kind == "file" else b"", mode=draw(st.sampled_from([0o644, 0o4755, 0o000, 0o1777])),
             major=1, minor=3)


layers_strategy = st.lists(st.lists(entries(), min_size=1, max_size=12), min_size=1, max_size=3)


def _snapshot(path: Path) -> dict[str, tuple[int, bytes]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            st_ = os.lstat(p)
            out[str(p.relative_to(path))] = (st_.st_mode, p.read_bytes() if stat.S_ISREG(st_.st_mode) else b"")
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layers_strategy, st.sampled_from(["tar", "gzip", "zstd"]), st.booleans())
def test_hostile_layers_never_write_outside_the_root(spec: list[list[E]], compression: str, writer: bool) -> None:
    """Whatever the layers hold, nothing outside the root changes; with or without the writer process."""
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        sentinel = base / "sentinel"
        sentinel.mkdir()
        (sentinel / "precious").write_text("keep")
        (sentinel / "a").mkdir()
        root = base / "root"
        root.mkdir()
        for layer_entries in spec:
            for e in layer_entries:
                if e.link == "SENTINEL":
                    e.link = str(sentinel)
        before = _snapshot(sentinel)
        lays = [layer(base / "blobs", es, compression) for es in spec]
        try:
            ledger = extract_layers(lays, root, writer_min_bytes=0 if writer else 1 << 62)
        except Permanent as exc:
            assert any(lay.digest in exc.message for lay in lays)
            ledger = None
        assert _snapshot(sentinel) == before
        assert sorted(p.name for p in base.iterdir()) == ["blobs", "root", "sentinel"]
        if ledger is None:
            return
        staged = set()
        for dirpath, dirnames, filenames in os.walk(root):
            for n in dirnames + filenames:
                staged.add(str((Path(dirpath) / n).relative_to(root)))
        recorded = {p for p in ledger.paths() if p}
        special = {p for p in recorded if ledger.get(p).special}  # type: ignore[union-attr]
        assert staged == recorded - special
        for p in staged:
            st_ = os.lstat(root / p)
            assert not st_.st_mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX)
            assert not p.rsplit("/", 1)[-1].startswith(".wh.")  # markers are never staged


PAX_KEYS = ["mtime", "atime", "uid", "gid", "size", "path", "linkpath", "SCHILY.xattr.user.x",
            "LIBARCHIVE.xattr.user.y", "GNU.sparse.map", "GNU.sparse.realsize", "GNU.sparse.size",
            "GNU.sparse.major", "GNU.sparse.minor", "hdrcharset"]
PAX_VALUES = ["0", "1", "-1", "inf", "-inf", "nan", "1e400", "-1e30", "9" * 400, "1.5", "", "a\x00b", "\udcff",
              "0,4,2,4", "0,x", "1", "BINARY", "../x", "/etc/passwd", "x" * 300, "4294967295", "4294967296"]


@st.composite
def pax_entries(draw: st.DrawFn) -> E:
    records = draw(st.dictionaries(st.sampled_from(PAX_KEYS), st.sampled_from(PAX_VALUES), max_size=4))
    kind = draw(st.sampled_from(["file", "dir", "symlink", "char"]))
    return E(draw(st.sampled_from(["f", "d/f", "x"])), kind, data=b"data" if kind == "file" else b"",
             link="f" if kind == "symlink" else "", major=1, minor=3, pax=records)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(pax_entries(), min_size=1, max_size=6), st.sampled_from(["tar", "gzip"]))
def test_hostile_pax_records_extract_or_refuse_cleanly(spec: list[E], compression: str) -> None:
    """Whatever PAX records an entry carries: extracted, or a Permanent naming the layer; never a traceback."""
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        root = base / "root"
        root.mkdir()
        try:
            lay = layer(base / "blobs", spec, compression)
        except (ValueError, UnicodeError, OverflowError):
            return  # tarfile itself refuses to write this header; nothing to read
        try:
            ledger = extract_layers([lay], root)
        except Permanent as exc:
            assert exc.kind == "permanent" and exc.remediation and lay.digest in exc.message
            return
        for rel in ledger.paths():
            entry = ledger.get(rel)
            assert entry is not None and 0 <= entry.uid < 2**32 and 0 <= entry.gid < 2**32
        assert sorted(p.name for p in base.iterdir()) == ["blobs", "root"]

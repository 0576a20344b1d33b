"""The pinned pasta: where it is looked up, where its source comes from, and what a bad download does."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path
from typing import Iterator

import pytest

from microagent.errors import Permanent
from microagent.host import pasta_binary
from microagent.host.apt_sources import apt_mirror
from microagent.network import pasta


def test_apt_mirror_from_deb822_or_one_line_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MICROAGENT_DEBIAN_MIRROR", raising=False)
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text("# x\ndeb http://security.example/debian-security bookworm main\n"
                                           "deb [arch=amd64] http://mirror.example/debian/ bookworm main\n")
    assert apt_mirror(tmp_path) == "http://mirror.example/debian"
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://deb822.example/debian\nSuites: bookworm\n\n"
        "Types: deb\nURIs: http://deb822.example/debian-security\n")
    assert apt_mirror(tmp_path) == "http://deb822.example/debian"
    monkeypatch.setenv("MICROAGENT_DEBIAN_MIRROR", "http://override.example/debian/")
    assert apt_mirror(tmp_path) == "http://override.example/debian"


def test_lookup_order_env_then_pinned_then_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    on_path = tmp_path / "bin" / "pasta"
    on_path.parent.mkdir()
    on_path.write_text("#!/bin/sh\n")
    on_path.chmod(0o755)
    pinned = tmp_path / "venv" / "libexec" / "pasta"
    monkeypatch.setattr(pasta, "installed_path", lambda prefix=None: pinned)
    env = {"PATH": str(on_path.parent)}
    assert pasta.pasta_binary(env) == str(on_path)
    pinned.parent.mkdir(parents=True)
    pinned.write_text("#!/bin/sh\n")
    pinned.chmod(0o755)
    assert pasta.pasta_binary(env) == str(pinned)  # the pinned build wins over PATH
    assert pasta.pasta_binary({**env, "MICROAGENT_PASTA": str(on_path)}) == str(on_path)
    assert pasta.pasta_binary({**env, "MICROAGENT_PASTA": str(tmp_path / "missing")}) is None


@pytest.fixture
def mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A local HTTP "mirror" serving ``tmp_path/www``; ``MICROAGENT_DEBIAN_MIRROR`` points at it."""
    www = tmp_path / "www"
    (www / pasta_binary.POOL).mkdir(parents=True)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object) -> None:
            super().__init__(*args, directory=str(www))  # type: ignore[arg-type]

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("MICROAGENT_DEBIAN_MIRROR", f"http://127.0.0.1:{server.server_address[1]}")
    yield www / pasta_binary.POOL
    server.shutdown()


def test_a_tampered_download_is_refused_and_nothing_is_installed(mirror: Path, tmp_path: Path) -> None:
    name, _ = pasta_binary.SOURCES[0]
    (mirror / name).write_bytes(b"not the passt source")
    with pytest.raises(Permanent, match="expected the pinned"):
        pasta_binary.install_pinned(str(tmp_path / "prefix"), cache=tmp_path / "cache")
    assert not (tmp_path / "prefix" / "libexec" / "pasta").exists()
    assert not (tmp_path / "cache" / name).exists()  # a bad download is not cached either


def test_an_installed_pinned_build_is_kept_without_a_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MICROAGENT_DEBIAN_MIRROR", "http://127.0.0.1:9")  # nothing listens: any download fails
    target = tmp_path / "libexec" / "pasta"
    target.parent.mkdir()
    target.write_text("#!/bin/sh\n")
    (tmp_path / "libexec" / "pasta.version").write_text(pasta_binary.PINNED_VERSION + "\n")
    assert pasta_binary.install_pinned(str(tmp_path), cache=tmp_path / "cache") == target

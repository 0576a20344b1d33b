"""microagent.channel's public names exist and stay pinned."""

from __future__ import annotations

import importlib

import microagent.channel as channel

MODULES = ["errors", "frames", "stream", "mux", "exec", "files", "forward", "shell"]


def test_all_names_resolve() -> None:
    for name in channel.__all__:
        assert hasattr(channel, name), name
    for mod in MODULES:
        m = importlib.import_module(f"microagent.channel.{mod}")
        for name in m.__all__:
            assert hasattr(m, name), f"{mod}.{name}"


def test_frames_module_does_no_io() -> None:
    import microagent.channel.frames as frames

    src = open(frames.__file__).read()
    for banned in ("import socket", "import os", "import threading", "open("):
        assert banned not in src, banned

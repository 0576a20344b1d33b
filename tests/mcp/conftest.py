"""Fixtures for the MCP server tests: a private state root with the installed kernel, and a client helper.

The SDK is an optional extra: without it these tests skip and say so.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("mcp", reason="the MCP SDK is not installed (pip install -e '.[mcp]')")

from microagent.paths import host_arch, kernel_dir, state_root  # noqa: E402


@pytest.fixture(scope="module")
def mcp_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A state root with the qemu kernel (copied from the default root, or installed); every
    workspace still in it afterwards (a test that failed midway) is killed and deleted."""
    root = tmp_path_factory.mktemp("mcpstate")
    src = kernel_dir(state_root(None), "qemu", host_arch())
    if (src / "kernel.json").is_file():
        shutil.copytree(src, kernel_dir(root, "qemu", host_arch()), ignore=shutil.ignore_patterns("initramfs-*"))
    else:
        from microagent.kernels import install_kernel

        install_kernel(root, "qemu")
    yield root
    from microagent.workspace.lifecycle import WorkspaceStore

    store = WorkspaceStore(root)
    for row in store.list():
        store.delete(row["name"], force=True)

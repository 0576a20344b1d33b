"""The state root as text (the CLI's exec fast path) is checked exactly as the Path one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from microagent.errors import PolicyDenied
from microagent.paths import state_root, state_root_text


@pytest.mark.parametrize("resolve", [state_root_text, state_root])
def test_a_trailing_slash_does_not_hide_a_foreign_symlink(tmp_path: Path, resolve: object) -> None:
    """``lstat("link/")`` follows the link: the root must be checked without the slash."""
    if os.geteuid() != 0:
        pytest.skip("planting a symlink owned by another user needs root (lchown)")
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(mine)
    os.lchown(link, 65534, 65534)
    with pytest.raises(PolicyDenied, match="is a symlink owned by uid 65534"):
        resolve(f"{link}/")  # type: ignore[operator]


def test_text_and_path_name_the_same_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert Path(state_root_text("rel//state/")) == state_root("rel//state/") == tmp_path / "rel" / "state"
    assert oct(os.stat(tmp_path / "rel" / "state").st_mode & 0o777) == "0o700"

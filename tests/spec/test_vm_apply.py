"""``apply -f`` and ``create -f`` against real QEMU guests, through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

MICROAGENT = str(Path(sys.executable).parent / "microagent")


def cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MICROAGENT, *args, "--state-dir", str(root)], capture_output=True, text=True,
                          timeout=180)


def cli_json(root: Path, *args: str, expect: int = 0) -> dict[str, Any]:
    proc = cli(root, *args, "--json")
    assert proc.returncode == expect, (proc.returncode, proc.stdout, proc.stderr)
    return json.loads(proc.stdout or proc.stderr)  # type: ignore[no-any-return]


def spec(path: Path, greeting: str, disk: int | None = None) -> str:
    path.write_text("name: ap\nimage: builtin:busybox\nmemory: 256\ncpus: 1\n"
                    + (f"disk-size: {disk}\n" if disk else "")
                    + f"env:\n  GREETING: {greeting}\nsetup:\n  - echo ran >> /setup.log\n")
    return str(path)


def guest(root: Path, script: str) -> str:
    proc = cli(root, "exec", "ap", "--", "sh", "-c", script)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_apply_creates_updates_per_boot_keys_and_refuses_a_rebuild_without_recreate(vm_root: Path,
                                                                                  tmp_path: Path) -> None:
    f = spec(tmp_path / "microagent.yaml", "one")
    try:
        assert cli_json(vm_root, "apply", "-f", f)["action"] == "created"
        assert cli_json(vm_root, "apply", "-f", f)["action"] == "unchanged"
        assert cli(vm_root, "start", "ap").returncode == 0
        assert guest(vm_root, 'echo "$GREETING"; cat /setup.log') == "one\nran\n"

        spec(tmp_path / "microagent.yaml", "two")
        out = cli_json(vm_root, "apply", "-f", f)
        assert out["action"] == "updated" and out["pendingRestart"] is True
        assert out["changes"] == [{"key": "env", "from": ["GREETING=one"], "to": ["GREETING=two"],
                                   "effect": "next start"}]
        text = cli(vm_root, "apply", "-f", f)
        assert text.returncode == 0 and "is already as the spec" in text.stdout
        assert guest(vm_root, 'echo "$GREETING"') == "one\n"  # the running guest keeps its boot's env
        assert cli(vm_root, "halt", "ap").returncode == 0
        assert cli(vm_root, "start", "ap").returncode == 0
        assert guest(vm_root, 'echo "$GREETING"; cat /setup.log') == "two\nran\n"  # setup: still once
        assert cli(vm_root, "halt", "ap").returncode == 0

        spec(tmp_path / "microagent.yaml", "two", disk=700)
        refused = cli(vm_root, "apply", "-f", f)
        assert refused.returncode == 1
        assert "changes disk-size, which need a rebuild" in refused.stderr and "--recreate" in refused.stderr
        dry = cli_json(vm_root, "apply", "-f", f, "--recreate", "--dry-run")
        assert dry["action"] == "recreated" and dry["dryRun"] is True
        assert cli_json(vm_root, "status", "ap")["resources"]["diskSizeMiB"] != 700
        out = cli_json(vm_root, "apply", "-f", f, "--recreate")
        assert out["action"] == "recreated" and out["state"] == "prepared"
        status = cli_json(vm_root, "status", "ap")
        assert status["resources"]["diskSizeMiB"] == 700 and status["setup"]["state"] == "pending"
    finally:
        cli(vm_root, "delete", "-f", "ap")


def test_create_from_a_spec_file_and_its_usage_errors(vm_root: Path, tmp_path: Path) -> None:
    f = tmp_path / "ws.yaml"
    f.write_text("image: builtin:busybox\nmemory: 256\nservice: sleep 1000\nrestart: always\nsetup: [\"true\"]\n")
    mixed = cli(vm_root, "create", "spec1", "-f", str(f), "--memory", "300")
    assert mixed.returncode == 2 and "drop --memory" in mixed.stderr
    (tmp_path / "bad.yaml").write_text("image: builtin:busybox\nmemroy: 256\n")
    bad = cli(vm_root, "create", "spec1", "-f", str(tmp_path / "bad.yaml"))
    assert bad.returncode == 2 and "bad.yaml:2: the spec has unknown field 'memroy'" in bad.stderr
    try:
        doc = cli_json(vm_root, "create", "spec1", "-f", str(f))
        ws = doc["workspace"]
        assert ws["service"] == {"command": "sleep 1000", "restart": "always"} and ws["setup"] == ["true"]
        assert ws["resources"]["memoryMiB"] == 256
    finally:
        cli(vm_root, "delete", "-f", "spec1")

"""``microagent image pull|ls|rm|prune`` end to end against the real registry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from support_registry import RegistryServer, build_image, busybox_layer, free_port, push_image

MICROAGENT = str(Path(sys.executable).parent / "microagent")


def cli(state: Path, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REGISTRY_AUTH_FILE", "MICROAGENT_OUTPUT")}
    env["MICROAGENT_STATE_DIR"] = str(state)
    env["HOME"] = str(state.parent / "home")
    proc = subprocess.run([MICROAGENT, *args], capture_output=True, text=True, timeout=120, env=env)
    return proc.returncode, proc.stdout, proc.stderr


def js(out: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(out)
    assert doc["schemaVersion"] == 1
    return doc


def test_pull_ls_rm_prune(registry: RegistryServer, tmp_path: Path) -> None:
    state = tmp_path / "state"
    im = build_image([busybox_layer()], config={"Cmd": ["/bin/sh", "-c", "echo hi"]})
    push_image(registry.host, "cli/busybox", "1", im)
    ref = f"{registry.host}/cli/busybox:1"

    code, out, err = cli(state, "image", "pull", ref, "--json")
    assert code == 0, err
    doc = js(out)
    assert doc["ok"] is True and doc["image"]["digest"] == im.digest
    assert doc["image"]["config"]["cmd"] == ["/bin/sh", "-c", "echo hi"]
    assert doc["requests"] == 3  # manifest, config, layer
    assert err == ""  # nothing extra in --json mode

    code, out, err = cli(state, "image", "pull", ref)  # text, non-TTY: no progress on stderr
    assert code == 0 and err == "" and im.digest in out
    assert js(cli(state, "image", "pull", ref, "--json")[1])["requests"] == 1  # re-resolve: one HEAD

    code, out, _ = cli(state, "image", "ls", "--json")
    [entry] = js(out)["images"]
    assert entry["reference"] == ref and entry["digest"] == im.digest
    code, out, _ = cli(state, "image", "ls")
    assert ref in out and "linux/amd64" in out

    code, out, _ = cli(state, "image", "rm", ref, "--json")
    assert code == 0 and js(out)["removed"][0]["reference"] == ref and js(out)["freed"] > 0
    assert not any((state / "images" / "blobs" / "sha256").iterdir())
    code, out, _ = cli(state, "image", "prune", "--json")
    assert code == 0 and js(out)["blobs"] == 0


def test_errors_are_enveloped(registry: RegistryServer, tmp_path: Path) -> None:
    state = tmp_path / "state"
    code, out, _ = cli(state, "image", "pull", f"{registry.host}/cli/missing:1", "--json")
    assert code == 1 and js(out)["error"]["kind"] == "not_found"
    code, out, _ = cli(state, "image", "pull", "Not/Valid", "--json")
    assert code == 1 and js(out)["error"]["kind"] == "permanent"
    assert "lowercase" in js(out)["error"]["message"]
    code, out, _ = cli(state, "image", "pull", f"127.0.0.1:{free_port()}/x:1", "--json")
    err = js(out)["error"]
    assert code == 1 and err["kind"] == "transient" and "retry" in err["remediation"]
    code, out, _ = cli(state, "image", "rm", "nothing:here", "--json")
    assert code == 1 and js(out)["error"]["kind"] == "not_found"
    code, _, stderr = cli(state, "image", "pull", f"{registry.host}/cli/missing:1")
    assert code == 1 and "not found" in stderr and "hint:" in stderr


def test_progress_renders_on_a_tty(registry: RegistryServer, tmp_path: Path) -> None:
    pexpect = __import__("pexpect")
    state = tmp_path / "state"
    im = build_image([busybox_layer()])
    push_image(registry.host, "cli/tty", "1", im)
    env = dict(os.environ, MICROAGENT_STATE_DIR=str(state), HOME=str(tmp_path / "home"), COLUMNS="120")
    child = pexpect.spawn(MICROAGENT, ["image", "pull", f"{registry.host}/cli/tty:1"], env=env,
                          encoding="utf-8", timeout=60)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    text = child.before
    assert im.layer_digests[0].split(":")[1][:12] in text  # the per-layer progress line
    assert im.digest in text

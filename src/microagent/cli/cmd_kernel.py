"""``microagent kernel install|list|verify``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from microagent.cli.main import backend_option, json_option, state_dir_option
from microagent.cli.output import emit


@click.group()
def kernel() -> None:
    """Install and check guest kernels."""


def _backend(backend: str | None) -> str:
    from microagent.workspace.boot_plan import resolve_backend

    return resolve_backend(backend)


@kernel.command("install")
@backend_option
@state_dir_option
@json_option
@click.option("--from", "from_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="a bzImage, vmlinux or arm64 Image to install")
@click.option("--deb", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="a linux-image .deb (kernel and modules)")
@click.option("--modules-from-deb", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="with --from: take the modules from this linux-image .deb")
@click.option("--arch", default=None, help="x86_64 or aarch64 (default: this host)")
@click.option("--if-missing", is_flag=True, help="do nothing when a verified kernel is installed")
def install(backend: str | None, state_dir: str | None, as_json: bool, from_file: Path | None,
            deb: Path | None, modules_from_deb: Path | None, arch: str | None, if_missing: bool) -> int:
    """Install the default guest kernel (Debian's cloud kernel unless --from/--deb)."""
    from microagent.kernels import install_kernel, kernel_status
    from microagent.paths import state_root

    root = state_root(state_dir)
    chosen = _backend(backend)
    if if_missing:
        status = kernel_status(root, chosen, arch)
        if status.get("status") == "installed":
            emit({"ok": True, "installed": False, **status}, as_json,
                 lambda d: f"kernel for {chosen} already installed: {d['path']}")
            return 0
    record = install_kernel(root, chosen, deb=deb, from_file=from_file,
                            modules_from_deb=modules_from_deb, arch=arch)
    doc = {"ok": True, "installed": True, "path": str(record.image), **record.to_json()}
    emit(doc, as_json, lambda d: f"installed {d['version']} for {chosen}/{d['architecture']}: {d['path']}")
    return 0


@kernel.command("list")
@state_dir_option
@json_option
def list_(state_dir: str | None, as_json: bool) -> int:
    """List installed kernels."""
    from microagent.kernels import list_kernels
    from microagent.paths import state_root

    records = list_kernels(state_root(state_dir))
    doc = {"ok": True, "kernels": [{"path": str(r.image), **r.to_json()} for r in records]}

    def text(d: dict[str, Any]) -> str:
        if not d["kernels"]:
            return "no kernels installed (run 'microagent kernel install')"
        return "\n".join(f"{k['backend']:<12} {k['architecture']:<8} {k['version']:<24} {k['path']}"
                         for k in d["kernels"])

    emit(doc, as_json, text)
    return 0


@kernel.command("verify")
@backend_option
@state_dir_option
@json_option
@click.option("--arch", default=None)
def verify(backend: str | None, state_dir: str | None, as_json: bool, arch: str | None) -> int:
    """Recompute the sha256 of every installed kernel file; exit 1 on a mismatch."""
    from microagent.kernels import verify_kernel
    from microagent.paths import state_root

    result = verify_kernel(state_root(state_dir), _backend(backend), arch)
    doc = {"ok": result.ok, "backend": result.backend, "architecture": result.architecture,
           "path": str(result.path),
           "checks": [{"name": c.name, "path": str(c.path), "expected": c.expected, "actual": c.actual,
                       "status": c.status} for c in result.checks]}

    def text(d: dict[str, Any]) -> str:
        lines = [f"kernel {d['backend']}/{d['architecture']}: {'ok' if d['ok'] else 'MISMATCH'}"]
        lines += [f"  {c['status']:<8} {c['name']}" for c in d["checks"] if c["status"] != "ok"]
        return "\n".join(lines)

    emit(doc, as_json, text)
    return 0 if result.ok else 1

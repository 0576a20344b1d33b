"""``microagent kernel install|build|list|verify``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from microagent.cli.main import backend_option, json_option, state_dir_option
from microagent.cli.output import emit


@click.group()
def kernel() -> None:
    """Install, build and check guest kernels."""


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


@kernel.command("build")
@click.option("--backend", type=click.Choice(["qemu", "firecracker"]), default=None,
              help="install it as this backend's kernel (default: per host); one build serves both")
@state_dir_option
@json_option
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="where the source package and builds are cached (default: <state-dir>/cache)")
@click.option("--if-missing", is_flag=True, help="do nothing when today's build is installed and verified")
def build(backend: str | None, state_dir: str | None, as_json: bool, cache_dir: Path | None,
          if_missing: bool) -> int:
    """Build the minimal guest kernel from Debian's linux-source-6.12 and install it."""
    from microagent.fsutil import restrict_umask
    from microagent.kernels import build as kbuild
    from microagent.kernels import kernel_status, load_kernel
    from microagent.paths import state_root

    root = state_root(state_dir)
    chosen = _backend(backend)
    if chosen not in ("qemu", "firecracker"):
        raise click.UsageError(f"kernel build installs for qemu or firecracker, not {chosen}; pass --backend")
    cache = (cache_dir.expanduser().absolute() if cache_dir else root / "cache")
    restrict_umask()  # cache and kernel files 0600, directories 0700
    pkg = kbuild.source_package(kbuild.MINIMAL)
    if if_missing and kernel_status(root, chosen, "x86_64").get("status") == "installed":
        record = load_kernel(root, chosen, "x86_64")
        if record.source.get("key") == kbuild.cache_key(kbuild.MINIMAL, pkg.sha256 or ""):
            emit({"ok": True, "installed": False, "path": str(record.image), **record.to_json()}, as_json,
                 lambda d: f"built kernel for {chosen} already installed: {d['path']}")
            return 0
    built = kbuild.ensure_built(kbuild.MINIMAL, cache, pkg=pkg)
    record = kbuild.install_built_kernel(root, chosen, built)
    doc = {"ok": True, "installed": True, "path": str(record.image), "build": str(built.directory),
           **record.to_json()}
    emit(doc, as_json, lambda d: f"installed built kernel {d['version']} for {chosen}: {d['path']}")
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

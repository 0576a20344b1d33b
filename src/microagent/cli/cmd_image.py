"""``microagent image pull|ls|rm|prune``: thin adapters over :mod:`microagent.images`.

Pull progress on a terminal is :func:`microagent.cli.progress.pull_progress`'s.
"""

from __future__ import annotations

from typing import Any

import click

from microagent.cli.main import json_option, state_dir_option
from microagent.cli.output import emit
from microagent.cli.progress import pull_progress


def _arch(arch: str | None) -> str:
    from microagent.paths import host_arch

    return arch or host_arch()


@click.group()
def image() -> None:
    """Pull and manage cached OCI images."""


@image.command("pull")
@click.argument("ref")
@state_dir_option
@json_option
@click.option("--insecure", is_flag=True, help="allow plain HTTP to this registry (loopback always may)")
@click.option("--arch", default=None, help="x86_64 or aarch64 (default: this host)")
@click.option("--pull", "policy", type=click.Choice(["always", "missing", "never"]), default="always",
              show_default=True, help="re-resolve tags (always), use the cache when present (missing), or only the cache")
@click.option("--max-document-bytes", "max_document", default=None, metavar="SIZE",
              help="largest manifest, index or config accepted, e.g. 16M "
                   "(default 4M, or $MICROAGENT_IMAGE_MAX_DOCUMENT_BYTES)")
@click.option("--max-blob-bytes", "max_blob", default=None, metavar="SIZE",
              help="largest layer blob accepted, e.g. 100G (default 32G, or $MICROAGENT_IMAGE_MAX_BLOB_BYTES)")
def pull(ref: str, state_dir: str | None, as_json: bool, insecure: bool, arch: str | None, policy: str,
         max_document: str | None, max_blob: str | None) -> int:
    """Pull REF (registry image, oci:DIR[:TAG] or docker-archive:FILE[:REF]) into the cache."""
    from microagent.images.limits import Limits, parse_size
    from microagent.images.pull import describe
    from microagent.images.pull import pull as do_pull
    from microagent.images.registry import RequestCounter
    from microagent.paths import state_root

    limits = Limits.from_env().with_overrides(
        document_bytes=parse_size(max_document, "--max-document-bytes") if max_document else None,
        blob_bytes=parse_size(max_blob, "--max-blob-bytes") if max_blob else None)
    progress = pull_progress(as_json)
    counter = RequestCounter()
    try:
        img = do_pull(ref, state_root(state_dir), architecture=_arch(arch), progress=progress,
                      allow_insecure=insecure, policy=policy, counter=counter, limits=limits)
    finally:
        if progress is not None:
            progress.close()
    doc = {"ok": True, "image": describe(img), "requests": counter.count}
    emit(doc, as_json, lambda d: f"{img.reference}\n  digest: {img.digest}\n  platform: {img.platform}"
                                 f"\n  layers: {len(img.layers)} ({_size(d['image']['size'])})")
    return 0


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


@image.command("ls")
@state_dir_option
@json_option
def ls(state_dir: str | None, as_json: bool) -> int:
    """List cached images."""
    from microagent.images.store import list_images
    from microagent.paths import state_root

    records = list_images(state_root(state_dir))
    doc = {"ok": True, "images": [r.to_json() for r in records]}

    def text(d: dict[str, Any]) -> str:
        if not d["images"]:
            return "no images cached (pull one with 'microagent image pull REF')"
        rows = [f"{'REFERENCE':<50} {'DIGEST':<19} {'PLATFORM':<14} {'SIZE':>10} LAST USED"]
        for r in records:
            rows.append(f"{r.reference:<50} {r.digest[:19]:<19} {str(r.platform):<14} "
                        f"{_size(r.size):>10} {r.last_used_at}")
        return "\n".join(rows)

    emit(doc, as_json, text)
    return 0


@image.command("rm")
@click.argument("ref")
@state_dir_option
@json_option
def rm(ref: str, state_dir: str | None, as_json: bool) -> int:
    """Remove REF (reference or digest) from the cache, with blobs and disks only it used."""
    from microagent.images.store import remove
    from microagent.paths import state_root

    gone, freed = remove(state_root(state_dir), ref)
    doc = {"ok": True, "removed": [r.to_json() for r in gone], "freed": freed}
    emit(doc, as_json, lambda d: "\n".join(f"removed {r.reference} ({r.digest[:19]})" for r in gone)
         + f"\nfreed {_size(freed)}")
    return 0


@image.command("prune")
@state_dir_option
@json_option
def prune(state_dir: str | None, as_json: bool) -> int:
    """Delete blobs and base disks no cached image references."""
    from microagent.images.store import prune as do_prune
    from microagent.paths import state_root

    result = do_prune(state_root(state_dir))
    doc = {"ok": True, **result}
    emit(doc, as_json, lambda d: f"removed {d['blobs']} blobs and {d['disks']} disks, freed {_size(d['freed'])}")
    return 0

"""Build a minimal guest kernel from Debian's kernel source package, reproducibly and cached.

One recipe (:class:`Recipe`): Debian's ``linux-source-6.12`` (``apt-get
download``, size and sha256 checked by :mod:`microagent.kernels.debian`)
→ ``make tinyconfig`` → ``merge_config.sh`` with a config fragment →
``make olddefconfig`` → the required options checked in the final
``.config`` → an optional patch → ``make bzImage`` (which links ``vmlinux``:
the ELF both QEMU, through its PVH entry, and Firecracker boot).  Fixed
``KBUILD_BUILD_*`` make the same inputs give the same bytes.

The result is content-addressed: ``<cache>/<recipe.name>/<key>/`` holding
``vmlinux``, ``config``, ``build.log`` and ``build.json``, where ``key`` is
the sha256 over the source package's sha256, the fragment, the patch and the
recipe version.  A new Debian version of the source package is a new key.

The product kernel is :data:`MINIMAL` (fragment ``minimal-6.12.fragment``
beside this module); the Firecracker slow-lane test harness builds its own
recipe through the same functions.  Installing a build into the kernel store
is :func:`install_built_kernel`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from microagent.digests import sha256_file
from microagent.errors import InvalidRequest, NotFound, Permanent, Unsupported
from microagent.fsutil import atomic_write, private_dir
from microagent.kernels import debian

if TYPE_CHECKING:
    from microagent.kernels.store import KernelRecord

__all__ = [
    "MINIMAL",
    "BuiltKernel",
    "Recipe",
    "build_cache_dir",
    "cache_key",
    "check_config",
    "ensure_built",
    "find_built",
    "install_built_kernel",
    "parse_fragment",
    "source_package",
]

SOURCE_PACKAGE = "linux-source-6.12"
#: build tools beyond gcc/make (scripts/host-deps.sh installs them)
BUILD_TOOLS = ("make", "gcc", "flex", "bison", "bc", "patch", "dpkg-deb", "tar")
_OPTION_RE = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET_RE = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")


@dataclass(frozen=True)
class Recipe:
    """What to build: the cache directory's name, the fragment, an optional patch.

    :ivar recipe: the build steps' version, part of the key: bump it when the
        steps change.
    :ivar required: options that must read exactly so in the final ``.config``;
        empty means every option of the fragment.
    :ivar build_host: ``KBUILD_BUILD_HOST`` (in ``uname -v``).
    :ivar title: what the progress line calls it.
    """

    name: str
    fragment: Path
    recipe: str
    patch: Path | None = None
    required: tuple[str, ...] = ()
    build_host: str = "microagent"
    source_package: str = SOURCE_PACKAGE
    title: str = "minimal guest"

    def reproducible_env(self) -> dict[str, str]:
        """Fixed build identity: the same inputs give the same vmlinux."""
        return {"KBUILD_BUILD_TIMESTAMP": "2026-01-01 00:00:00 UTC", "KBUILD_BUILD_USER": "microagent",
                "KBUILD_BUILD_HOST": self.build_host, "KBUILD_BUILD_VERSION": "1", "LC_ALL": "C"}

    def required_options(self) -> dict[str, str]:
        """``{CONFIG_X: value}`` the final config must have (``n``: not set)."""
        if self.required:
            return parse_fragment("\n".join(self.required))
        return parse_fragment(self.fragment.read_text())


#: the product's minimal kernel: ``microagent kernel build``
MINIMAL = Recipe(name="kernel-builds", fragment=Path(__file__).with_name("minimal-6.12.fragment"),
                 recipe="tinyconfig+fragment+olddefconfig+bzImage/v1")


@dataclass(frozen=True)
class BuiltKernel:
    """A cache entry: ``directory`` holds ``vmlinux``, ``config``, ``build.log``, ``build.json``."""

    directory: Path
    info: dict[str, Any]

    @property
    def vmlinux(self) -> Path:
        return self.directory / "vmlinux"


def parse_fragment(text: str) -> dict[str, str]:
    """``CONFIG_X=v`` and ``# CONFIG_X is not set`` lines as ``{CONFIG_X: v}`` (``n`` for not set).

    Comments and blank lines are skipped; a later line wins, as in merge_config.

    :raises InvalidRequest: a line that is neither.
    """
    out: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if match := _UNSET_RE.match(line):
            out[match.group(1)] = "n"
        elif match := _OPTION_RE.match(line):
            out[match.group(1)] = match.group(2)
        elif line and not line.startswith("#"):
            raise InvalidRequest(f"kernel config fragment line {number} is not CONFIG_NAME=value: {raw!r}",
                                 "write CONFIG_NAME=y, =n, =<number> or =\"string\"")
    return out


def check_config(config_text: str, required: dict[str, str]) -> list[str]:
    """The required options the final ``.config`` lacks, as ``CONFIG_X=want (is: have)``.

    merge_config.sh only warns when ``olddefconfig`` drops an option whose
    dependencies are off; this makes that an error.
    """
    have = parse_fragment("\n".join(ln for ln in config_text.splitlines() if ln.startswith(("CONFIG_", "# CONFIG_"))))
    missing = []
    for name, want in required.items():
        got = have.get(name, "n")
        if got != want:
            missing.append(f"{name}={want} (is: {'not set' if got == 'n' else got})")
    return missing


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cache_key(recipe: Recipe, source_sha256: str) -> str:
    """sha256 over the build's inputs: source package, fragment, patch (if any), recipe version."""
    parts = {"source": source_sha256, "fragment": _sha(recipe.fragment), "recipe": recipe.recipe}
    if recipe.patch is not None:
        parts["patch"] = _sha(recipe.patch)
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def build_cache_dir(cache: Path, recipe: Recipe) -> Path:
    """``<cache>/<recipe.name>``: the recipe's entries, one per key."""
    return cache / recipe.name


def source_package(recipe: Recipe) -> debian.DebianPackage:
    """The source package apt offers today (one ``apt-cache show``, about 1.5 s).

    :raises NotFound: no apt, or apt does not know the package.
    """
    return debian.package_info(recipe.source_package)


def find_built(recipe: Recipe, cache: Path, pkg: debian.DebianPackage | None = None) -> BuiltKernel | None:
    """Today's cache entry for ``recipe``, or ``None`` when it is not built."""
    pkg = pkg or source_package(recipe)
    entry = build_cache_dir(cache, recipe) / cache_key(recipe, pkg.sha256 or "")
    if not (entry / "vmlinux").is_file():
        return None
    try:
        info = json.loads((entry / "build.json").read_text())
    except (OSError, ValueError):
        info = {}
    return BuiltKernel(entry, info if isinstance(info, dict) else {})


def ensure_built(recipe: Recipe, cache: Path, *, pkg: debian.DebianPackage | None = None,
                 keep_tree: bool = False, progress: Any = None) -> BuiltKernel:
    """Today's cache entry for ``recipe``, building it first when missing.

    :param cache: ``<state_root>/cache``: the source package goes to
        ``<cache>/debs``, the entry to ``<cache>/<recipe.name>/<key>``.
    :param pkg: :func:`source_package` if already asked.
    :param progress: called with one line before a build starts (default: stderr).
    :raises NotFound: apt or a build tool is missing.
    :raises Permanent: a build step failed, or the config lacks a required option.
    :raises Transient: the download failed.
    """
    pkg = pkg or source_package(recipe)
    found = find_built(recipe, cache, pkg)
    if found is not None:
        return found
    missing_tools = [tool for tool in BUILD_TOOLS if shutil.which(tool) is None]
    if missing_tools:
        raise NotFound(f"building the kernel needs {', '.join(missing_tools)}",
                       "install the build tools: scripts/host-deps.sh (gcc make flex bison bc libelf-dev patch)")
    deb = debian.download_deb(pkg, cache / "debs")
    entry = build_cache_dir(cache, recipe) / cache_key(recipe, pkg.sha256 or "")
    say = progress or (lambda line: print(line, file=sys.stderr))
    say(f"building the {recipe.title} kernel from {pkg.spec} into {entry} "
        "(6-11 minutes on 2 cores; cached afterwards)")
    _build(recipe, entry, deb, pkg, keep_tree=keep_tree)
    return BuiltKernel(entry, json.loads((entry / "build.json").read_text()))


def _run(argv: list[str], cwd: Path, log: Path, what: str, env: dict[str, str]) -> None:
    with open(log, "ab") as out:
        out.write(f"\n$ {' '.join(argv)}\n".encode())
        out.flush()
        proc = subprocess.run(argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env})
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-15:]
        raise Permanent(f"{what} failed (exit {proc.returncode}):\n  " + "\n  ".join(tail),
                        "see the build log; build tools: scripts/host-deps.sh (gcc make flex bison bc libelf-dev)")


def _unpack_source(deb: Path, work: Path, log: Path, env: dict[str, str]) -> Path:
    """``dpkg-deb -x`` the package, then untar its ``linux-source-*.tar.*``."""
    _run(["dpkg-deb", "-x", str(deb), str(work / "pkg")], work, log, "unpacking the source package", env)
    tarballs = sorted((work / "pkg" / "usr" / "src").glob("linux-source-*.tar.*"))
    if len(tarballs) != 1:
        raise Permanent(f"{deb.name} holds {len(tarballs)} source tarballs, expected 1", "check the package")
    _run(["tar", "-xf", str(tarballs[0]), "-C", str(work)], work, log, "untarring the kernel source", env)
    shutil.rmtree(work / "pkg")
    return work / tarballs[0].name.split(".tar.")[0]


def _build(recipe: Recipe, entry: Path, deb: Path, pkg: debian.DebianPackage, *, keep_tree: bool) -> None:
    root = private_dir(entry.parent)
    work = Path(tempfile.mkdtemp(dir=root, prefix=".build-"))
    log = work / "build.log"
    env = recipe.reproducible_env()
    started = time.monotonic()
    jobs = str(os.cpu_count() or 1)
    try:
        tree = _unpack_source(deb, work, log, env)
        _run(["make", "tinyconfig"], tree, log, "make tinyconfig", env)
        _run(["scripts/kconfig/merge_config.sh", "-m", ".config", str(recipe.fragment)], tree, log,
             "merge_config.sh", env)
        _run(["make", "olddefconfig"], tree, log, "make olddefconfig", env)
        missing = check_config((tree / ".config").read_text(), recipe.required_options())
        if missing:
            raise Permanent(f"the kernel config lacks {', '.join(missing)} after merging the fragment",
                            f"fix {recipe.fragment.name} (a dependency may be off)")
        if recipe.patch is not None:
            _run(["patch", "-p1", "--forward", "-i", str(recipe.patch)], tree, log,
                 f"applying {recipe.patch.name}", env)
        _run(["make", f"-j{jobs}", "bzImage"], tree, log, "make bzImage", env)
        staged = Path(tempfile.mkdtemp(dir=root, prefix=".entry-"))
        shutil.copyfile(tree / "vmlinux", staged / "vmlinux")
        shutil.copyfile(tree / ".config", staged / "config")
        info: dict[str, Any] = {"source": pkg.as_source(), "fragmentSha256": _sha(recipe.fragment)}
        if recipe.patch is not None:
            info["patchSha256"] = _sha(recipe.patch)
        info.update({"recipe": recipe.recipe, "vmlinuxSha256": _sha(staged / "vmlinux"),
                     "buildSeconds": round(time.monotonic() - started)})
        atomic_write(staged / "build.json", (json.dumps(info, indent=2) + "\n").encode())
        shutil.copyfile(log, staged / "build.log")
        os.replace(staged, entry)  # the entry appears complete or not at all
    finally:
        if keep_tree:
            print(f"build tree kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def built_source(built: BuiltKernel, recipe: Recipe) -> dict[str, Any]:
    """The ``source`` recorded in kernel.json for a built kernel."""
    pkg = built.info.get("source") or {}
    return {"type": "build", "recipe": recipe.recipe, "key": built.directory.name,
            "package": pkg.get("package", recipe.source_package), "version": pkg.get("version", ""),
            "sha256": pkg.get("sha256", ""), "fragment": recipe.fragment.name,
            "fragmentSha256": built.info.get("fragmentSha256", _sha(recipe.fragment)),
            "vmlinuxSha256": sha256_file(built.vmlinux)}


def install_built_kernel(state_root: Path, backend: str, built: BuiltKernel, recipe: Recipe = MINIMAL,
                         arch: str | None = None) -> KernelRecord:
    """Install ``built``'s vmlinux as ``backend``'s kernel (``modules: []``, source type ``build``).

    :returns: the installed :class:`~microagent.kernels.store.KernelRecord`.
    :raises Unsupported: the build is x86_64; another architecture was asked for.
    """
    from microagent.kernels.store import install_kernel
    from microagent.paths import ARCH_ALIASES, host_arch

    want = ARCH_ALIASES.get((arch or host_arch()).lower(), (arch or "").lower())
    if want != "x86_64":
        raise Unsupported(f"the minimal kernel recipe builds x86_64 kernels, not {want}",
                          "install Debian's cloud kernel instead: microagent kernel install")
    return install_kernel(state_root, backend, from_file=built.vmlinux, arch="x86_64",
                          source=built_source(built, recipe))


def stale_fragment(source: dict[str, Any], recipe: Recipe = MINIMAL) -> bool:
    """True when a built kernel's recorded fragment is not ``recipe``'s today (``kernel_status``: outdated)."""
    return source.get("recipe") == recipe.recipe and source.get("fragmentSha256") != _sha(recipe.fragment)


def main() -> int:
    """``python -m microagent.kernels.build``: build (or find) the minimal kernel in the cache; print its vmlinux.

    ``make minimal-kernel`` (part of ``make test``): the build only, into
    ``<state>/cache``; installing it is ``microagent kernel build``.
    """
    from microagent.errors import MicroagentError, print_error
    from microagent.fsutil import restrict_umask
    from microagent.paths import state_root

    restrict_umask()  # cache files 0600, directories 0700
    try:
        built = ensure_built(MINIMAL, state_root(None) / "cache")
    except MicroagentError as exc:
        print_error(exc)
        return 1
    print(built.vmlinux)
    return 0


if __name__ == "__main__":
    sys.exit(main())

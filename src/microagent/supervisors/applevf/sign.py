"""Sign a Python interpreter with ``com.apple.security.virtualization`` (macOS).

Virtualization.framework refuses to create a VM in a process whose
executable lacks the ``com.apple.security.virtualization`` entitlement.  The
apple-vf vmhost is a Python process, so the interpreter that runs it must
carry it.  Run, inside the venv microagent is installed in::

    python -m microagent.supervisors.applevf.sign            # copy + sign → <venv>/bin/python-vz
    python -m microagent.supervisors.applevf.sign --in-place # sign the interpreter itself
    python -m microagent.supervisors.applevf.sign --dry-run  # print the commands only

The default copies the real interpreter binary (``os.path.realpath(sys.executable)``)
to ``<sys.prefix>/bin/python-vz`` and ad-hoc signs the copy
(``codesign --force --sign - --entitlements entitlements.plist``), which
leaves the installed Python untouched; the supervisor prefers that copy for
its vmhost (see :func:`~microagent.supervisors.applevf.backend.vmhost_python`).
If the copy cannot start (an interpreter that finds its library relative to
its own location), ``--in-place`` signs the interpreter binary itself (an
upgrade of that Python undoes it: sign again).  Unverified here: needs macOS.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ENTITLEMENT = "com.apple.security.virtualization"
#: the text of entitlements.plist beside this module (a test keeps the two equal)
ENTITLEMENTS_PLIST = """<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
	<!-- Virtualization.framework refuses to create VMs without it. -->
	<key>com.apple.security.virtualization</key>
	<true/>
</dict>
</plist>
"""


def entitlements_path() -> Path:
    """The packaged entitlements.plist (written to a temp file if the package lacks it)."""
    packaged = Path(__file__).with_name("entitlements.plist")
    if packaged.is_file():
        return packaged
    fd, tmp = tempfile.mkstemp(prefix="microagent-entitlements-", suffix=".plist")
    with os.fdopen(fd, "w") as fh:
        fh.write(ENTITLEMENTS_PLIST)
    return Path(tmp)


def plan(source: Path, dest: Path, entitlements: Path, *, in_place: bool) -> list[list[str]]:
    """The commands that sign (pure)."""
    target = source if in_place else dest
    steps = [] if in_place else [["cp", "-p", str(source), str(dest)]]
    steps.append(["codesign", "--force", "--sign", "-", "--entitlements", str(entitlements), str(target)])
    steps.append(["codesign", "-d", "--entitlements", "-", "--xml", str(target)])
    return steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m microagent.supervisors.applevf.sign",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default=os.path.realpath(sys.executable), help="the interpreter to sign")
    parser.add_argument("--dest", default=str(Path(sys.prefix) / "bin" / "python-vz"), help="where the copy goes")
    parser.add_argument("--in-place", action="store_true", help="sign --python itself instead of a copy")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args(argv)
    source, dest = Path(args.python), Path(args.dest)
    steps = plan(source, dest, entitlements_path(), in_place=args.in_place)
    if args.dry_run:
        for step in steps:
            print(shlex.join(step))
        return 0
    if sys.platform != "darwin":
        print(f"microagent: signing for Virtualization.framework needs macOS; this host runs {sys.platform}",
              file=sys.stderr)
        return 1
    target = source if args.in_place else dest
    if not args.in_place:
        shutil.copy2(source, dest)
    for step in steps[1:]:
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"microagent: {shlex.join(step)} failed: {done.stderr.strip()}", file=sys.stderr)
            return 1
        if "-d" in step and ENTITLEMENT not in done.stdout + done.stderr:
            print(f"microagent: {target} does not show {ENTITLEMENT} after signing", file=sys.stderr)
            return 1
    check = subprocess.run([str(target), "-c", "import microagent"], capture_output=True, text=True)
    if check.returncode != 0:
        print(f"microagent: the signed interpreter {target} cannot import microagent: {check.stderr.strip()}\n"
              "try --in-place", file=sys.stderr)
        return 1
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run the real vmhost (``microagent.supervisors.applevf.vmhost.main``) against ``FakeVirtualization``.

The apple-vf supervisor tests start this script instead of the signed
interpreter's ``-m microagent.supervisors.applevf.vmhost``; it takes the same
arguments plus the fake's knobs::

    python fake_vmhost.py [--guest-init PATH] [--start-error TEXT] [--validation-error TEXT]
                          [--cpu-range LO:HI] [--framework-version TEXT] [--save-restore-error TEXT]
                          -- --state-dir D --name N [--check|--probe|--restore FILE]

Everything else is the production vmhost: its sockets, control protocol,
bridges, signals and exit codes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_vz import FakePlatform, FakeVirtualization  # noqa: E402

from microagent.supervisors.applevf import vmhost  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--guest-init", default=None)
    parser.add_argument("--start-error", default="")
    parser.add_argument("--validation-error", default="")
    parser.add_argument("--cpu-range", default="1:8")
    parser.add_argument("--framework-version", default="")
    parser.add_argument("--save-restore-error", default="")
    args, rest = parser.parse_known_args()
    lo, hi = (int(x) for x in args.cpu_range.split(":"))
    vz = FakeVirtualization(guest_init=args.guest_init, cpu_range=(lo, hi))
    vz.start_error = args.start_error
    vz.validation_error = args.validation_error
    vz.save_restore_error = args.save_restore_error
    if args.framework_version:
        vz.framework_version = args.framework_version
    return vmhost.main([a for a in rest if a != "--"], platform=FakePlatform(vz))


if __name__ == "__main__":
    sys.exit(main())

"""``microagent --help`` must not import the heavy parts of the library."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("microagent.channel", "microagent.kernels", "microagent.images", "microagent.supervisors",
         "microagent.host.detect", "microagent.workspace", "subprocess")


def test_help_imports_only_the_cli() -> None:
    code = (
        "import sys\n"
        "from microagent.cli.main import cli\n"
        "try:\n"
        "    cli.main(args=['--help'], standalone_mode=False)\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = set(out.split())
    offenders = [m for m in HEAVY if m in loaded]
    assert offenders == [], f"--help imported {offenders}"

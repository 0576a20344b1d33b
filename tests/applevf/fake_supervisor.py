"""``microagent-applevf-supervisor`` on Linux against ``FakeVirtualization`` (a fake, NOT macOS).

The production supervisor answers ``unsupported`` off macOS; this one serves
the very same :class:`~microagent.supervisors.applevf.backend.AppleVFBackend`
through the same :func:`~microagent.supervisors.base.serve`, with its vmhost
started through ``fake_vmhost.py``.  Tests point the CLI at it with
``MICROAGENT_APPLEVF_SUPERVISOR`` (a wrapper script: :func:`install`), so
``microagent snapshot create``, ``start --from-snapshot`` and ``create
--from-snapshot`` run end to end: CLI → workspace layer → this executable →
the real vmhost process → the fake framework → the real guest init (agent mode).

The fake guest init comes from ``MICROAGENT_TEST_FAKE_VZ_GUEST_INIT``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
GUEST_ENV = "MICROAGENT_TEST_FAKE_VZ_GUEST_INIT"


def install(path: Path) -> Path:
    """A wrapper executable at ``path`` that runs this script with this interpreter."""
    path.write_text(f"#!/bin/sh\nexec {sys.executable} {Path(__file__).resolve()} \"$@\"\n")
    path.chmod(0o700)
    return path


def main() -> int:
    from microagent.fsutil import restrict_umask
    from microagent.supervisors.applevf.backend import AppleVFBackend
    from microagent.supervisors.base import serve

    command = [sys.executable, str(HERE / "fake_vmhost.py"), "--guest-init", os.environ[GUEST_ENV]]
    restrict_umask()
    return serve(lambda: AppleVFBackend(vmhost_command=command), "apple-vf")


if __name__ == "__main__":
    sys.exit(main())

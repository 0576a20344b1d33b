"""TEST-ONLY: boot Firecracker guests where KVM emulates every guest instruction.

On our hosts ``/dev/kvm`` is a paravirtual KVM (``kvm_pvm``) whose guest ABI
no public kernel speaks, so KVM runs a guest through its instruction emulator
(about 1.5 M instructions/s).  A stock kernel dies on instructions the
emulator lacks (``lock cmpxchg16b``, ``xrstor``, ``popcnt``…); a minimal test
kernel with small workarounds, a CPU template hiding CX16 and
``clearcpuid=…`` boot arguments does boot, in about a minute.  That is a
correctness lane for tests (``tests/firecracker_slow/``), never a way to run
workloads: ``host``/``doctor`` keep saying Firecracker needs hardware KVM.

``MICROAGENT_TEST_FIRECRACKER_SLOW_LANE`` names the ``slow-lane.json`` the
harness writes (``tests/firecracker_slow/harness/build_kernel.py``)::

    {"kernel": "/abs/vmlinux", "cpuTemplate": "/abs/cpu-template.json",
     "bootArgs": "clearcpuid=xsave,smap,popcnt"}

With it set the supervisor boots guests without hardware KVM, adds the CPU
template (``cpu-config``) and the boot arguments.  The kernel itself is
installed like any other (``kernel install --backend firecracker --from``).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from microagent.errors import InvalidRequest

ENV = "MICROAGENT_TEST_FIRECRACKER_SLOW_LANE"
#: kernel arguments only: words of letters, digits and ``=,._-``
_BOOT_ARGS_RE = re.compile(r"^[A-Za-z0-9=,._-]+( [A-Za-z0-9=,._-]+)*$")
_MAX_FILE = 64 << 10


@dataclass(frozen=True)
class SlowLane:
    """The test-only additions to a Firecracker boot."""

    source: str  # the slow-lane.json path
    kernel: str
    cpu_template: str
    boot_args: str


def _fail(path: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"{ENV}={path}: {why}",
                          "point it at the slow-lane.json of tests/firecracker_slow/harness/build_kernel.py, "
                          "or unset it (it is for tests only)")


def _abs_file(path: str, value: object, key: str) -> str:
    if not isinstance(value, str) or not os.path.isabs(value) or not Path(value).is_file():
        raise _fail(path, f"{key!r} must be the absolute path of an existing file")
    return value


def slow_lane(env: dict[str, str] | None = None) -> SlowLane | None:
    """The slow lane named by :data:`ENV`, or ``None`` when it is unset.

    :raises InvalidRequest: the variable does not name a valid slow-lane file.
    """
    path = (os.environ if env is None else env).get(ENV, "")
    if not path:
        return None
    if not os.path.isabs(path):
        raise _fail(path, "not an absolute path")
    try:
        with open(path, "rb") as fh:
            raw = fh.read(_MAX_FILE + 1)
    except OSError as exc:
        raise _fail(path, f"cannot read it ({exc.strerror})") from exc
    try:
        doc = json.loads(raw) if len(raw) <= _MAX_FILE else None
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise _fail(path, "not a JSON object")
    boot_args = doc.get("bootArgs", "")
    if not isinstance(boot_args, str) or (boot_args and not _BOOT_ARGS_RE.match(boot_args)):
        raise _fail(path, "'bootArgs' must be plain kernel arguments")
    return SlowLane(source=path, kernel=_abs_file(path, doc.get("kernel"), "kernel"),
                    cpu_template=_abs_file(path, doc.get("cpuTemplate"), "cpuTemplate"), boot_args=boot_args)

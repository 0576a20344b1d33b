"""Fixtures for real VM boots under QEMU.

The session state root is a temp dir; the kernel comes from the default
state root when ``make install`` put it there (else it is installed from
Debian's package).  After the session no QEMU process may mention the temp
state root: the suite asserts it leaks nothing.
"""

from __future__ import annotations

# vm_state, the session's state root, is in tests/conftest.py: tests/egress/ shares it.

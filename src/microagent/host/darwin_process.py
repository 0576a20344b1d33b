"""Process start times on macOS, for the ``(pid, starttime)`` process identity.

:mod:`microagent.host.process` identifies a recorded process by its PID
and its start time, read from ``/proc/<pid>/stat`` — which macOS does not
have.  This module reads the start time through libproc
(``proc_pidinfo(pid, PROC_PIDTBSDINFO)``: ``pbi_start_tvsec``/``pbi_start_tvusec``,
in microseconds); :mod:`microagent.host.process` uses it on darwin.
Unverified here: needs macOS.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

PROC_PIDTBSDINFO = 3
SZOMB = 5
MAXCOMLEN = 16


class ProcBsdInfo(ctypes.Structure):
    """``struct proc_bsdinfo`` (<sys/proc_info.h>)."""

    _fields_ = [
        ("pbi_flags", ctypes.c_uint32), ("pbi_status", ctypes.c_uint32), ("pbi_xstatus", ctypes.c_uint32),
        ("pbi_pid", ctypes.c_uint32), ("pbi_ppid", ctypes.c_uint32),
        ("pbi_uid", ctypes.c_uint32), ("pbi_gid", ctypes.c_uint32), ("pbi_ruid", ctypes.c_uint32),
        ("pbi_rgid", ctypes.c_uint32), ("pbi_svuid", ctypes.c_uint32), ("pbi_svgid", ctypes.c_uint32),
        ("rfu_1", ctypes.c_uint32),
        ("pbi_comm", ctypes.c_char * MAXCOMLEN), ("pbi_name", ctypes.c_char * (2 * MAXCOMLEN)),
        ("pbi_nfiles", ctypes.c_uint32), ("pbi_pgid", ctypes.c_uint32), ("pbi_pjobc", ctypes.c_uint32),
        ("e_tdev", ctypes.c_uint32), ("e_tpgid", ctypes.c_uint32), ("pbi_nice", ctypes.c_int32),
        ("pbi_start_tvsec", ctypes.c_uint64), ("pbi_start_tvusec", ctypes.c_uint64),
    ]


_libproc: Any = None


def _lib() -> Any:
    global _libproc
    if _libproc is None:
        _libproc = ctypes.CDLL(ctypes.util.find_library("proc") or "/usr/lib/libproc.dylib", use_errno=True)
        _libproc.proc_pidinfo.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_uint64, ctypes.c_void_p,
                                          ctypes.c_int]
        _libproc.proc_pidinfo.restype = ctypes.c_int
    return _libproc


def starttime(pid: int) -> int | None:
    """The process's start time in microseconds since the epoch; None when gone or a zombie."""
    info = ProcBsdInfo()
    size = _lib().proc_pidinfo(pid, PROC_PIDTBSDINFO, 0, ctypes.byref(info), ctypes.sizeof(info))
    if size != ctypes.sizeof(info) or info.pbi_status == SZOMB:
        return None
    return int(info.pbi_start_tvsec) * 1_000_000 + int(info.pbi_start_tvusec)


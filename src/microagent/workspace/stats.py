"""``stats NAME``: what a workspace uses of the host, and its guest's memory (docs/commit.md).

From the host's ``/proc``: CPU time (user + system) and RSS/PSS
(``smaps_rollup``) of the VMM and of its helper processes (the channel helper,
pasta), each checked against its recorded start time so a recycled PID is
never read; the root disk's allocated and apparent size; the bytes through the
VM's TAP (read from ``/proc/<vmm>/net/dev``, the VMM's own network
namespace: the host's TAP for ``nat``, pasta's namespace for ``user``);
omitted for an isolated workspace, which has no network.  From the guest,
while it runs: ``/proc/meminfo`` through an exec of ``cat``.

The exec count is what the channel helper publishes in the run dir
(``exec-count.json``, rewritten at most twice a second): every ``exec``
session it relayed since the workspace was created, ``null`` before its
first boot.  ``stats`` itself runs one exec while the guest is up.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from microagent.workspace.lifecycle import WorkspaceStore

_MEMINFO_KEYS = {"MemTotal": "totalBytes", "MemFree": "freeBytes", "MemAvailable": "availableBytes",
                 "Cached": "cachedBytes"}


def process_usage(pid: int, starttime: int | None) -> dict[str, Any] | None:
    """CPU seconds and memory of a live recorded process, or ``None`` when it is gone."""
    from microagent.host.process import ProcessRef, is_alive

    if starttime is not None and not is_alive(ProcessRef(pid, starttime)):
        return None
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[1].split()  # after "(comm)": state is field 3, utime 14, stime 15
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[str, Any] = {"pid": pid, "cpuUserSeconds": int(fields[11]) / ticks,
                           "cpuSystemSeconds": int(fields[12]) / ticks}
    out["cpuSeconds"] = round(out["cpuUserSeconds"] + out["cpuSystemSeconds"], 3)
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("Rss", "Pss"):
                out[f"{key.lower()}Bytes"] = int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass  # another user's process: CPU time only
    return out


def _net_dev(pid: int) -> dict[str, tuple[int, int]]:
    """``interface -> (rx bytes, tx bytes)`` in the network namespace of ``pid``."""
    out = {}
    try:
        lines = Path(f"/proc/{pid}/net/dev").read_text().splitlines()[2:]
    except OSError:
        return {}
    for line in lines:
        name, _, rest = line.partition(":")
        cols = rest.split()
        if len(cols) >= 9:
            out[name.strip()] = (int(cols[0]), int(cols[8]))
    return out


def network_usage(runtime_dir: Path, vmm_pid: int) -> dict[str, Any] | None:
    """Bytes the guest received and sent through its TAP, when it has one."""
    from microagent.runtime_state import read_json

    recorded = read_json(runtime_dir / "network.json")
    if not isinstance(recorded, dict) or recorded.get("mode") not in ("nat", "user"):
        return None
    from microagent.network.pasta import VMM_TAP
    from microagent.network.plan import tap_name

    tap = recorded.get("tap") or (VMM_TAP if recorded["mode"] == "user" else tap_name(runtime_dir))
    counters = _net_dev(vmm_pid)
    if not isinstance(tap, str) or tap not in counters:
        return None
    rx, tx = counters[tap]
    # the host's TAP receives what the guest sends
    return {"mode": recorded["mode"], "interface": tap, "guestRxBytes": tx, "guestTxBytes": rx}


def exec_count(runtime_dir: Path) -> int | None:
    """Exec sessions the channel helper counted, or ``None`` when it has published none."""
    from microagent.channel.router import EXEC_COUNT_FILE
    from microagent.runtime_state import read_json

    doc = read_json(runtime_dir / EXEC_COUNT_FILE)
    count = doc.get("execs") if isinstance(doc, dict) else None
    return count if isinstance(count, int) and not isinstance(count, bool) and count >= 0 else None


def guest_memory(store: WorkspaceStore, name: str) -> dict[str, Any]:
    """The guest's ``/proc/meminfo`` (bytes), or ``{"error": ...}`` when it cannot be read."""
    from microagent.errors import MicroagentError
    from microagent.workspace.sessions import GuestConnection

    try:
        with GuestConnection(store, name, "exec") as guest:
            result = guest.exec(["cat", "/proc/meminfo"], user="0", timeout=10, output_limit=64 * 1024)
    except MicroagentError as exc:
        return {"error": exc.message}
    if result.exit_code != 0:
        return {"error": f"cat /proc/meminfo exited {result.exit_code} in the guest"}
    out: dict[str, Any] = {}
    for line in result.stdout.decode("ascii", "replace").splitlines():
        key, _, value = line.partition(":")
        if key in _MEMINFO_KEYS:
            parts = value.split()
            if parts and parts[0].isdigit():
                out[_MEMINFO_KEYS[key]] = int(parts[0]) * 1024
    if "totalBytes" in out and "availableBytes" in out:
        out["usedBytes"] = out["totalBytes"] - out["availableBytes"]
    return out


def stats(store: WorkspaceStore, name: str) -> dict[str, Any]:
    """Usage of workspace ``name`` (any state; process, network and guest figures while it runs).

    :raises NotFound: an unknown workspace.
    """
    from microagent.runtime_state import read_json
    from microagent.workspace.state import WorkspaceState

    manifest = store.manifest(name)
    observed = store.observe(name, manifest.backend)
    disk = store.disk_path(name)
    try:
        st = disk.stat()
        disk_doc: dict[str, Any] = {"path": str(disk), "allocatedBytes": st.st_blocks * 512,
                                    "apparentBytes": st.st_size}
    except OSError:
        disk_doc = {"path": str(disk), "error": "missing"}
    out: dict[str, Any] = {"name": name, "state": observed.state.value, "disk": disk_doc,
                           "resources": manifest.resources, "execCount": None}
    runtime = observed.runtime or {}
    rt = store.runtime_path(name)
    out["execCount"] = exec_count(rt)
    procs: dict[str, Any] = {}
    pid = runtime.get("pid")
    if observed.alive and isinstance(pid, int):
        procs["vmm"] = process_usage(pid, runtime.get("starttime"))
        net = network_usage(rt, pid)
        if net is not None:
            out["network"] = net
    if isinstance(runtime.get("routerPid"), int):
        procs["channelHelper"] = process_usage(runtime["routerPid"], runtime.get("routerStarttime"))
    recorded_net = read_json(rt / "network.json")
    if isinstance(recorded_net, dict) and isinstance(recorded_net.get("pastaPid"), int):
        procs["pasta"] = process_usage(recorded_net["pastaPid"], recorded_net.get("pastaStarttime"))
    procs = {k: v for k, v in procs.items() if v is not None}
    out["processes"] = procs
    out["cpuSeconds"] = round(sum(p["cpuSeconds"] for p in procs.values()), 3)
    out["rssBytes"] = sum(p.get("rssBytes", 0) for p in procs.values())
    out["pssBytes"] = sum(p.get("pssBytes", 0) for p in procs.values())
    if observed.state is WorkspaceState.RUNNING and observed.alive:
        out["guestMemory"] = guest_memory(store, name)
    return out

"""Many workspaces at once, booted for real under QEMU: concurrent starts and execs.

Eight tiny workspaces are started together from a thread pool (the first
start of the image saves its boot snapshot while the others may restore it
or boot), then 40 execs are released at once, round-robin across them, each
of which must come back from its own workspace with its own number.  After
delete nothing of them is left: no directories, no VMM or channel helper.
No timing is asserted (bench/scale.py measures).
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from pathlib import Path

from microagent.sdk import Workspace
from microagent.workspace.lifecycle import WorkspaceStore
from support import vmm_processes

COUNT = 8
EXECS = 40


def test_concurrent_starts_and_execs_then_nothing_left(vm_state: Path) -> None:
    store = WorkspaceStore(vm_state)
    names = [f"many{i}" for i in range(COUNT)]
    handles: dict[str, Workspace] = {}
    try:
        for name in names:
            store.create(name, profile="tiny")

        def start(name: str) -> str:
            transition = store.start(name)
            assert transition.state.value == "running", transition
            return name

        with concurrent.futures.ThreadPoolExecutor(COUNT) as pool:
            assert sorted(pool.map(start, names)) == names
        running = {m["name"] for m in store.list(running_only=True)}
        assert running >= set(names)
        handles.update({name: Workspace(name, store=store) for name in names})
        pids = {name: store.observe(name).pid for name in names}
        assert len(set(pids.values())) == COUNT, f"each workspace its own VMM: {pids}"

        gate = threading.Barrier(EXECS)

        def one(i: int) -> tuple[int, str, int, bytes, bytes]:
            ws = handles[names[i % COUNT]]
            gate.wait(60)
            result = ws.exec(["sh", "-c", 'echo "$i $(hostname)"; echo err$i >&2'], env={"i": str(i)},
                             timeout=120)
            return i, ws.name, result.exit_code, result.stdout, result.stderr

        with concurrent.futures.ThreadPoolExecutor(EXECS) as pool:
            outcomes = list(pool.map(one, range(EXECS)))
        assert [o[0] for o in outcomes] == list(range(EXECS))
        wrong = [o for o in outcomes if (o[2], o[3], o[4]) != (0, f"{o[0]} {o[1]}\n".encode(), f"err{o[0]}\n".encode())]
        assert wrong == [], f"{len(wrong)} of {EXECS} execs wrong: {wrong[:5]}"
    finally:
        for ws in handles.values():
            ws.close()
        for name in names:
            store.delete(name, force=True)

    for name in names:
        assert not (vm_state / "workspaces" / name).exists(), f"{name}: disk/manifest left behind"
        assert not store.runtime_path(name).exists(), f"{name}: runtime directory left behind"
    assert not [m for m in store.list() if m["name"] in names]
    needles = [str(store.runtime_path(name)) for name in names] + [str(vm_state / "workspaces" / name)
                                                                   for name in names]
    deadline = time.monotonic() + 5
    left = ["?"]
    while left and time.monotonic() < deadline:
        left = [line for line in vmm_processes(str(vm_state)) if any(n in line for n in needles)]
        if left:
            time.sleep(0.1)
    assert left == [], f"processes left after delete: {left}"

"""microagent SDK quickstart: a named workspace from Python.

Run it with the project's venv (needs the kernel and guest init that
`make install` sets up):

    .venv/bin/python examples/sdk_quickstart.py
"""

from __future__ import annotations

import threading

import microagent


def main() -> None:
    # create + start; leaving the block kills the VM and deletes the workspace
    with microagent.Workspace.create("quickstart", profile="tiny", env={"GREETING": "hello"}) as ws:
        r = ws.exec(["sh", "-c", 'echo "$GREETING from $(hostname), kernel $(uname -r)"'])
        print("exit", r.exit_code, "->", r.stdout.decode().strip())

        # stdin, a working directory, a timeout
        r = ws.exec(["tr", "a-z", "A-Z"], stdin=b"shout\n")
        print(r.stdout.decode().strip())
        r = ws.exec("sleep 10", timeout=1)
        print("timed out:", r.status, r.exit_code)

        # files in and out
        ws.put("/root/notes.txt", b"written from the host\n")
        print(ws.read_file("/root/notes.txt").decode().strip())

        # several commands at once over the same workspace
        results = {}

        def job(i: int) -> None:
            results[i] = ws.exec(["sh", "-c", f"sleep 1; echo job {i}"]).stdout.decode().strip()

        threads = [threading.Thread(target=job, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print(sorted(results.values()))

        # halt (clean shutdown, disk flushed) and start again: the disk persists
        ws.halt()
        print("state:", ws.state)
        ws.start()
        print(ws.exec(["cat", "/root/notes.txt"]).stdout.decode().strip())

        # typed errors: a quarantined workspace refuses exec
        ws.quarantine()
        try:
            ws.exec(["true"])
        except microagent.Conflict as err:
            print("refused:", err.message)

    # one-shot: boot, run, tear down
    r = microagent.run("builtin:busybox", ["uname", "-s"])
    print("one-shot:", r.stdout.decode().strip())


if __name__ == "__main__":
    main()

"""The real guest as a child process, for tests/agent/ (imported as ``agent.agent_proc``)."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from microagent.channel import ChannelConnection, SocketStream


class Agent:
    """A ``microagent-init --agent --fd N`` process on a socketpair."""

    def __init__(self, binary: Path, log_path: Path) -> None:
        self.host_sock, guest = socket.socketpair()
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(binary), "--agent", "--fd", str(guest.fileno())],
            pass_fds=[guest.fileno()],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        guest.close()
        self.conn = ChannelConnection.open(SocketStream(self.host_sock), name="agent", hello_timeout=5)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int | None:
        self.conn.close()
        try:
            return self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            return None
        finally:
            self._log.close()


def wait_gone(pid: int, timeout: float = 3.0) -> bool:
    """True once ``pid`` no longer exists (or is a zombie)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ")[-1].startswith("Z"):
                    return True
        except (FileNotFoundError, ProcessLookupError):  # gone between open() and read()
            return True
        time.sleep(0.02)
    return False

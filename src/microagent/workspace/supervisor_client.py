"""Building supervisor requests for a workspace and sending them.

The workspace layer's only way to reach a backend: it fills in the identity
and config, finds the supervisor executable and decodes the answer.
"""

from __future__ import annotations

from pathlib import Path

from msgspec import Struct

from microagent.vmkit.dispatch import (
    call_each_in_process,
    call_in_process,
    call_supervisor,
    find_supervisor,
    in_process,
    load_backend,
)
from microagent.workspace.lock import held_fd
from microagent.vmkit.types import (
    Config,
    ExecSpec,
    Identity,
    Request,
    Response,
    SnapshotSpec,
    new_request_id,
)


class SupervisorClient(Struct):
    backend: str
    state_root: Path
    override: str | None = None

    def _identity(self, name: str) -> Identity:
        return Identity(requestID=new_request_id(), runtimeID=name, role="workload", backend=self.backend)

    def load(self) -> None:
        """Have the backend's code loaded when it is answered in process (a no-op for an
        executable), so a later :meth:`send` starts its worker at once."""
        if in_process(self.backend, self.override):
            load_backend(self.backend)

    def send(self, command: str, name: str, config: Config | None = None,
             exec_spec: ExecSpec | None = None, timeout: float = 600.0,
             snapshot: SnapshotSpec | None = None) -> Response:
        """Send one command; raises the supervisor's error as a MicroagentError.

        When this process holds ``name``'s lock the worker inherits it (an executable,
        or the forked worker of a Linux backend answered in process: :mod:`microagent.vmkit.dispatch`):
        the lock stays held by whoever does the work, even if we are killed.
        """
        cfg = config or Config(stateDir=str(self.state_root))
        request = Request(command=command, identity=self._identity(name), config=cfg, exec=exec_spec, snapshot=snapshot)
        if in_process(self.backend, self.override):
            return call_in_process(self.backend, request, timeout=timeout,
                                   lock_fd=held_fd(self.state_root, name))
        exe = find_supervisor(self.backend, self.override)
        return call_supervisor(exe, request, timeout=timeout, lock_fd=held_fd(self.state_root, name))

    def send_each(self, commands: list[str], name: str, timeout: float = 600.0) -> list[Response]:
        """Send ``commands`` for ``name`` in order (each with the workspace's stock config);
        the first that fails raises. Answered in process, one worker answers them all
        (one fork: a one-shot run's ``kill`` and ``delete``)."""
        if not in_process(self.backend, self.override):
            return [self.send(command, name, timeout=timeout) for command in commands]
        cfg = Config(stateDir=str(self.state_root))
        requests = [Request(command=command, identity=self._identity(name), config=cfg) for command in commands]
        return call_each_in_process(self.backend, requests, timeout=timeout,
                                    lock_fd=held_fd(self.state_root, name))

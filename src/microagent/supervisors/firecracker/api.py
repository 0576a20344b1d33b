"""A tiny client for Firecracker's HTTP API over its Unix socket.

Only what the supervisor needs: ``GET /`` (instance info), ``PATCH /vm``
(pause/resume) and ``PUT /actions``.  One short-lived HTTP/1.1 connection per
call.  Socket paths longer than ``sun_path`` work
(:func:`microagent.unixsock.connect_any_length`).

Errors land on the :mod:`microagent.errors` tree, carrying Firecracker's own
``fault_message``:

- the socket is absent or refuses, or the call times out → :class:`Transient`
  (the VMM is not (or no longer) answering);
- HTTP 400 → :class:`Conflict` (our requests are well-formed, so Firecracker
  refusing one means the VM is in the wrong state for it, e.g. pausing a VM
  that was never started);
- any other error status or a reply that is not JSON → :class:`Permanent`.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from typing import Any

from microagent.unixsock import connect_any_length
from microagent.errors import Conflict, Permanent, Transient

__all__ = ["FirecrackerAPI", "InstanceInfo"]

DEFAULT_TIMEOUT = 5.0


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            connect_any_length(sock, self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class InstanceInfo(dict[str, Any]):
    """``GET /``: ``{"id", "state", "vmm_version", "app_name"}``.

    ``state`` is ``Not started``, ``Running`` or ``Paused``.
    """

    @property
    def id(self) -> str:
        return str(self.get("id", ""))

    @property
    def state(self) -> str:
        return str(self.get("state", ""))

    @property
    def vmm_version(self) -> str:
        return str(self.get("vmm_version", ""))


class FirecrackerAPI:
    """Calls to one firecracker process's API socket.

    :param path: the ``--api-sock`` path (any length).
    :param timeout: per-call connect/read timeout in seconds.
    """

    def __init__(self, path: str | os.PathLike[str], timeout: float = DEFAULT_TIMEOUT) -> None:
        self.path = os.fspath(path)
        self.timeout = timeout

    def request(self, method: str, url: str, body: dict[str, Any] | None = None) -> Any:
        """One API call; returns the decoded JSON body (``None`` for 204).

        :raises Transient: the API socket does not answer.
        :raises Conflict: Firecracker answered 400 (wrong state for the call).
        :raises Permanent: another error status, or an undecodable reply.
        """
        what = f"firecracker API {method} {url}"
        conn = _UnixHTTPConnection(self.path, self.timeout)
        try:
            payload = None if body is None else json.dumps(body).encode()
            headers = {"Accept": "application/json"}
            if payload is not None:
                headers["Content-Type"] = "application/json"
            conn.request(method, url, body=payload, headers=headers)
            response = conn.getresponse()
            status, raw = response.status, response.read()
        except (OSError, http.client.HTTPException) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else (str(exc) or type(exc).__name__)
            raise Transient(f"{what} failed: {reason.lower()} (socket {self.path})",
                            "check that the firecracker process is running") from exc
        finally:
            conn.close()
        try:
            doc = json.loads(raw) if raw.strip() else None
        except ValueError as exc:
            raise Permanent(f"{what} answered {status} with a body that is not JSON: {raw[:200]!r}") from exc
        if 200 <= status < 300:
            return doc
        fault = doc.get("fault_message", "") if isinstance(doc, dict) else ""
        message = f"firecracker refused {method} {url} ({status}): {fault or raw[:200].decode(errors='replace')}"
        if status == 400:
            raise Conflict(message, "check the workspace state (inspect) before retrying")
        raise Permanent(message, "see vmm.log in the runtime directory")

    # --- the calls the supervisor makes -----------------------------------------

    def instance_info(self) -> InstanceInfo:
        """``GET /``."""
        doc = self.request("GET", "/")
        if not isinstance(doc, dict):
            raise Permanent(f"firecracker API GET / answered {doc!r}, not an object")
        return InstanceInfo(doc)

    def vm_config(self) -> dict[str, Any]:
        """``GET /vm/config``: the configuration firecracker is running with."""
        doc = self.request("GET", "/vm/config")
        return doc if isinstance(doc, dict) else {}

    def pause(self) -> None:
        """``PATCH /vm {"state": "Paused"}``."""
        self.request("PATCH", "/vm", {"state": "Paused"})

    def resume(self) -> None:
        """``PATCH /vm {"state": "Resumed"}``."""
        self.request("PATCH", "/vm", {"state": "Resumed"})

    def action(self, action_type: str) -> None:
        """``PUT /actions {"action_type": ...}`` (``InstanceStart``, ``SendCtrlAltDel``, ``FlushMetrics``)."""
        self.request("PUT", "/actions", {"action_type": action_type})

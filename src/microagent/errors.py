"""The one exception tree of microagent.

Every error a user can see is a :class:`MicroagentError` with a ``kind`` (the
wire names below, docs/supervisor-api.md "Response") and a ``remediation``
line saying what to do next (docs/architecture.md, "Where each concern lives")::

    MicroagentError
    ├── NotFound            kind=not_found           (no such workspace, image, kernel)
    ├── Conflict            kind=conflict            (wrong state, name clash, port in use)
    ├── Unsupported         kind=unsupported         (backend not runnable on this host OS)
    ├── Permanent           kind=permanent           (bad input, corrupt file: retrying won't help)
    │   └── InvalidRequest                           (a supervisor request failed validation)
    ├── Transient           kind=transient           (may work if retried: guest not ready yet)
    │   └── ChannelClosed                            (the guest channel went away mid-session)
    ├── PolicyDenied        kind=policy_denied       (privilege or policy forbids it)
    └── ResourceExhausted   kind=resource_exhausted  (disk full, no free subnet, timeouts)

Errors are mapped by class, never by message text.  ``OSError`` and
subprocess failures are translated at module edges with ``raise ... from``.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing itself costs CLI start-up time; mypy reads this block
    from typing import Any

KINDS = (
    "not_found",
    "conflict",
    "unsupported",
    "permanent",
    "transient",
    "policy_denied",
    "resource_exhausted",
)


class MicroagentError(Exception):
    """Base of every user-facing error.

    :param message: lowercase, names the thing, says what went wrong.
    :param remediation: one line telling the user what to do next.
    """

    kind = "permanent"

    def __init__(self, message: str, remediation: str = "", **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.remediation = remediation
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        """The ``error`` object of the ``{ok:false, error}`` envelope."""
        out: dict[str, Any] = {"kind": self.kind, "message": self.message}
        if self.remediation:
            out["remediation"] = self.remediation
        if self.details:
            out["details"] = self.details
        return out

    @staticmethod
    def from_dict(data: dict[str, Any]) -> "MicroagentError":
        """Rebuild an error received over a wire (supervisor response)."""
        cls = _BY_KIND.get(str(data.get("kind", "")), MicroagentError)
        details = data.get("details") or {}
        return cls(str(data.get("message", "unknown error")), str(data.get("remediation", "")), **details)


class NotFound(MicroagentError):
    kind = "not_found"


class Conflict(MicroagentError):
    kind = "conflict"


class Unsupported(MicroagentError):
    kind = "unsupported"


class Permanent(MicroagentError):
    kind = "permanent"


class InvalidRequest(Permanent):
    """A supervisor request that failed validation; nothing was started."""


class Transient(MicroagentError):
    kind = "transient"


class ChannelClosed(Transient):
    """The guest channel closed while a session was waiting on it."""


class PolicyDenied(MicroagentError):
    kind = "policy_denied"


class ResourceExhausted(MicroagentError):
    kind = "resource_exhausted"


_BY_KIND: dict[str, type[MicroagentError]] = {
    "not_found": NotFound,
    "conflict": Conflict,
    "unsupported": Unsupported,
    "permanent": Permanent,
    "transient": Transient,
    "policy_denied": PolicyDenied,
    "resource_exhausted": ResourceExhausted,
}


def print_error(exc: MicroagentError) -> None:
    """``error: <message>`` and ``hint: <remediation>`` on stderr (the ``python -m`` tools' format)."""
    import sys

    print(f"error: {exc.message}", file=sys.stderr)
    if exc.remediation:
        print(f"hint: {exc.remediation}", file=sys.stderr)

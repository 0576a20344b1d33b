"""Exceptions of the guest channel, rooted in :mod:`microagent.errors`.

::

    Permanent
    ├── ProtocolError         a frame or payload that breaks docs/protocol.md
    ├── VersionMismatch       the guest speaks another protocol version
    ├── SessionEnded          using a session after its EXIT/ERROR/CLOSE
    └── GuestError            an ERROR frame from the guest or its helper (``code`` kept)
        ├── GuestNotFound         code not_found          (also a NotFound)
        ├── GuestPermissionDenied code permission_denied  (also a PolicyDenied)
        ├── GuestConnectFailed    code connect_failed     (also a Transient)
        └── GuestResourceExhausted code resource_exhausted (also a ResourceExhausted)
    Transient
    ├── ChannelClosed         (microagent.errors) the channel went away
    └── ChannelTimeout        a host-side wait on the channel ran out

Guest errors are mapped by their machine ``code`` (:func:`guest_error`),
never by message text.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing itself costs CLI start-up time; mypy reads this block
    from typing import Any


from microagent.errors import NotFound, Permanent, PolicyDenied, ResourceExhausted, Transient

__all__ = [
    "ChannelTimeout",
    "GuestConnectFailed",
    "GuestError",
    "GuestNotFound",
    "GuestPermissionDenied",
    "ProtocolError",
    "SessionEnded",
    "VersionMismatch",
    "guest_error",
]


class ProtocolError(Permanent):
    """A frame or payload that does not follow docs/protocol.md."""


class VersionMismatch(Permanent):
    """The guest does not speak ``microagent-channel`` version 1."""


class SessionEnded(Permanent):
    """The session already ended (guest EXIT/ERROR, or host CLOSE)."""


class ChannelTimeout(Transient):
    """A host-side wait on the channel (HELLO, an event, credit) timed out."""


class GuestError(Permanent):
    """The guest answered a session with ``ERROR {code, message}``.

    :param code: the machine-readable code from the frame (e.g. ``is_directory``).
    :param message: the guest's human-readable message.
    """

    def __init__(self, code: str, message: str = "", remediation: str = "", **details: Any) -> None:
        text = f"guest error {code}" + (f": {message}" if message else "")
        super().__init__(text, remediation, code=code, **details)
        self.code = code
        self.guest_message = message


class GuestNotFound(GuestError, NotFound):
    """Guest ``ERROR`` with code ``not_found``."""

    kind = "not_found"


class GuestPermissionDenied(GuestError, PolicyDenied):
    """Guest ``ERROR`` with code ``permission_denied``."""

    kind = "policy_denied"


class GuestConnectFailed(GuestError, Transient):
    """Guest ``ERROR`` with code ``connect_failed`` (nothing listening yet?)."""

    kind = "transient"


class GuestResourceExhausted(GuestError, ResourceExhausted):
    """``ERROR`` with code ``resource_exhausted`` (e.g. the VM is paused: host disk full)."""

    kind = "resource_exhausted"

    def __init__(self, code: str, message: str = "", remediation: str = "", **details: Any) -> None:
        super().__init__(code, message, remediation, **details)
        self.message = message or self.message  # the helper's words, not "guest error ..."


_BY_CODE: dict[str, type[GuestError]] = {
    "resource_exhausted": GuestResourceExhausted,
    "not_found": GuestNotFound,
    "permission_denied": GuestPermissionDenied,
    "connect_failed": GuestConnectFailed,
}


def guest_error(code: str, message: str = "", **details: Any) -> GuestError:
    """Build the :class:`GuestError` subclass matching ``code``."""
    return _BY_CODE.get(code, GuestError)(code, message, **details)

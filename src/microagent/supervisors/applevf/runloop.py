"""The macOS platform of the vmhost: PyObjC's ``Virtualization``, the main run loop, the delegate.

Imported only by the vmhost process on macOS (never by the supervisor, the
CLI or the tests on Linux).  The VM is created with ``initWithConfiguration:``,
so it belongs to the **main dispatch queue**: every VZ call is made from the
main thread (the vmhost is single-threaded), and completion handlers and
delegate callbacks arrive when the main thread runs its run loop, which
:meth:`DarwinPlatform.run_slice` does for a few milliseconds per turn of the
vmhost loop.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

from microagent.errors import PolicyDenied, Unsupported

_DELEGATE_CLASS: Any = None


def _delegate_class() -> Any:
    """An ``NSObject`` subclass conforming to ``VZVirtualMachineDelegate`` (defined once)."""
    global _DELEGATE_CLASS
    if _DELEGATE_CLASS is not None:
        return _DELEGATE_CLASS
    import objc  # type: ignore[import-not-found]
    from Foundation import NSObject  # type: ignore[import-not-found]

    class MicroagentVMDelegate(NSObject, protocols=[objc.protocolNamed("VZVirtualMachineDelegate")]):  # type: ignore[call-arg,misc]
        def initWithCallbacks_(self, callbacks: Any) -> Any:
            self = objc.super(MicroagentVMDelegate, self).init()
            if self is None:
                return None
            self.callbacks = callbacks
            return self

        def guestDidStopVirtualMachine_(self, vm: Any) -> None:
            self.callbacks[0]()

        def virtualMachine_didStopWithError_(self, vm: Any, error: Any) -> None:
            self.callbacks[1](str(error.localizedDescription()) if error is not None else "unknown error")

    _DELEGATE_CLASS = MicroagentVMDelegate
    return _DELEGATE_CLASS


class DarwinPlatform:
    """The real OS API for :class:`~microagent.supervisors.applevf.vmhost.VMHost`."""

    def __init__(self, vz: Any, foundation: Any) -> None:
        self.vz = vz
        self._foundation = foundation

    def run_slice(self, seconds: float) -> None:
        """Run the main run loop (and so the main dispatch queue) for up to ``seconds``."""
        f = self._foundation
        f.NSRunLoop.currentRunLoop().runMode_beforeDate_(
            f.NSDefaultRunLoopMode, f.NSDate.dateWithTimeIntervalSinceNow_(seconds))

    def make_delegate(self, on_guest_stop: Callable[[], None], on_error: Callable[[str], None]) -> Any:
        return _delegate_class().alloc().initWithCallbacks_((on_guest_stop, on_error))

    def framework_version(self) -> str:
        """``macOS 14.5 (23F79), Virtualization.framework 1.0 (…)``: a saved state is bound to both."""
        import platform

        f = self._foundation
        info = f.NSProcessInfo.processInfo().operatingSystemVersionString()
        bundle = f.NSBundle.bundleWithIdentifier_("com.apple.Virtualization")
        version = "unknown"
        if bundle is not None:
            short = bundle.objectForInfoDictionaryKey_("CFBundleShortVersionString")
            build = bundle.objectForInfoDictionaryKey_("CFBundleVersion")
            version = f"{short or '?'} ({build or '?'})"
        return f"macOS {platform.mac_ver()[0]} ({info}), Virtualization.framework {version}"


def load_platform() -> DarwinPlatform:
    """Import PyObjC's Virtualization (macOS only).

    :raises Unsupported: not macOS.
    :raises PolicyDenied: PyObjC's Virtualization wrapper is not installed.
    """
    if sys.platform != "darwin":
        raise Unsupported(f"the apple-vf host process needs macOS; this host runs {sys.platform}",
                          "use the backend of this host OS")
    try:
        import Foundation
        import Virtualization  # type: ignore[import-not-found]
    except ImportError as exc:
        raise PolicyDenied(f"PyObjC's Virtualization wrapper is not installed: {exc}",
                           "pip install 'microagent[macos]' (pyobjc-framework-Virtualization)") from exc
    return DarwinPlatform(Virtualization, Foundation)

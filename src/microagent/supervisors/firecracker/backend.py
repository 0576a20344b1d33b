"""The Firecracker backend: ``host`` and ``check`` (lifecycle lands with issue #5)."""

from __future__ import annotations

from microagent.errors import PolicyDenied
from microagent.supervisors.base import Backend
from microagent.supervisors.linux_host import check_files, host_document, require_linux
from microagent.vmkit.types import Request, Response


class FirecrackerBackend(Backend):
    name = "firecracker"

    def host(self, request: Request) -> Response:
        facts = require_linux(self.name)
        doc = host_document(self.name, facts.tools["firecracker"], facts,
                            vsock=facts.vhost_vsock, accel="kvm")
        return Response(ok=True, backend=self.name, host=doc)

    def check(self, request: Request) -> Response:
        facts = require_linux(self.name)
        fc = facts.tools["firecracker"]
        if not fc.available:
            raise PolicyDenied(f"firecracker binary not usable: {fc.error}",
                               "run 'make install' or set MICROAGENT_FIRECRACKER")
        if facts.kvm.kind != "hardware":
            raise PolicyDenied(f"firecracker cannot boot guests here: {facts.kvm.detail}",
                               "use --backend qemu on this host")
        check_files(request)
        return self.event(request, "unknown", "check passed")

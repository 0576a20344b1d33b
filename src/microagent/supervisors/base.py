"""What every supervisor executable shares: request intake, dispatch, answer.

A supervisor reads one JSON request (stdin, ``--request FILE`` or
``--request-json STR``), validates it (:func:`microagent.vmkit.types.parse_request`),
calls the backend method named by ``command`` and prints one JSON response.
Exit status is 0 iff the response says ``ok``.  Errors never escape as
tracebacks: user errors carry their kind, anything unexpected becomes a
``permanent`` internal error with the traceback on stderr.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import traceback
from typing import Any, Callable

from microagent.errors import InvalidRequest, MicroagentError, ResourceExhausted, Unsupported
from microagent.vmkit.types import Event, Identity, Request, Response, now_rfc3339, parse_request


class Backend:
    """One backend's implementation of the supervisor commands.

    Subclasses override the commands they support; the rest answer a
    structured ``unsupported`` error naming the command and backend.
    """

    name = "unknown"

    def host(self, request: Request) -> Response:
        raise self._unsupported("host")

    def check(self, request: Request) -> Response:
        raise self._unsupported("check")

    def prepare(self, request: Request) -> Response:
        raise self._unsupported("prepare")

    def start(self, request: Request) -> Response:
        raise self._unsupported("start")

    def run(self, request: Request) -> Response:
        raise self._unsupported("run")

    def inspect(self, request: Request) -> Response:
        raise self._unsupported("inspect")

    def halt(self, request: Request) -> Response:
        raise self._unsupported("halt")

    def quarantine(self, request: Request) -> Response:
        raise self._unsupported("quarantine")

    def stop(self, request: Request) -> Response:
        raise self._unsupported("stop")

    def kill(self, request: Request) -> Response:
        raise self._unsupported("kill")

    def delete(self, request: Request) -> Response:
        raise self._unsupported("delete")

    def pause(self, request: Request) -> Response:
        raise self._unsupported("pause")

    def resume(self, request: Request) -> Response:
        raise self._unsupported("resume")

    def snapshot(self, request: Request) -> Response:
        raise self._unsupported("snapshot")

    def console(self, request: Request) -> Response:
        """No supervisor serves a console: the contract is the CLI's ``connect``."""
        raise Unsupported(f"the {self.name} supervisor has no console command",
                          "use 'microagent connect NAME' (a PTY shell over the guest channel)")

    def _unsupported(self, command: str) -> Unsupported:
        return Unsupported(f"the {self.name} supervisor does not implement {command!r} yet",
                           "see the backends table in README.md for what each backend supports")

    def event(self, request: Request, state: str, detail: str = "", **extra: Any) -> Response:
        """A successful response carrying an event for ``request``'s identity."""
        assert request.identity is not None
        return Response(ok=True, backend=self.name,
                        event=Event(identity=request.identity, state=state, detail=detail), **extra)


def read_request(argv: list[str]) -> Any:
    import argparse  # a supervisor's own command line only: not on the library's path

    parser = argparse.ArgumentParser(add_help=True)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--request", metavar="FILE", help="read the JSON request from FILE")
    group.add_argument("--request-json", metavar="JSON", help="the JSON request itself")
    args = parser.parse_args(argv)
    try:
        if args.request_json is not None:
            text = args.request_json
        elif args.request is not None:
            with open(args.request, encoding="utf-8") as fh:
                text = fh.read()
        else:
            text = sys.stdin.read()
    except OSError as exc:
        raise InvalidRequest(f"cannot read request: {exc}") from exc
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InvalidRequest(f"request is not valid JSON: {exc}") from exc


def _error_response(backend: str, err: MicroagentError, raw: Any) -> Response:
    response = Response(ok=False, backend=backend, error=err.to_dict())
    if isinstance(raw, dict) and isinstance(raw.get("identity"), dict):
        ident = raw["identity"]
        try:
            response.event = Event(
                identity=Identity(**{k: str(ident.get(k, "")) for k in ("requestID", "runtimeID", "role", "backend")}),
                state="failed" if raw.get("command") in ("start", "run") else "unknown",
                detail=err.message,
            )
        except TypeError:
            pass
    return response


def adopt_lock(command: str) -> None:
    """Keep the workspace lock the CLI handed down (``MICROAGENT_LOCK_FD``) to ourselves:
    closed on exec, so the VMM and helper we spawn never hold it; the record
    names us, the process now doing the work."""
    raw = os.environ.pop("MICROAGENT_LOCK_FD", "")
    if not raw.isdigit():
        return
    fd = int(raw)
    record = json.dumps({"pid": os.getpid(), "command": f"{command} (supervisor)", "since": now_rfc3339()})
    try:
        os.set_inheritable(fd, False)
        os.pwrite(fd, record.encode().ljust(512), 0)  # the holder slot of microagent.workspace.lock
    except OSError:
        pass


def _os_error(backend_name: str, exc: OSError) -> MicroagentError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ResourceExhausted(f"the host disk is full: {exc.strerror} ({exc.filename or 'state directory'})",
                                 "free space on the disk holding the state directory and retry")
    return MicroagentError(f"internal error in the {backend_name} supervisor: OSError: {exc}",
                           "this is a bug in microagent; the traceback is on stderr")


def answer(backend_factory: Callable[[], Backend], backend_name: str, raw: Any,
           *, lock_handed_down: bool = False) -> Response:
    """Validate one decoded request, call the backend command it names, and turn
    every error into an answer: what a supervisor executable prints, and what
    :func:`microagent.vmkit.dispatch.call_in_process` returns.

    ``lock_handed_down``: an executable adopts the workspace lock its caller passed
    down (in process, the caller holds it and does the work itself).
    """
    try:
        request = parse_request(raw)
        if lock_handed_down:
            adopt_lock(request.command)
        if request.identity is not None and request.identity.backend != backend_name:
            raise InvalidRequest(
                f"identity.backend is {request.identity.backend!r} but this is the {backend_name} supervisor",
                f"send the request to microagent-{request.identity.backend.replace('-', '').replace('windowshyperv', 'hyperv')}-supervisor",
            )
        backend = backend_factory()
        return getattr(backend, request.command)(request)
    except MicroagentError as err:
        return _error_response(backend_name, err, raw)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            traceback.print_exc(file=sys.stderr)
        return _error_response(backend_name, _os_error(backend_name, exc), raw)
    except Exception as exc:  # noqa: BLE001 - the one place an unexpected error becomes an answer
        traceback.print_exc(file=sys.stderr)
        return _error_response(backend_name, MicroagentError(
            f"internal error in the {backend_name} supervisor: {exc.__class__.__name__}: {exc}",
            "this is a bug in microagent; the traceback is on stderr"), raw)


def serve(backend_factory: Callable[[], Backend], backend_name: str, argv: list[str] | None = None) -> int:
    """Run one supervisor invocation; returns the process exit status."""
    argv = sys.argv[1:] if argv is None else argv
    raw: Any = None
    try:
        raw = read_request(argv)
    except MicroagentError as err:
        response = _error_response(backend_name, err, raw)
    else:
        response = answer(backend_factory, backend_name, raw, lock_handed_down=True)
    json.dump(response.to_json(), sys.stdout, indent=2)
    sys.stdout.write("\n")
    sys.stdout.flush()
    return 0 if response.ok else 1

"""Named exit codes of the ``microagent`` CLI (docs/cli.md)."""

OK = 0
FAILURE = 1  # a microagent error (kind in the envelope)
USAGE = 2  # bad flags or arguments
RUN_INFRA = 125  # run/exec: microagent failed before the command started
NOT_EXECUTABLE = 126  # the guest command exists but could not be executed
NOT_FOUND = 127  # the guest command was not found

"""What the tools return: typed, so the SDK publishes an output schema for each.

Guest output is text (UTF-8, undecodable bytes replaced) with the number of
bytes the command really wrote and whether the text was cut to the limit;
file contents that are not UTF-8 travel as base64.
"""

from __future__ import annotations

import base64
from typing import Any, Literal

from pydantic import BaseModel, Field


class Output(BaseModel):
    """One output stream of a command."""

    text: str = Field(description="what was kept, decoded as UTF-8 (undecodable bytes replaced)")
    bytes: int = Field(description="bytes the command wrote to this stream in all")
    truncated: bool = Field(description="true when only the first output_limit bytes were kept")


class ExecOutcome(BaseModel):
    """How a command ended."""

    status: Literal["exited", "signaled", "timed_out", "failed_to_start"]
    exit_code: int = Field(description="the exit code; 128+N when killed by signal N, 124 timed out, "
                                       "126/127 not executable/not found")
    signal: int = Field(0, description="the signal that killed it, else 0")
    stdout: Output
    stderr: Output
    error: str | None = Field(None, description="why it failed to start, when it did")


class RunOutcome(ExecOutcome):
    """A one-shot run: the command's outcome and where it ran."""

    backend: str


class WorkspaceRow(BaseModel):
    name: str
    state: str
    pid: int | None
    backend: str
    image: str
    profile: str
    resources: dict[str, int]
    createdAt: str
    createdBy: str | None = Field(None, description='"mcp" for workspaces an MCP server created')


class WorkspaceList(BaseModel):
    workspaces: list[WorkspaceRow]


class Created(BaseModel):
    name: str
    state: str = Field(description="prepared, or running when started")
    image: str
    backend: str
    resources: dict[str, int]
    network: str
    createdBy: str


class Transition(BaseModel):
    """What a lifecycle call did."""

    name: str
    operation: str
    previousState: str
    state: str
    detail: str = ""
    pid: int | None = None


class Snapshot(BaseModel):
    """A saved workspace: disk and memory."""

    workspace: str
    tag: str
    createdAt: str | None = None
    memoryMiB: int | None = None
    cpuCount: int | None = None
    bytes: int | None = Field(None, description="space the snapshot takes on the host")


class Deleted(BaseModel):
    name: str
    deleted: bool
    killed: bool = Field(description="the VM was running and was killed first")


class FileContent(BaseModel):
    path: str
    size: int = Field(description="bytes in the file")
    encoding: Literal["utf-8", "base64"]
    content: str


class Written(BaseModel):
    path: str
    bytes_written: int


class Logs(BaseModel):
    text: str = Field(description="the end of the guest serial console log")
    bytes: int = Field(description="bytes returned")
    truncated: bool = Field(description="true when earlier output was left out")


class Status(BaseModel):
    """The ``status`` document (as ``microagent status --json``)."""

    name: str
    state: str
    document: dict[str, Any]


def file_content(path: str, data: bytes) -> FileContent:
    """UTF-8 text when it decodes, else base64."""
    try:
        return FileContent(path=path, size=len(data), encoding="utf-8", content=data.decode("utf-8"))
    except UnicodeDecodeError:
        return FileContent(path=path, size=len(data), encoding="base64",
                           content=base64.b64encode(data).decode("ascii"))

"""Write the fuzzers' seed corpora: real channel traffic from the host encoder.

    python guest/fuzz/seeds.py OUTDIR

creates OUTDIR/json (JSON payloads, for fuzz_json) and OUTDIR/channel (byte
streams of whole frames, for fuzz_frame and fuzz_dispatch). The frames come
from microagent.channel.frames, so the seeds follow docs/protocol.md as the
host speaks it; nothing binary is kept in the repository.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

from microagent.channel.frames import (
    MAX_PAYLOAD,
    PROTOCOL_NAME,
    PROTOCOL_VERSION,
    STDERR,
    STDIN,
    STDOUT,
    FrameType,
    encode_data,
    encode_frame,
    encode_json,
    encode_window,
    json_frame,
)

HELLO = {"protocol": PROTOCOL_NAME, "version": PROTOCOL_VERSION, "role": "host"}

# One OPEN payload per session kind, with every documented field.
OPENS = [
    {"kind": "exec", "argv": ["sh", "-c", "echo hi"], "env": ["K=V"], "cwd": "/", "user": "root",
     "stdin": True, "pty": False, "timeout_ms": 5000, "stdout_limit": 1024, "stderr_limit": 0},
    {"kind": "exec", "argv": ["/bin/true"], "user": 0, "pty": True, "rows": 40, "cols": 120,
     "term": "xterm-256color"},
    {"kind": "exec", "argv": ["id"], "user": "1000:1000", "stdin": False},
    {"kind": "shell", "argv": ["/bin/sh", "-l"], "term": "xterm-256color", "rows": 24, "cols": 80,
     "env": [], "user": "root", "cwd": ""},
    {"kind": "put", "path": "/tmp/f", "mode": 420, "uid": 0, "gid": 0, "mkdirs": False},
    {"kind": "get", "path": "/etc/hostname"},
    {"kind": "forward", "port": 8080, "host": "127.0.0.1"},
    {"kind": "shutdown", "action": "poweroff", "grace_ms": 5000, "signal": 15},
]

CONTROLS = [{"resize": {"rows": 50, "cols": 132}}, {"signal": 2}]

# Payloads that reach the JSON reader's corners: escapes, surrogates,
# numbers at the int64 edges, nesting, duplicate keys.
EXTRA_JSON = [
    b'{"s":"a\\"b\\\\c\\/\\b\\f\\n\\r\\t\\u0000\\u00e9\\ud83d\\ude00\\udc00\\ud800x"}',
    b'{"i":9223372036854775807,"j":-9223372036854775808,"k":18446744073709551616,'
    b'"f":-1.5e-3,"z":0,"e":1E+2}',
    b'{"a":[[],{},[null,true,false]],"o":{"p":{"q":[1,"2",{"r":[]}]}}}',
    b'{"kind":"exec","kind":"get","argv":[]}',
    b' \t\r\n{ "k" : "v" } \n',
]


def channel_streams() -> dict[str, bytes]:
    hello = json_frame(0, FrameType.HELLO, HELLO)
    streams = {}
    for n, req in enumerate(OPENS):
        sid = n + 1
        body = json_frame(sid, FrameType.OPEN, req)
        body += encode_frame(sid, FrameType.DATA, encode_data(STDIN, b"echo hi\n"))
        body += encode_frame(sid, FrameType.WINDOW, encode_window(STDOUT, 65536))
        body += encode_frame(sid, FrameType.WINDOW, encode_window(STDERR, 1))
        for ctl in CONTROLS:
            body += json_frame(sid, FrameType.CONTROL, ctl)
        body += encode_frame(sid, FrameType.DATA, encode_data(STDIN))  # EOF
        body += encode_frame(sid, FrameType.CLOSE)
        streams[f"open-{n}-{req['kind']}"] = hello + body
    streams["hello-only"] = hello
    streams["no-hello"] = json_frame(1, FrameType.OPEN, OPENS[0])
    # A header only: its length is one past the limit (the payload is skipped).
    streams["oversized"] = hello + struct.pack(">IIB", MAX_PAYLOAD + 1, 3, FrameType.DATA)
    streams["unknown-type"] = hello + encode_frame(0, 99) + encode_frame(5, 0, b"x")
    # Regression: a member name with an embedded NUL aliased "kind".
    streams["nul-in-member-name"] = hello + json_frame(
        9, FrameType.OPEN, {"kind": "get", "path": "/x", "kind\x00": "exec", "argv": ["echo", "x"]})
    streams["error-close"] = (hello + json_frame(2, FrameType.OPEN, OPENS[4])
                              + json_frame(2, FrameType.ERROR, {"code": "x", "message": "y"}))
    return streams


def json_payloads() -> dict[str, bytes]:
    out = {"hello": encode_json(HELLO)}
    for n, req in enumerate(OPENS):
        out[f"open-{n}-{req['kind']}"] = encode_json(req)
    for n, ctl in enumerate(CONTROLS):
        out[f"control-{n}"] = encode_json(ctl)
    for n, raw in enumerate(EXTRA_JSON):
        out[f"edge-{n}"] = raw
    return out


def write(outdir: Path) -> None:
    for sub, items in (("json", json_payloads()), ("channel", channel_streams())):
        d = outdir / sub
        d.mkdir(parents=True, exist_ok=True)
        for name, data in items.items():
            (d / name).write_bytes(data)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: seeds.py OUTDIR")
    write(Path(sys.argv[1]))

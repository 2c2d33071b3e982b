"""One WSGI app whose routes fail in every way tests/test_failures.py needs.

Every route first writes the worker's pid to the file named by `?pidfile=`
(when given), so a test knows which worker took the request before it fails.
Every successful response carries the worker's pid in `X-Worker-Pid`.
"""

import ctypes
import faulthandler
import json
import os
import struct
import sys
import time
from urllib.parse import parse_qs

# A well-formed START frame ("200 OK", body FAKE-FRAME, final) for the first few
# request ids: if fd 1 were the protocol pipe, writing these would be taken as
# the response.
FAKE_FRAMES = b"".join(
    struct.pack(">I", len(p)) + p
    for p in (bytes((0x96, 0x0C, rid)) + b"\xc4\x06200 OK" + b"\xc4\x00" + b"\xc4\x0aFAKE-FRAME" + b"\xc3"
              for rid in range(4))
)


def _respond(start_response, body, status="200 OK"):
    start_response(status, [
        ("Content-Type", "text/plain"),
        ("Content-Length", str(len(body))),
        ("X-Worker-Pid", str(os.getpid())),
    ])
    return [body]


def _write_pid(path):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(os.getpid()))
    os.rename(tmp, path)


def application(environ, start_response):
    path = environ["PATH_INFO"]
    query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    if "pidfile" in query:
        _write_pid(query["pidfile"])
    marker = query.get("m", "")
    time.sleep(float(query.get("sleep", 0)))

    if path == "/pid":
        return _respond(start_response, str(os.getpid()).encode())
    if path == "/raise":
        raise ValueError("FAIL-RAISE " + marker)
    if path == "/raise-in-iter":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _raise_before_first_chunk(marker)
    if path == "/raise-after-empty":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _raise_after_empty_chunk(marker)
    if path == "/raise-after-chunk":
        headers = [("Content-Type", "text/plain")]
        if "cl" in query:
            headers.append(("Content-Length", "1000"))
        start_response("200 OK", headers)
        return _raise_after_first_chunk(marker)
    if path == "/exit":
        os._exit(1)
    if path == "/segv-ctypes":
        ctypes.string_at(0)
    if path == "/segv-faulthandler":
        faulthandler._sigsegv()
    if path == "/stdio":
        return _stdio(start_response, marker)
    return _respond(start_response, b"not found: " + path.encode("latin-1"), "404 Not Found")


def _raise_before_first_chunk(marker):
    raise ValueError("FAIL-RAISE-IN-ITER " + marker)
    yield b"never"


def _raise_after_empty_chunk(marker):
    yield b""
    raise ValueError("FAIL-RAISE-AFTER-EMPTY " + marker)


def _raise_after_first_chunk(marker):
    yield b"FIRST-CHUNK|"
    raise ValueError("FAIL-RAISE-AFTER-CHUNK " + marker)


def _stdio(start_response, marker):
    """Everything an app may do with the standard streams, then a normal answer."""
    print("FAIL-PRINT " + marker)
    print("FAIL-MULTI-A " + marker + "\nFAIL-MULTI-B " + marker)
    sys.stdout.write("FAIL-HUGE-START " + marker + " " + "x" * (1 << 20) + " FAIL-HUGE-END " + marker + "\n")
    sys.stdout.flush()
    os.write(1, ("FAIL-FD1-WRITE " + marker + "\n").encode())
    os.write(1, FAKE_FRAMES + b"\n")
    sys.stderr.write("FAIL-STDERR " + marker + "\n")
    sys.stderr.flush()
    os.write(2, ("FAIL-FD2-WRITE " + marker + "\n").encode())
    stdin_text = sys.stdin.read()
    fd0 = os.read(0, 4096)
    print("FAIL-STDIO-DONE " + marker)
    body = json.dumps({"stdin": stdin_text, "fd0": fd0.decode("latin-1"), "pid": os.getpid()}).encode()
    return _respond(start_response, body)

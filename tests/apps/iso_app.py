"""Apps that fail in the ways the isolation tests need."""

import ctypes
import os
import signal
import sys
import time


def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/raise-before":
        raise ValueError("ISO-BEFORE-HEADERS")
    if path == "/raise-after":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return raise_after_first_chunk()
    if path == "/exit":
        os._exit(1)
    if path == "/segfault":
        ctypes.string_at(0)
    if path == "/selfkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if path == "/slow":
        time.sleep(float(environ.get("QUERY_STRING") or 1))
    if path == "/print":
        print("ISO-PRINTED-LINE")
        sys.stdout.write("x" * (1 << 20) + "\n")
        os.write(1, b"ISO-RAW-FD1-WRITE\n")
        data = sys.stdin.read()
        body = ("stdin=%r" % data).encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def raise_after_first_chunk():
    yield b"partial"
    raise ValueError("ISO-AFTER-HEADERS")

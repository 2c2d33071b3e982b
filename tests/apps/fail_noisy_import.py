"""Prints, writes to fd 1 and reads stdin while being imported, then serves."""

import os
import sys

print("FAIL-IMPORT-PRINT")
os.write(1, b"FAIL-IMPORT-FD1\n")
STDIN_AT_IMPORT = sys.stdin.read()


def application(environ, start_response):
    body = ("stdin-at-import=%r pid=%d" % (STDIN_AT_IMPORT, os.getpid())).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]

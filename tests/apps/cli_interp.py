"""Which interpreter runs the worker, and a body echo that streams its answer.

GET /info: JSON with sys.version, sys.executable, sys.prefix, the implementation.
POST /echo?chunk=N: reads wsgi.input in pieces of N bytes, answers with the same
bytes as a generator of N-byte chunks (no Content-Length, so streamed), and the
sha256 and length of what it read in headers.
GET /latin1: echoes the X-Latin header (a latin-1 native string) back.
"""

import hashlib
import json
import os
import platform
import sys
from urllib.parse import parse_qs


def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/info":
        body = json.dumps({
            "version": sys.version,
            "python_version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
            "prefix": sys.prefix,
            "pid": os.getpid(),
        }).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]
    if path == "/echo":
        size = int(parse_qs(environ.get("QUERY_STRING", "")).get("chunk", ["65536"])[0])
        stream = environ["wsgi.input"]
        pieces = []
        while True:
            piece = stream.read(size)
            if not piece:
                break
            pieces.append(piece)
        data = b"".join(pieces)
        start_response("200 OK", [
            ("Content-Type", "application/octet-stream"),
            ("X-Read-Length", str(len(data))),
            ("X-Read-Sha256", hashlib.sha256(data).hexdigest()),
        ])
        return (data[i:i + size] for i in range(0, len(data), size))
    if path == "/latin1":
        value = environ.get("HTTP_X_LATIN", "")
        body = value.encode("latin-1")
        start_response("200 OK", [("Content-Type", "text/plain; charset=latin-1"),
                                  ("X-Latin-Back", value), ("Content-Length", str(len(body)))])
        return [body]
    start_response("404 Not Found", [("Content-Length", "0")])
    return []

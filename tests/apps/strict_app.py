"""Echoes what the app saw, for the front-end tests; logs every path it serves."""

import json
import os
import sys
import threading


def application(environ, start_response):
    print("SERVED %s" % environ["PATH_INFO"])
    sys.stdout.flush()
    if environ["PATH_INFO"] == "/no-read":
        start_response("401 Unauthorized", [("Content-Type", "text/plain"), ("Content-Length", "4")])
        return [b"nope"]
    if environ["PATH_INFO"] == "/bad-header":
        start_response("200 OK", [("X-Evil", "a\r\nSet-Cookie: pwned=1")])
        return [b"x"]
    if environ["PATH_INFO"] == "/bad-status":
        start_response("200 OK\r\nX-Evil: 1", [])
        return [b"x"]
    if environ["PATH_INFO"] == "/die-while-reading":
        threading.Timer(0.5, os._exit, (3,)).start()
        environ["wsgi.input"].read()
    if environ["PATH_INFO"] == "/answer-then-read":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return answer_then_read(environ["wsgi.input"])
    body = environ["wsgi.input"].read()
    keys = {k: v for k, v in environ.items() if isinstance(v, str)}
    out = json.dumps({"body": len(body), "environ": keys}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(out)))])
    return [out]


def answer_then_read(body):
    yield b"started\n"
    yield b"read %d\n" % len(body.read())


def framing(environ, start_response):
    """Responses whose framing the app gets wrong."""
    path = environ["PATH_INFO"]
    if path == "/short":
        start_response("200 OK", [("Content-Length", "10")])
        return [b"12345"]
    if path == "/long":
        start_response("200 OK", [("Content-Length", "5")])
        return [b"1234567890"]
    if path.startswith("/hop/"):
        start_response("200 OK", [(path[len("/hop/"):], "x")])
        return [b"hop"]
    print("SERVED %s" % path)
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]

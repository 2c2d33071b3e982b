"""Echoes what the app saw, for the front-end tests; logs every path it serves."""

import json
import sys


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
    body = environ["wsgi.input"].read()
    keys = {k: v for k, v in environ.items() if isinstance(v, str)}
    out = json.dumps({"body": len(body), "environ": keys}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(out)))])
    return [out]

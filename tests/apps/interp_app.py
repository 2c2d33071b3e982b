"""Tells which interpreter runs it; echoes a POST body through a streamed response."""

import sys


def application(environ, start_response):
    if environ["REQUEST_METHOD"] == "POST":
        data = environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"]))
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return (data[i:i + 1000] for i in range(0, len(data), 1000))
    body = ("%s|%s" % (sys.executable, sys.version.split()[0])).encode()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]

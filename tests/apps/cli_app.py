"""Reports what the command line gave the worker."""

import json
import os
import sys


def _answer(start_response, payload):
    body = json.dumps(payload).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def application(environ, start_response):
    return _answer(start_response, {
        "callable": "application",
        "env": {k: v for k, v in os.environ.items()},
        "cwd": os.getcwd(),
        "path": sys.path,
        "executable": sys.executable,
    })


def other(environ, start_response):
    return _answer(start_response, {"callable": "other"})


def make(greeting="made"):
    def app(environ, start_response):
        return _answer(start_response, {"callable": greeting})
    return app

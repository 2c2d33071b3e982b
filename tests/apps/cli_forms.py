"""Answers with JSON describing the worker: which callable of this module
served, how many times the factory ran, the environment, cwd and sys.path.
`/raise` raises, for the log-level tests."""

import json
import os
import sys

FACTORY_CALLS = []


def _report(name, environ, start_response):
    if environ["PATH_INFO"] == "/raise":
        raise ValueError("CLI-FORMS-RAISED")
    body = json.dumps({
        "callable": name,
        "factory_calls": len(FACTORY_CALLS),
        "pid": os.getpid(),
        "env": dict(os.environ),
        "cwd": os.getcwd(),
        "path": sys.path,
        "executable": sys.executable,
        "prefix": sys.prefix,
        "version": sys.version,
        "remote_addr": environ.get("REMOTE_ADDR"),
        "server": [environ.get("SERVER_NAME"), environ.get("SERVER_PORT")],
    }).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def application(environ, start_response):
    return _report("application", environ, start_response)


def other(environ, start_response):
    return _report("other", environ, start_response)


def make(label="factory"):
    FACTORY_CALLS.append(label)

    def made(environ, start_response):
        return _report(label, environ, start_response)
    return made

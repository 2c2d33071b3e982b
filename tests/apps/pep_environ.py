"""Echo the WSGI environ as JSON (PEP 3333 tests).

`application` answers with a JSON object: every environ key -> its value when
the value is a native str, else repr(value). `validated` is the same app behind
wsgiref.validate.validator (run it with PYTHONWARNINGS=error so that validator
warnings turn into errors inside the worker).

A few derived facts the client cannot see otherwise are added under keys that
start with "pep.": the types of the str values and whether the file-like
objects have the methods PEP 3333 requires.
"""

import json
from wsgiref.validate import validator

INPUT_METHODS = ("read", "readline", "readlines", "__iter__")
ERRORS_METHODS = ("write", "writelines", "flush")


def describe(environ):
    out = {}
    for key, value in environ.items():
        out[key] = value if type(value) is str else repr(value)
    out["pep.non_str_cgi_keys"] = sorted(k for k, v in environ.items() if "." not in k and type(v) is not str)
    out["pep.input_methods"] = [m for m in INPUT_METHODS if callable(getattr(environ["wsgi.input"], m, None))]
    out["pep.errors_methods"] = [m for m in ERRORS_METHODS if callable(getattr(environ["wsgi.errors"], m, None))]
    out["pep.version_type"] = type(environ.get("wsgi.version")).__name__
    return out


def application(environ, start_response):
    body = json.dumps(describe(environ), sort_keys=True).encode("utf-8")
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


validated = validator(application)

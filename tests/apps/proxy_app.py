"""Reports what a proxy's headers made of the request, and counts uploaded bytes."""

import json


def application(environ, start_response):
    received = 0
    while True:
        block = environ["wsgi.input"].read(1 << 20)
        if not block:
            break
        received += len(block)
    keys = ["REMOTE_ADDR", "wsgi.url_scheme", "HTTP_HOST", "SCRIPT_NAME", "PATH_INFO", "SERVER_NAME",
            "HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_PROTO"]
    body = json.dumps(dict({k: environ.get(k) for k in keys}, received=received)).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]

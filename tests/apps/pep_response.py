"""Response-side PEP 3333 behaviour, one route per case (dispatch on PATH_INFO).

Every route is a well-behaved WSGI app, so the module's `validated` app
(wsgiref.validate.validator around `application`) must never complain.
Query-string parameters are listed per route. Python 3.8 compatible, stdlib only.
"""

import time
from urllib.parse import parse_qs
from wsgiref.validate import validator

import pep_environ

TEXT = [("Content-Type", "text/plain")]


def _query(environ):
    return dict((k, v[0]) for k, v in parse_qs(environ.get("QUERY_STRING", "")).items())


def write_then_list(environ, start_response):
    """write() calls (one empty) followed by a returned list."""
    write = start_response("200 OK", list(TEXT))
    write(b"first,")
    write(b"")
    write(b"second,")
    return [b"third,", b"fourth"]


def write_then_generator(environ, start_response):
    write = start_response("200 OK", list(TEXT))
    write(b"a")

    def rest():
        yield b"b"
        yield b"c"

    return rest()


def write_only(environ, start_response):
    write = start_response("200 OK", list(TEXT))
    for i in range(3):
        write(b"w%d;" % i)
    return []


def errors(environ, start_response):
    """Writes ?marker=... to wsgi.errors (write, writelines, flush)."""
    marker = _query(environ)["marker"]
    stream = environ["wsgi.errors"]
    stream.write(marker + "-write\n")
    stream.writelines([marker + "-lines1\n", marker + "-lines2\n"])
    stream.flush()
    start_response("200 OK", list(TEXT))
    return [b"logged"]


def file_wrapper(environ, start_response):
    """This module's own source through wsgi.file_wrapper, in ?block= byte blocks."""
    block = int(_query(environ).get("block", "4096"))
    start_response("200 OK", [("Content-Type", "text/x-python")])
    return environ["wsgi.file_wrapper"](open(__file__, "rb"), block)


def content_length(environ, start_response):
    """Declares Content-Length 11 and yields it in three chunks."""
    start_response("200 OK", TEXT + [("Content-Length", "11")])

    def body():
        yield b"hello"
        yield b" "
        yield b"world"

    return body()


def generator(environ, start_response):
    """?n= chunks b"chunk-<i>;" with no Content-Length, ?delay= seconds between them."""
    q = _query(environ)
    n, delay = int(q.get("n", "5")), float(q.get("delay", "0"))
    start_response("200 OK", list(TEXT))

    def body():
        for i in range(n):
            if i and delay:
                time.sleep(delay)
            yield b"chunk-%d;" % i

    return body()


def status(environ, start_response):
    """Answers ?code= (with ?body= as the app's body; Content-Type only where allowed)."""
    q = _query(environ)
    code = int(q.get("code", "200"))
    reasons = {200: "OK", 201: "Created", 204: "No Content", 304: "Not Modified", 404: "Not Found"}
    headers = [("X-Status-App", str(code))]
    if code not in (204, 304):
        headers += TEXT
    if code == 304:
        headers.append(("ETag", '"pep-etag"'))
    start_response("%d %s" % (code, reasons[code]), headers)
    return [q.get("body", "").encode("latin-1")]


def reason(environ, start_response):
    start_response("200 Everything Is Fine", list(TEXT))
    return [b"reason"]


def multi_headers(environ, start_response):
    """Two Set-Cookie headers and a header value with latin-1 text."""
    start_response("200 OK", TEXT + [("Set-Cookie", "a=1; Path=/"), ("Set-Cookie", "b=2"),
                                     ("X-Latin", "caf\xe9")])
    return [b"cookies"]


def empty_chunks(environ, start_response):
    """201 with a body made only of empty chunks."""
    start_response("201 Created", list(TEXT))

    def body():
        yield b""
        yield b""

    return body()


def echo(environ, start_response):
    """The request body, read with read(64 KiB) until EOF."""
    stream = environ["wsgi.input"]
    parts = []
    while True:
        piece = stream.read(65536)
        if not piece:
            break
        parts.append(piece)
    start_response("200 OK", list(TEXT))
    return [b"".join(parts)]


ROUTES = {
    "/write": write_then_list,
    "/write-gen": write_then_generator,
    "/write-only": write_only,
    "/errors": errors,
    "/file": file_wrapper,
    "/cl": content_length,
    "/gen": generator,
    "/status": status,
    "/reason": reason,
    "/headers": multi_headers,
    "/empty-chunks": empty_chunks,
    "/echo": echo,
    "/environ": pep_environ.application,
}


def application(environ, start_response):
    route = ROUTES.get(environ["PATH_INFO"])
    if route is None:
        start_response("404 Not Found", list(TEXT))
        return [b"no route " + environ["PATH_INFO"].encode("latin-1")]
    return route(environ, start_response)


validated = validator(application)

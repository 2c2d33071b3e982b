"""start_response() exc_info semantics and app errors (PEP 3333), one route per case.

Routes that succeed are valid WSGI, so `validated` must not complain on them.
Python 3.8 compatible, stdlib only.
"""

import sys
from wsgiref.validate import validator

TEXT = [("Content-Type", "text/plain")]


def replace_before_body(environ, start_response):
    """Nothing sent yet: start_response(..., exc_info) replaces status and headers."""
    start_response("200 OK", TEXT + [("X-First", "1")])
    try:
        raise ValueError("replace me")
    except ValueError:
        start_response("503 Service Unavailable", TEXT + [("X-Second", "1")], sys.exc_info())
    return [b"replaced"]


def replace_after_empty_chunks(environ, start_response):
    """Empty chunks do not send the headers, so exc_info may still replace them."""
    start_response("200 OK", TEXT + [("X-First", "1")])

    def body():
        yield b""
        yield b""
        try:
            raise ValueError("late")
        except ValueError:
            start_response("503 Service Unavailable", TEXT + [("X-Second", "1")], sys.exc_info())
        yield b"replaced late"

    return body()


def reraise_after_send(environ, start_response):
    """Headers are out after a non-empty chunk: start_response(..., exc_info) must
    re-raise that exception. The app catches what start_response raised and says so."""
    start_response("200 OK", list(TEXT))

    def body():
        yield b"partial;"
        try:
            raise ValueError("original-error")
        except ValueError:
            info = sys.exc_info()
            try:
                start_response("500 Internal Server Error", list(TEXT), info)
            except ValueError as exc:
                yield ("reraised:%s:%s" % (type(exc).__name__, exc)).encode()
                yield b";same" if exc is info[1] else b";different"
            except BaseException as exc:
                yield ("raised-other:%s" % type(exc).__name__).encode()
            else:
                yield b"not-reraised"

    return body()


def twice_without_exc_info(environ, start_response):
    """A second start_response() without exc_info is an error (PEP 3333)."""
    start_response("200 OK", list(TEXT))
    try:
        start_response("200 OK", list(TEXT))
    except Exception as exc:
        return [("raised:%s" % type(exc).__name__).encode()]
    return [b"accepted"]


def raise_before_start(environ, start_response):
    raise RuntimeError("PEP-BOOM-BEFORE-START")


def raise_after_start(environ, start_response):
    """start_response called, no body sent yet: still a 500 for the client."""
    start_response("200 OK", list(TEXT))

    def body():
        yield b""
        raise RuntimeError("PEP-BOOM-BEFORE-BODY")

    return body()


def raise_after_send(environ, start_response):
    start_response("200 OK", list(TEXT))

    def body():
        yield b"partial-body;"
        raise RuntimeError("PEP-BOOM-AFTER-SEND")

    return body()


ROUTES = {
    "/replace": replace_before_body,
    "/replace-late": replace_after_empty_chunks,
    "/reraise": reraise_after_send,
    "/twice": twice_without_exc_info,
    "/raise-before-start": raise_before_start,
    "/raise-before-body": raise_after_start,
    "/raise-after-send": raise_after_send,
}


def application(environ, start_response):
    return ROUTES[environ["PATH_INFO"]](environ, start_response)


validated = validator(application)

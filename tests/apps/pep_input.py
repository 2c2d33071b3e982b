"""Read wsgi.input with one PEP 3333 method and report what each call returned.

Query string: mode=<MODES key>&arg=<int>. The answer is JSON:
  pieces:  lengths of the pieces in call order (the final empty read included
           where the mode reads until EOF),
  sha256:  of all pieces joined,
  types:   the distinct type names of the pieces (must be ["bytes"]),
  content_length: environ.get("CONTENT_LENGTH") (None when absent).

`consume()` is also imported by the tests and run against io.BytesIO: the
server's wsgi.input must behave exactly like a BytesIO holding the body.
Python 3.8 compatible, stdlib only.
"""

import hashlib
import json
from urllib.parse import parse_qs


def _until_empty(call):
    pieces = []
    while True:
        piece = call()
        pieces.append(piece)
        if not piece:
            return pieces


def consume(stream, mode, arg=0):
    """Read `stream` to the end with the method `mode`; returns the list of pieces."""
    if mode == "read":
        # read() without size, then one more read() that must be empty.
        return [stream.read(), stream.read()]
    if mode == "read_n":
        return _until_empty(lambda: stream.read(arg))
    if mode == "readline":
        return _until_empty(stream.readline)
    if mode == "readline_n":
        return _until_empty(lambda: stream.readline(arg))
    if mode == "readlines":
        return stream.readlines() + [stream.read(1)]
    if mode == "readlines_hint":
        pieces = []
        while True:
            lines = stream.readlines(arg)
            if not lines:
                return pieces
            pieces.extend(lines)
            pieces.append(b"|")  # marks where one readlines(hint) call ended
    if mode == "iter":
        return list(stream) + [stream.read(1)]
    if mode == "mixed":
        # Interleave methods: a line, a sized read, a sized line, then the rest.
        first = [stream.readline(), stream.read(arg), stream.readline(arg // 2 or 1)]
        return first + _until_empty(lambda: stream.read(arg))
    raise ValueError("unknown mode %r" % (mode,))


MODES = ("read", "read_n", "readline", "readline_n", "readlines", "readlines_hint", "iter", "mixed")


def summarize(pieces):
    return {
        "pieces": [len(p) for p in pieces],
        "sha256": hashlib.sha256(b"".join(p for p in pieces if type(p) is bytes)).hexdigest(),
        "types": sorted(set(type(p).__name__ for p in pieces)),
    }


def application(environ, start_response):
    query = parse_qs(environ.get("QUERY_STRING", ""))
    mode = query.get("mode", ["read"])[0]
    arg = int(query.get("arg", ["0"])[0])
    report = summarize(consume(environ["wsgi.input"], mode, arg))
    report["content_length"] = environ.get("CONTENT_LENGTH")
    body = json.dumps(report).encode("ascii")
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]

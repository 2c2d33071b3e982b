"""Apps for the streaming tests (dispatch on PATH_INFO). Python 3.8, stdlib only.

/ticks?n=&interval=   n chunks b"tick-<i>|", `interval` seconds apart, no
                      Content-Length (so the response is chunked).
/upload               reads wsgi.input with read(1 MiB) until EOF; answers JSON
                      {"bytes", "crc32", "reads", "content_length"}.
/download?size=&cl=1  `size` bytes as 1 MiB chunks from block(i); Content-Length
                      is declared when cl=1.
"""

import json
import struct
import time
import zlib
from urllib.parse import parse_qs

MIB = 1 << 20
PATTERN = bytes(range(256)) * (MIB // 256)


def block(index, size=MIB):
    """Chunk `index` of a stream: its index (8 bytes, big endian), then a fixed pattern."""
    return (struct.pack(">Q", index) + PATTERN[8:])[:size]


def _query(environ):
    return dict((k, v[0]) for k, v in parse_qs(environ.get("QUERY_STRING", "")).items())


def ticks(environ, start_response):
    q = _query(environ)
    n, interval = int(q.get("n", "8")), float(q.get("interval", "0.1"))
    start_response("200 OK", [("Content-Type", "text/plain")])

    def body():
        for i in range(n):
            if i:
                time.sleep(interval)
            yield b"tick-%d|" % i

    return body()


def upload(environ, start_response):
    stream = environ["wsgi.input"]
    total, crc, reads = 0, 0, 0
    while True:
        piece = stream.read(MIB)
        if not piece:
            break
        reads += 1
        total += len(piece)
        crc = zlib.crc32(piece, crc)
    body = json.dumps({"bytes": total, "crc32": crc, "reads": reads,
                       "content_length": environ.get("CONTENT_LENGTH")}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


def download(environ, start_response):
    q = _query(environ)
    size = int(q["size"])
    headers = [("Content-Type", "application/octet-stream")]
    if q.get("cl") == "1":
        headers.append(("Content-Length", str(size)))
    start_response("200 OK", headers)

    def body():
        sent, index = 0, 0
        while sent < size:
            chunk = block(index, min(MIB, size - sent))
            sent += len(chunk)
            index += 1
            yield chunk

    return body()


ROUTES = {"/ticks": ticks, "/upload": upload, "/download": download}


def application(environ, start_response):
    return ROUTES[environ["PATH_INFO"]](environ, start_response)

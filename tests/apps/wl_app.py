"""Apps for the worker-lifecycle tests."""

import os
import sys
import threading
import time

VERSION = open(os.environ["WL_VERSION_FILE"]).read().strip() if "WL_VERSION_FILE" in os.environ else "none"
LEAK = []


def wl_hang_in_here():
    while True:
        time.sleep(0.05)


def application(environ, start_response):
    path = environ["PATH_INFO"]
    print("START %s" % path)
    sys.stdout.flush()
    if path == "/hang":
        wl_hang_in_here()
    elif path == "/sleep":
        time.sleep(float(environ.get("QUERY_STRING") or 1))
    elif path == "/leak":
        LEAK.append(bytearray(5 << 20))
    elif path == "/die":
        os._exit(1)
    elif path == "/forever":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return forever()
    body = ("%d %s %s %s" % (os.getpid(), VERSION, threading.current_thread().name,
                             environ["wsgi.multithread"])).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def forever():
    try:
        while True:
            yield b"tick\n"
            time.sleep(0.05)
    finally:
        print("FOREVER CLOSED")
        sys.stdout.flush()

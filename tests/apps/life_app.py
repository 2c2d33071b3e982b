"""App for tests/test_lifecycle.py (stdlib only, Python 3.8+).

GET /            -> JSON {pid, version, code, thread, multithread}
GET /sleep...?S  -> sleeps S seconds first (any path under /sleep)
GET /hang        -> never returns (life_hang_in_here)
GET /leak        -> keeps 5 MiB more, for good
GET /die         -> os._exit(1)
GET /stream      -> a chunk every 50 ms, forever; prints when closed
Every request prints "LIFE START <path>" before it does anything.
"""

import json
import os
import sys
import threading
import time

# A value read at import: a reload (HUP) must pick up a change to this file.
_VERSION_FILE = os.environ.get("LIFE_VERSION_FILE")
if _VERSION_FILE:
    with open(_VERSION_FILE) as f:
        VERSION = f.read().strip()
else:
    VERSION = "none"

# Broken new code: a reload to this must leave the old workers serving.
if VERSION == "explode":
    raise RuntimeError("life_app: this version does not load")

# A slow import: the --timeout also bounds loading the app.
if os.environ.get("LIFE_IMPORT_SLEEP"):
    time.sleep(float(os.environ["LIFE_IMPORT_SLEEP"]))

# Code imported at import: a reload must pick up a change to this module too
# (it lives in a directory given with --pythonpath).
try:
    import life_code_version

    CODE = life_code_version.CODE
except ImportError:
    CODE = "none"

LEAK = []


def life_background_idler():
    while True:
        time.sleep(0.05)


# A thread of the app's own: a timeout's traceback dump must show it too.
if os.environ.get("LIFE_BACKGROUND") == "1":
    threading.Thread(target=life_background_idler, name="life-background", daemon=True).start()


def say(text):
    print(text)
    sys.stdout.flush()


def life_hang_in_here():
    while True:
        time.sleep(0.05)


def stream(path):
    try:
        n = 0
        while True:
            yield ("tick %d\n" % n).encode()
            n += 1
            time.sleep(0.05)
    finally:
        say("LIFE STREAM CLOSED %s" % path)


def application(environ, start_response):
    path = environ["PATH_INFO"]
    query = environ.get("QUERY_STRING", "")
    say("LIFE START %s" % path)
    if path == "/hang":
        life_hang_in_here()
    elif path.startswith("/sleep"):
        time.sleep(float(query or 1))
    elif path == "/leak":
        LEAK.append(bytearray(5 << 20))
    elif path == "/die":
        os._exit(1)
    elif path.startswith("/stream"):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return stream(path)
    body = json.dumps({
        "pid": os.getpid(),
        "version": VERSION,
        "code": CODE,
        "thread": threading.current_thread().name,
        "multithread": environ["wsgi.multithread"],
        "path": path,
    }).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]

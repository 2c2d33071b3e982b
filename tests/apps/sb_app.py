"""Tries to break out of the sandbox and reports what happened."""

import os
import socket
import sys
import threading
import time


def application(environ, start_response):
    path, query = environ["PATH_INFO"], environ["QUERY_STRING"]
    if path == "/whoami":
        out = "%d %d %s %o" % (os.getuid(), os.getgid(), sorted(os.getgroups()), os.umask(0o22))
    elif path == "/connect":
        try:
            socket.create_connection(("127.0.0.1", int(query)), timeout=2).close()
            out = "connected"
        except OSError as e:
            out = "blocked %s" % e.errno
    elif path == "/alloc":
        hoard = bytearray(int(query) << 20)
        out = "allocated %d" % len(hoard)
    elif path == "/files":
        opened = []
        try:
            for _ in range(int(query)):
                opened.append(open(os.devnull))
            out = "opened %d" % len(opened)
        except OSError as e:
            out = "refused after %d" % len(opened)
        finally:
            for f in opened:
                f.close()
    elif path == "/threads":
        started = 0
        try:
            for _ in range(int(query)):
                threading.Thread(target=time.sleep, args=(1,), daemon=True).start()
                started += 1
            out = "started %d" % started
        except RuntimeError:
            out = "refused after %d" % started
    elif path == "/spin":
        while True:
            pass
    elif path == "/proc":
        status = open("/proc/self/status").read()
        targets = []
        for fd in sorted(os.listdir("/proc/self/fd")):
            try:
                targets.append(os.readlink("/proc/self/fd/" + fd))
            except OSError:  # the fd listdir itself used, closed by now
                pass
        out = "%s|%s|%s|%s" % (os.getpgrp() == os.getpid(),
                               [line for line in status.splitlines() if line.startswith("NoNewPrivs")][0],
                               ",".join(targets), ",".join(sorted(os.environ)))
    else:
        out = "%d" % os.getpid()
    sys.stdout.flush()
    body = out.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def files(environ, start_response):
    """Reads and writes the paths named in the query: 'r:/etc/shadow,w:/tmp/x'."""
    results = []
    for item in environ["QUERY_STRING"].split(","):
        mode, path = item.split(":", 1)
        try:
            if mode == "r":
                with open(path, "rb") as f:
                    f.read(1)
            else:
                with open(path, "w") as f:
                    f.write("x")
                os.unlink(path)
            results.append("ok")
        except PermissionError:
            results.append("PermissionError")
        except OSError as e:
            results.append(type(e).__name__)
    body = ",".join(results).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]

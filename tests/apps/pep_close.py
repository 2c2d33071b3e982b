"""close() tracking: the result's close() appends a line to the file named by
the worker's PEP_CLOSE_LOG environment variable (set with --env).

Query string: tag=<name> (required), n=<chunks> (default 3), size=<bytes per
chunk> (default 6), delay=<seconds between chunks>, fail=<index> (raise
before yielding chunk <index>), kind=gen|list (a generator-backed iterable, or
a list subclass with close()).

Line written by close(): "<tag> closed produced=<chunks yielded>".
Python 3.8 compatible, stdlib only.
"""

import os
import time
from urllib.parse import parse_qs


def record(line):
    with open(os.environ["PEP_CLOSE_LOG"], "a") as f:
        f.write(line + "\n")


class Tracked:
    def __init__(self, tag, n, size, delay, fail):
        self.tag, self.n, self.size, self.delay, self.fail = tag, n, size, delay, fail
        self.produced = 0

    def __iter__(self):
        for i in range(self.n):
            if i == self.fail:
                raise RuntimeError("PEP-CLOSE-FAIL %s at %d" % (self.tag, i))
            if i and self.delay:
                time.sleep(self.delay)
            self.produced += 1
            yield (b"%d:" % i).ljust(self.size, b".")

    def close(self):
        record("%s closed produced=%d" % (self.tag, self.produced))


class ClosingList(list):
    def close(self):
        record("%s closed produced=%d" % (self.tag, len(self)))


def application(environ, start_response):
    q = dict((k, v[0]) for k, v in parse_qs(environ.get("QUERY_STRING", "")).items())
    tag = q["tag"]
    n, size = int(q.get("n", "3")), int(q.get("size", "6"))
    record("%s started" % tag)
    start_response("200 OK", [("Content-Type", "text/plain")])
    if q.get("kind") == "list":
        result = ClosingList(b"item%d;" % i for i in range(n))
        result.tag = tag
        return result
    return Tracked(tag, n, size, float(q.get("delay", "0")), int(q.get("fail", "-1")))

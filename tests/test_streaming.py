"""Streaming through rwsgi-gw, end to end (apps: tests/apps/pep_stream.py).

1. A generator that yields a chunk every 100 ms reaches the client at that pace:
   the master neither buffers the response nor waits for its end.
2. 1 GiB up and 1 GiB down through one worker while the master's RSS is
   sampled every 50 ms: both directions are streamed with bounded buffers, so
   the master stays under 64 MiB and every byte arrives, in order.
"""

import json
import socket
import sys
import threading
import time
import zlib
from pathlib import Path

APPS = Path(__file__).resolve().parent / "apps"
sys.path.insert(0, str(APPS))
from pep_stream import MIB, block  # noqa: E402  (the data both sides generate)

GIB = 1 << 30
RSS_LIMIT = 64 * MIB


# ---------------------------------------------------------------- helpers

def arrival_times(srv, target, markers, timeout=10):
    """GET `target` on a raw socket; returns (seconds after sending at which each
    marker was first seen, all bytes received)."""
    s = socket.create_connection((srv.host, srv.port), timeout=timeout)
    try:
        s.sendall(("GET %s HTTP/1.1\r\nHost: stream.test\r\nConnection: close\r\n\r\n" % target).encode())
        sent, received, seen = time.monotonic(), b"", {}
        while len(seen) < len(markers):
            chunk = s.recv(65536)
            if not chunk:
                break
            now = time.monotonic() - sent
            received += chunk
            for m in markers:
                if m not in seen and m in received:
                    seen[m] = now
        return [seen.get(m) for m in markers], received
    finally:
        s.close()


class RssSampler:
    """Samples VmRSS of `pid` every `interval` seconds while in the `with` block."""

    def __init__(self, pid, interval=0.05):
        self.pid, self.interval = pid, interval
        self.samples = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self):
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS for pid %d" % self.pid)

    def _run(self):
        while not self._stop.is_set():
            try:
                self.samples.append(self.rss())
            except (OSError, AssertionError):
                return
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def peak(self):
        return max(self.samples)


class StreamChecker:
    """Compares a byte stream, fed in pieces of any size, with block(0), block(1), ..."""

    def __init__(self):
        self.total = 0
        self.first_bad_offset = None

    def feed(self, data):
        view = memoryview(data)
        while view:
            index, offset = divmod(self.total, MIB)
            expected = block(index)[offset:offset + len(view)]
            n = len(expected)
            if self.first_bad_offset is None and view[:n] != expected:
                self.first_bad_offset = self.total
            self.total += n
            view = view[n:]


def upload(srv, size):
    """POST `size` bytes (block(0), block(1), ...) streamed from a generator with a
    Content-Length; returns (status, the app's JSON answer, crc32 of what was sent)."""
    state = {"crc": 0}

    def body():
        for index in range(size // MIB):
            chunk = block(index)
            state["crc"] = zlib.crc32(chunk, state["crc"])
            yield chunk

    c = srv.conn(timeout=120)
    try:
        c.request("POST", "/upload", body=body(),
                  headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"})
        r = c.getresponse()
        return r.status, json.loads(r.read()), state["crc"]
    finally:
        c.close()


def download(srv, size):
    """GET `size` bytes from the app's generator (no Content-Length: chunked); returns
    (status, the StreamChecker that saw them, whether the response ended cleanly)."""
    checker = StreamChecker()
    c = srv.conn(timeout=120)
    try:
        c.request("GET", "/download?size=%d" % size)
        r = c.getresponse()
        while True:
            data = r.read(MIB)
            if not data:
                break
            checker.feed(data)
        return r.status, checker, r.isclosed()
    finally:
        c.close()


# ---------------------------------------------------------------- tests

def test_generator_chunks_reach_client_at_app_pace(server):
    srv = server("pep_stream:application")
    markers = [b"tick-%d|" % i for i in range(8)]
    times, received = arrival_times(srv, "/ticks?n=8&interval=0.1", markers)
    assert None not in times, "markers missing: %r (received %r)" % (times, received)
    gaps = [b - a for a, b in zip(times, times[1:])]
    report = "arrivals %s, gaps %s" % (["%.3f" % t for t in times], ["%.3f" % g for g in gaps])
    print(report)
    assert b"transfer-encoding: chunked" in received.lower(), received[:500]
    assert times[0] < 0.5, "first chunk came late: " + report
    assert times[4] - times[0] >= 0.35, "chunks bunched up: " + report
    assert times[7] - times[0] >= 0.55, report
    assert min(gaps) >= 0.03, "two chunks arrived together: " + report
    assert sorted(gaps)[len(gaps) // 2] >= 0.07, report


def test_gigabyte_up_and_down_through_one_worker_in_bounded_master_memory(server):
    srv = server("pep_stream:application", workers=1)
    with RssSampler(srv.proc.pid) as sampler:
        started = time.monotonic()
        up_status, up, sent_crc = upload(srv, GIB)
        up_seconds = time.monotonic() - started
        upload_peak = max(sampler.samples)
        workers_after_upload = srv.worker_pids()
        down_status, checker, clean_end = download(srv, GIB)
        seconds = time.monotonic() - started
    workers_after_download = srv.worker_pids()
    report = "upload %.1fs, both %.1fs, master RSS peak %.1f MiB (upload %.1f MiB), %d samples" % (
        up_seconds, seconds, sampler.peak / MIB, upload_peak / MIB, len(sampler.samples))
    print(report)

    assert up_status == 200, up
    assert (up["bytes"], up["crc32"], up["content_length"]) == (GIB, sent_crc, str(GIB)), up
    assert down_status == 200
    assert (checker.total, checker.first_bad_offset) == (GIB, None), "downloaded bytes differ: " + report
    assert clean_end
    assert len(workers_after_upload) == 1 and workers_after_download == workers_after_upload, \
        (workers_after_upload, workers_after_download)
    assert len(sampler.samples) >= 10, report
    assert sampler.peak < RSS_LIMIT, report

"""Slow and idle clients cost the master a little memory, never the worker.

With one worker: slowloris heads, byte-a-second uploads and clients that read
a 1 MiB answer slowly, all open at once, and a fast probe is still served. Its
latency under attack is measured by bench/slow_clients.py, not here. Then
10,000 idle keep-alive connections, with the master's RSS per connection, and
a burst of connections that the kernel holds while the master is busy."""

import http.client
import os
import resource
import select
import signal
import socket
import threading
import time

import pytest


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        return int(next(line for line in f if line.startswith("VmRSS")).split()[1])


@pytest.fixture(autouse=True)
def enough_fds():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 12000:
        pytest.skip("needs 12000 open files, the hard limit here is %d" % hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def probe(srv):
    started = time.monotonic()
    status, _, body = srv.request("GET", "/probe", timeout=10)
    assert (status, body) == (200, b"probe")
    return time.monotonic() - started


def test_slow_clients_never_hold_the_worker(server):
    srv = server("slow_app", "--header-timeout", "60", "--body-timeout", "60")
    sockets, stop = [], threading.Event()
    try:
        for _ in range(500):  # slowloris: a head that never ends
            s = socket.create_connection((srv.host, srv.port))
            s.sendall(b"GET /probe HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            sockets.append(s)
        uploads = []
        for _ in range(200):  # slow POST: 600 bytes announced, a byte a second
            s = socket.create_connection((srv.host, srv.port))
            s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 600\r\n\r\n")
            uploads.append(s)
        readers = []
        for _ in range(200):  # slow readers of a 1 MiB answer
            s = socket.create_connection((srv.host, srv.port))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            s.recv(100)
            readers.append(s)
        sockets += uploads + readers

        def trickle():
            while not stop.wait(1.0):
                for s in uploads:
                    s.send(b"u")
                for s in readers:
                    s.recv(1024)

        feeder = threading.Thread(target=trickle, daemon=True)
        feeder.start()
        time.sleep(2)
        latencies = [probe(srv) for _ in range(20)]
        assert max(latencies) < 2.0, latencies
        assert len(srv.worker_pids()) == 1
    finally:
        stop.set()
        for s in sockets:
            s.close()


def test_ten_thousand_idle_keep_alive_connections(server):
    srv = server("slow_app", "--header-timeout", "120", "--keep-alive", "120")
    before = rss_kib(srv.proc.pid)
    conns = []
    try:
        for _ in range(10000):
            s = socket.create_connection((srv.host, srv.port))
            conns.append(s)
        request = b"GET /probe HTTP/1.1\r\nHost: x\r\n\r\n"
        # One request on each, in turn (all at once would fill the queue: 503).
        for s in conns:
            s.sendall(request)
            assert s.recv(4096).startswith(b"HTTP/1.1 200 OK")
        after = rss_kib(srv.proc.pid)
        per_connection = (after - before) * 1024 / len(conns)
        print("\nmaster RSS: %d KiB before, %d KiB with %d idle keep-alive connections: %.1f KiB each"
              % (before, after, len(conns), per_connection / 1024))
        assert per_connection < 64 * 1024
        assert probe(srv) < 5
        # Every one of them is still a live keep-alive connection.
        for s in conns[::500]:
            s.sendall(request)
            assert s.recv(4096).startswith(b"HTTP/1.1 200 OK")
    finally:
        for s in conns:
            s.close()


def test_a_burst_of_connections_waits_in_the_kernel(server):
    """A stopped master accepts nothing; the kernel still completes the
    handshake of a burst (std's listen queue of 128 would drop most of it,
    and each dropped SYN costs a client a second). --backlog, the request
    queue, does not shrink it."""
    with open("/proc/sys/net/core/somaxconn") as f:
        kernel_cap = int(f.read())
    burst = 1500
    if kernel_cap < burst:
        pytest.skip("net.core.somaxconn is %d, which caps every listen queue below this burst" % kernel_cap)
    srv = server("slow_app", "--backlog", "2")
    os.kill(srv.proc.pid, signal.SIGSTOP)
    sockets = []
    try:
        for _ in range(burst):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex((srv.host, srv.port))
            sockets.append(s)
        time.sleep(0.5)
        poller = select.poll()
        by_fd = {s.fileno(): s for s in sockets}
        for fd in by_fd:
            poller.register(fd, select.POLLOUT)
        writable = [by_fd[fd] for fd, events in poller.poll(0) if events & select.POLLOUT]
        connected = [s for s in writable if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0]
        assert len(connected) == burst, (len(connected), kernel_cap)
    finally:
        os.kill(srv.proc.pid, signal.SIGCONT)
        for s in sockets:
            s.close()
    assert probe(srv) < 5

#!/usr/bin/env python3
"""Latency of a fast probe request to rwsgi-gw with ONE worker, first alone,
then while 500 slowloris connections, 200 byte-a-second uploads and 200 slow
readers of a 1 MiB answer are all open.

    .venv/bin/python bench/slow_clients.py [--probes 300]
"""

import argparse
import http.client
import re
import resource
import signal
import socket
import statistics
import subprocess
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BINARY = ROOT / "target" / "release" / "rwsgi-gw"
APPS = ROOT / "tests" / "apps"


def start():
    proc = subprocess.Popen([str(BINARY), "--bind", "127.0.0.1:0", "--workers", "1", "--chdir", str(APPS),
                             "--header-timeout", "120", "--body-timeout", "120", "slow_app"],
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    for line in proc.stderr:
        found = re.search(r"Listening at: http://127.0.0.1:(\d+)", line)
        if found:
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return proc, int(found.group(1))
    raise SystemExit("rwsgi-gw did not start")


def probe_latencies(port, count):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        conn.request("GET", "/probe")
        assert conn.getresponse().read() == b"probe"
        latencies.append((time.perf_counter() - started) * 1000)
    conn.close()
    return latencies


def attack(port, stop):
    sockets, uploads, readers = [], [], []
    for _ in range(500):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /probe HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        sockets.append(s)
    for _ in range(200):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 600\r\n\r\n")
        uploads.append(s)
    for _ in range(200):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        readers.append(s)

    def trickle():
        while not stop.wait(1.0):
            for s in uploads:
                s.send(b"u")
            for s in readers:
                s.recv(1024)

    threading.Thread(target=trickle, daemon=True).start()
    return sockets + uploads + readers


def summary(latencies):
    latencies = sorted(latencies)
    return "p50 %.2f ms  p99 %.2f ms  max %.2f ms" % (
        statistics.median(latencies), latencies[int(len(latencies) * 0.99) - 1], latencies[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--probes", type=int, default=300)
    opts = parser.parse_args()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    proc, port = start()
    try:
        quiet = probe_latencies(port, opts.probes)
        stop = threading.Event()
        held = attack(port, stop)
        time.sleep(2)
        loaded = probe_latencies(port, opts.probes)
        stop.set()
        print("| probe (1 worker) | latency |\n|---|---|")
        print("| no attack | %s |" % summary(quiet))
        print("| 500 slowloris + 200 slow POST + 200 slow 1 MiB readers | %s |" % summary(loaded))
        for s in held:
            s.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


if __name__ == "__main__":
    main()

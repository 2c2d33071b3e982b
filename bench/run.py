#!/usr/bin/env python3
"""Runs rwsgi-gw, gunicorn (sync, gthread) and Granian side by side under wrk.

    bench/run.py [--duration 5] [--rounds 1] [--workers 2] [--apps hello,flask] [--servers rwsgi,gunicorn-sync]

Each cell: a fresh server on 127.0.0.1, one warm-up, then wrk (2 threads, 64
connections, --latency); RSS is the sum over the server's whole process tree,
sampled during the run (peak). Prints a Markdown table with req/s, p99 and RSS,
and req/s as a ratio to gunicorn sync in the same run. Machines are noisy:
compare within one run. Needs wrk on PATH and gunicorn, granian and flask in
.venv (tests/run installs the latter; `pip install gunicorn granian`).
"""

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENV = ROOT / ".venv" / "bin"
BINARY = ROOT / "target" / "release" / "rwsgi-gw"

# app label -> (module:callable, wrk extra args)
APPS = {
    "hello": ("apps:hello", []),
    "big-1MiB": ("apps:big", []),
    "stream-100x1KiB": ("apps:stream", []),
    "echo-16KiB": ("apps:echo", ["-s", str(BENCH / "post16k.lua")]),
    "flask": ("apps:flask_app", []),
}


def servers(workers):
    """server label -> argv template ({port}, {app})."""
    return {
        "rwsgi-gw": [str(BINARY), "--bind", "127.0.0.1:{port}", "--workers", str(workers),
                     "--python", str(VENV / "python"), "--log-level", "warning", "{app}"],
        "gunicorn-sync": [str(VENV / "gunicorn"), "--bind", "127.0.0.1:{port}", "--workers", str(workers),
                          "--log-level", "warning", "{app}"],
        "gunicorn-gthread": [str(VENV / "gunicorn"), "--bind", "127.0.0.1:{port}", "--workers", str(workers),
                             "--worker-class", "gthread", "--threads", "4", "--log-level", "warning", "{app}"],
        "granian": [str(VENV / "granian"), "--interface", "wsgi", "--host", "127.0.0.1", "--port", "{port}",
                    "--workers", str(workers), "--log-level", "warning", "{app}"],
    }


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port, proc, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("server exited with %s" % proc.returncode)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
                if s.recv(12).startswith(b"HTTP/1."):
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("server did not answer within %ss" % timeout)


def tree_rss(pid):
    """Sum of VmRSS (KiB) of pid and all its descendants."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path("/proc/%d/status" % p).read_text()
            total += int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
            # A child belongs to the thread that forked it, so ask every thread.
            for task in Path("/proc/%d/task" % p).iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except (OSError, AttributeError):
            pass
    return total


def run_wrk(port, duration, extra):
    out = subprocess.run(["wrk", "-t2", "-c64", "-d%ds" % duration, "--latency", "--timeout", "5s"] + extra
                         + ["http://127.0.0.1:%d/" % port], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    p99_ms = float(p99.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return rps, p99_ms, (errors.group(1) if errors else "0"), (socket_errors.group(1) if socket_errors else "")


def bench_cell(argv, app, extra, duration):
    port = free_port()
    argv = [a.format(port=port, app=app) for a in argv]
    log = open(BENCH / "server.log", "ab")
    proc = subprocess.Popen(argv, cwd=BENCH, stdout=log, stderr=log, start_new_session=True)
    try:
        wait_ready(port, proc)
        run_wrk(port, 1, extra)  # warm-up
        peak = [0]
        done = threading.Event()

        def sample():
            while not done.wait(0.25):
                peak[0] = max(peak[0], tree_rss(proc.pid))

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            rps, p99, errors, socket_errors = run_wrk(port, duration, extra)
        finally:
            done.set()
            sampler.join()
        return rps, p99, peak[0] / 1024, errors, socket_errors
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=5, help="seconds of wrk per cell (default 5)")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds; the median is shown")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--apps", default=",".join(APPS))
    parser.add_argument("--servers", default="rwsgi-gw,gunicorn-sync,gunicorn-gthread,granian")
    opts = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("bench needs wrk: apt-get install wrk")
    table = servers(opts.workers)
    chosen = [s for s in opts.servers.split(",") if s]
    apps = [a for a in opts.apps.split(",") if a]
    missing = [s for s in chosen if not Path(table[s][0]).exists()]
    if missing:
        sys.exit("not installed: %s (pip install gunicorn granian into .venv; cargo build --release)" % ", ".join(missing))
    results = {}
    for round_no in range(opts.rounds):
        for app in apps:
            for server in chosen:
                try:
                    cell = bench_cell(table[server], APPS[app][0], APPS[app][1], opts.duration)
                except (RuntimeError, subprocess.CalledProcessError) as e:
                    print("%s / %s failed: %s" % (server, app, e), file=sys.stderr)
                    continue
                results.setdefault((app, server), []).append(cell)
                print("round %d %-16s %-17s %9.0f req/s  p99 %7.2f ms  RSS %6.1f MiB  non-2xx %s %s"
                      % ((round_no + 1, app, server) + cell), file=sys.stderr)
    print("\n| app | server | req/s | p99 ms | RSS MiB | vs gunicorn sync |")
    print("|---|---|---:|---:|---:|---:|")
    for app in apps:
        base = results.get((app, "gunicorn-sync"))
        base_rps = statistics.median(c[0] for c in base) if base else None
        for server in chosen:
            cells = results.get((app, server))
            if not cells:
                continue
            rps = statistics.median(c[0] for c in cells)
            p99 = statistics.median(c[1] for c in cells)
            rss = statistics.median(c[2] for c in cells)
            ratio = "%.2fx" % (rps / base_rps) if base_rps else "-"
            print("| %s | %s | %.0f | %.2f | %.0f | %s |" % (app, server, rps, p99, rss, ratio))


if __name__ == "__main__":
    main()

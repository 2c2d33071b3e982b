#!/usr/bin/env python3
"""--threads: an app that sleeps 50 ms per request should serve about
workers x threads x 20 requests per second.

    .venv/bin/python bench/threads.py [--workers 2] [--threads 1,4,8] [--duration 5]
"""

import argparse
import re
import signal
import subprocess
import threading
from pathlib import Path

BENCH = Path(__file__).resolve().parent
BINARY = BENCH.parent / "target" / "release" / "rwsgi-gw"


def measure(workers, threads, duration):
    proc = subprocess.Popen([str(BINARY), "--bind", "127.0.0.1:0", "--workers", str(workers), "--threads",
                             str(threads), "--chdir", str(BENCH), "apps:sleep50"],
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        port = None
        ready = 0
        for line in proc.stderr:
            port = port or (re.search(r"Listening at: http://127.0.0.1:(\d+)", line) or [None, None])[1]
            ready += "ready:" in line
            if port and ready == workers:
                break
        threading.Thread(target=proc.stderr.read, daemon=True).start()
        out = subprocess.run(["wrk", "-t2", "-c%d" % max(32, 2 * workers * threads), "-d%ds" % duration,
                              "http://127.0.0.1:%s/" % port], capture_output=True, text=True, check=True).stdout
        return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", default="1,4,8")
    parser.add_argument("--duration", type=int, default=5)
    opts = parser.parse_args()
    print("| workers | threads | req/s | expected (workers x threads x 20) |\n|---:|---:|---:|---:|")
    for threads in [int(t) for t in opts.threads.split(",")]:
        rps = measure(opts.workers, threads, opts.duration)
        print("| %d | %d | %.0f | %d |" % (opts.workers, threads, rps, opts.workers * threads * 20))


if __name__ == "__main__":
    main()

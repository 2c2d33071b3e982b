#!/usr/bin/env python3
"""Runs rwsgi-gw, gunicorn (sync, gthread) and Granian (WSGI) side by side under wrk.

    bench/run.py [--duration 5] [--rounds 3] [--workers 2]
                 [--apps hello,big-1MiB,stream-100x1KiB,echo-16KiB,flask]
                 [--servers rwsgi-gw,gunicorn-sync,gunicorn-gthread,granian]

Each cell (one server x one app): a fresh server on 127.0.0.1 in its own
session, a probe request whose status and body are checked, a warm-up, then
`wrk -t2 -c64 --latency` for --duration seconds while the RSS of the server's
whole process tree (master and workers, summed) is sampled every 0.25 s.
Rounds are interleaved (every app x server once per round, server order rotated
each round) and the table shows medians. req/s is also given as a ratio to
gunicorn sync on the same app in the same run: these machines are shared and
noisy, so only ratios within one run mean much.

Standard library only (run it with any python3). Needs wrk on PATH, gunicorn,
granian and flask in .venv, and target/release/rwsgi-gw (or --bin / $RWSGI_GW_BIN).
Every cell is appended to a TSV (--out) and each server's output goes to bench/logs/.
"""

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENV = ROOT / ".venv" / "bin"
DEFAULT_BIN = Path(os.environ.get("RWSGI_GW_BIN", ROOT / "target" / "release" / "rwsgi-gw"))
POST_BYTES = 16384
POST_BODY = b"z" * POST_BYTES
FLASK_JSON = {"message": "Hello, World!", "n": 42}


class App:
    def __init__(self, target, method="GET", body=None, check=None, what=""):
        self.target, self.method, self.body, self.check, self.what = target, method, body, check, what


def _json_is(expected):
    def check(body):
        try:
            return json.loads(body) == expected
        except ValueError:
            return False
    return check


# label -> the WSGI callable in bench/apps.py, the request wrk sends, and what the answer must be.
APPS = {
    "hello": App("apps:hello", check=lambda b: b == b"Hello world!\n",
                 what="13-byte body, no Content-Length"),
    "big-1MiB": App("apps:big", check=lambda b: b == b"x" * (1 << 20),
                    what="one 1 MiB bytes object with Content-Length"),
    "stream-100x1KiB": App("apps:stream", check=lambda b: b == b"y" * (100 * 1024),
                           what="generator of 100 x 1 KiB, no Content-Length"),
    "echo-16KiB": App("apps:echo", method="POST", body=POST_BODY, check=lambda b: b == POST_BODY,
                      what="16 KiB POST read from wsgi.input and sent back"),
    "flask": App("apps:flask_app", check=_json_is(FLASK_JSON), what="Flask route returning jsonify(...)"),
}


def server_argv(name, opts, port, app):
    """argv that starts server `name` in the foreground on 127.0.0.1:port, cwd = bench/."""
    w = str(opts.workers)
    if name in ("rwsgi-gw", "rwsgi-gw-strict"):
        sandbox = ["--sandbox", "strict"] if name == "rwsgi-gw-strict" else []
        return [str(opts.bin), "--bind", "127.0.0.1:%d" % port, "--workers", w, "--python", str(VENV / "python"),
                "--chdir", str(BENCH), "--log-level", "warning"] + sandbox + [app]
    if name == "gunicorn-sync":
        return [str(VENV / "gunicorn"), "--bind", "127.0.0.1:%d" % port, "--workers", w,
                "--chdir", str(BENCH), "--log-level", "warning", app]
    if name == "gunicorn-gthread":
        return [str(VENV / "gunicorn"), "--bind", "127.0.0.1:%d" % port, "--workers", w,
                "--worker-class", "gthread", "--threads", str(opts.gthread_threads),
                "--chdir", str(BENCH), "--log-level", "warning", app]
    if name == "granian":
        return [str(VENV / "granian"), "--interface", "wsgi", "--host", "127.0.0.1", "--port", str(port),
                "--workers", w, "--working-dir", str(BENCH), "--log-level", "warning", app]
    raise KeyError(name)


# rwsgi-gw-strict is rwsgi-gw with --sandbox strict, to measure what the sandbox costs.
SERVERS = ["rwsgi-gw", "rwsgi-gw-strict", "gunicorn-sync", "gunicorn-gthread", "granian"]
BASELINE = "gunicorn-sync"

# Appended to every wrk script: one machine-readable line from wrk's HdrHistogram (microseconds).
REPORT_LUA = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCHRESULT %d %d %d %d %d %d %d %d %.1f %.1f %.1f %.1f\n",
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean, latency.max))
end
"""


def wrk_script(app):
    lua = ""
    if app.method == "POST":
        lua += ('wrk.method = "POST"\nwrk.body = string.rep("z", %d)\n'
                'wrk.headers["Content-Type"] = "application/octet-stream"\n' % len(app.body))
    f = tempfile.NamedTemporaryFile("w", suffix=".lua", prefix="rwsgi-bench-", delete=False)
    f.write(lua + REPORT_LUA)
    f.close()
    return f.name


# ---- the server's process tree, from /proc (no /proc/PID/task/TID/children on every kernel) ----

def _proc_table():
    table = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path("/proc/%s/stat" % d).read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        table[int(d)] = (int(fields[1]), int(fields[3]))  # ppid, session id
    return table


def tree_pids(root):
    """root and every process descended from it or in its session (it runs under setsid)."""
    table = _proc_table()
    out = set()
    for pid, (ppid, sid) in table.items():
        if pid == root or sid == root:
            out.add(pid)
            continue
        seen = 0
        while ppid > 1 and seen < 64:
            if ppid == root:
                out.add(pid)
                break
            ppid = table.get(ppid, (0, 0))[0]
            seen += 1
    return out


def tree_rss_kib(root):
    total = 0
    for pid in tree_pids(root):
        try:
            m = re.search(r"^VmRSS:\s+(\d+)", Path("/proc/%d/status" % pid).read_text(), re.M)
        except OSError:
            continue
        if m:  # zombies have no VmRSS
            total += int(m.group(1))
    return total


def tree_cpu_ticks(root):
    total = 0
    for pid in tree_pids(root):
        try:
            stat = Path("/proc/%d/stat" % pid).read_text()
        except OSError:
            continue
        f = stat[stat.rindex(")") + 2:].split()
        total += int(f[11]) + int(f[12])
    return total


# ---- one cell ----

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_once(port, app, timeout=10):
    """One request (HTTP/1.1, Connection: close); returns (status, body)."""
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Connection": "close"}
        if app.body is not None:
            headers["Content-Type"] = "application/octet-stream"
        c.request(app.method, "/", body=app.body, headers=headers)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def wait_ready(port, proc, app, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("server exited with status %s before answering" % proc.returncode)
        try:
            return http_once(port, app, timeout=5)
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("server did not answer within %ss" % timeout)


def stop_tree(proc, timeout=10):
    """SIGTERM the server's root (a graceful stop for all four), then SIGKILL, pid by pid, what is left."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None and not (tree_pids(proc.pid) - {proc.pid}):
            break
        time.sleep(0.1)
    for pid in tree_pids(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
            print("bench: SIGKILL pid %d (still alive %ss after SIGTERM)" % (pid, timeout), file=sys.stderr)
        except ProcessLookupError:
            pass
    proc.wait()


def run_wrk(opts, port, script, seconds):
    argv = ["wrk", "-t%d" % opts.wrk_threads, "-c%d" % opts.connections, "-d%ss" % seconds, "--latency",
            "--timeout", "5s", "-s", script, "http://127.0.0.1:%d/" % port]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60).stdout
    m = re.search(r"^BENCHRESULT (.*)$", out, re.M)
    if not m:
        raise RuntimeError("no result from wrk:\n" + out)
    v = m.group(1).split()
    reqs, dur_us = int(v[0]), int(v[1])
    return {
        "requests": reqs, "rps": reqs * 1e6 / dur_us, "mbps": int(v[2]) / dur_us,
        "err_connect": int(v[3]), "err_read": int(v[4]), "err_write": int(v[5]), "non2xx": int(v[6]),
        "err_timeout": int(v[7]), "p50_ms": float(v[8]) / 1000, "p99_ms": float(v[9]) / 1000,
        "mean_ms": float(v[10]) / 1000, "max_ms": float(v[11]) / 1000,
    }


def bench_cell(opts, server, label, round_no):
    app = APPS[label]
    port = free_port()
    argv = server_argv(server, opts, port, app.target)
    log_path = opts.logs / ("%s-%s-r%d.log" % (server, label, round_no))
    script = wrk_script(app)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, cwd=BENCH, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        status, body = wait_ready(port, proc, app, opts.start_timeout)
        probe_ok = status == 200 and app.check(body)
        if not probe_ok:
            print("bench: %s / %s answered the probe with %s and %d bytes: %r" % (server, label, status, len(body),
                  body[:200]), file=sys.stderr)
        rss_idle = tree_rss_kib(proc.pid)
        if opts.warmup > 0:
            run_wrk(opts, port, script, opts.warmup)
        peak = [0]
        done = threading.Event()

        def sample():
            while True:
                peak[0] = max(peak[0], tree_rss_kib(proc.pid))
                if done.wait(0.25):
                    return

        sampler = threading.Thread(target=sample)
        sampler.start()
        c0, t0 = tree_cpu_ticks(proc.pid), time.time()
        try:
            cell = run_wrk(opts, port, script, opts.duration)
        finally:
            done.set()
            sampler.join()
        c1, t1 = tree_cpu_ticks(proc.pid), time.time()
        nprocs = len(tree_pids(proc.pid))
        cell.update(server=server, app=label, round=round_no, probe_ok=probe_ok, rss_idle_mib=rss_idle / 1024,
                    rss_mib=peak[0] / 1024, nprocs=nprocs,
                    cpu_pct=100.0 * (c1 - c0) / os.sysconf("SC_CLK_TCK") / (t1 - t0))
        return cell
    finally:
        stop_tree(proc)
        os.unlink(script)


FIELDS = ["round", "app", "server", "rps", "p50_ms", "p99_ms", "mean_ms", "max_ms", "requests", "mbps",
          "err_connect", "err_read", "err_write", "err_timeout", "non2xx", "probe_ok", "rss_idle_mib", "rss_mib",
          "nprocs", "cpu_pct"]


def fmt(v):
    return "%.3f" % v if isinstance(v, float) else str(v)


def flags(cells):
    f = ""
    if any(c["err_connect"] + c["err_write"] + c["err_timeout"] for c in cells):
        f += "E"
    if any(c["err_read"] for c in cells):
        f += "R"
    if any(c["non2xx"] for c in cells):
        f += "S"
    if not all(c["probe_ok"] for c in cells):
        f += "B"
    return f


def table(results, apps, servers):
    lines = ["| app | server | req/s | (min-max) | vs gunicorn sync | p99 ms | RSS MiB | flags |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for label in apps:
        base = results.get((label, BASELINE))
        base_rps = statistics.median(c["rps"] for c in base) if base else None
        for server in servers:
            cells = results.get((label, server))
            if not cells:
                lines.append("| %s | %s | failed | | | | | |" % (label, server))
                continue
            rps = statistics.median(c["rps"] for c in cells)
            p99 = statistics.median(c["p99_ms"] for c in cells)
            rss = statistics.median(c["rss_mib"] for c in cells)
            ratio = "%.2fx" % (rps / base_rps) if base_rps else "-"
            spread = "%s-%s" % ("{:,.0f}".format(min(c["rps"] for c in cells)), "{:,.0f}".format(max(c["rps"] for c in cells)))
            lines.append("| %s | %s | %s | %s | %s | %.2f | %.0f | %s |" % (label, server, "{:,.0f}".format(rps), spread,
                                                                          ratio, p99, rss, flags(cells)))
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=5, help="seconds of measured wrk per cell (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of discarded wrk before it (default 1)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the table shows medians (default 3)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of every server (default 2)")
    parser.add_argument("--gthread-threads", type=int, default=4, help="threads per gunicorn gthread worker (4)")
    parser.add_argument("--connections", type=int, default=64, help="wrk -c (default 64)")
    parser.add_argument("--wrk-threads", type=int, default=2, help="wrk -t (default 2)")
    parser.add_argument("--apps", default=",".join(APPS), help="comma-separated, from: " + ", ".join(APPS))
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma-separated, from: " + ", ".join(SERVERS))
    parser.add_argument("--bin", type=Path, default=DEFAULT_BIN, help="the rwsgi-gw binary (default %(default)s)")
    parser.add_argument("--start-timeout", type=float, default=30)
    parser.add_argument("--out", type=Path, help="TSV of every cell (default bench/results-TIMESTAMP.tsv)")
    parser.add_argument("--logs", type=Path, default=BENCH / "logs", help="servers' output (default bench/logs/)")
    opts = parser.parse_args()

    apps = [a for a in opts.apps.split(",") if a]
    servers = [s for s in opts.servers.split(",") if s]
    unknown = [a for a in apps if a not in APPS] + [s for s in servers if s not in SERVERS]
    if unknown:
        parser.error("unknown app or server: " + ", ".join(unknown))
    problems = []
    if not any((Path(p) / "wrk").exists() for p in os.environ.get("PATH", "").split(os.pathsep)):
        problems.append("wrk is not on PATH (apt-get install wrk)")
    for s in servers:
        exe = Path(server_argv(s, opts, 0, "x")[0])
        if not exe.exists():
            problems.append("%s: %s does not exist (%s)" % (s, exe, "cargo build --release" if s.startswith("rwsgi-gw")
                                                            else ".venv/bin/pip install gunicorn granian flask"))
    if problems:
        sys.exit("bench: " + "; ".join(problems))
    opts.logs.mkdir(parents=True, exist_ok=True)
    out = opts.out or BENCH / ("results-%s.tsv" % time.strftime("%Y%m%d-%H%M%S"))
    new = not out.exists()
    tsv = open(out, "a")
    if new:
        tsv.write("\t".join(FIELDS) + "\n")

    print("bench: %d app(s) x %d server(s) x %d round(s), %ss each (+%ss warm-up), wrk -t%d -c%d, %d workers"
          % (len(apps), len(servers), opts.rounds, opts.duration, opts.warmup, opts.wrk_threads,
             opts.connections, opts.workers), file=sys.stderr)
    results = {}
    for round_no in range(1, opts.rounds + 1):
        shift = (round_no - 1) % len(servers)
        order = servers[shift:] + servers[:shift]  # nobody always goes first
        for label in apps:
            for server in order:
                try:
                    cell = bench_cell(opts, server, label, round_no)
                except (RuntimeError, OSError, subprocess.SubprocessError) as e:
                    print("bench: round %d %s / %s failed: %s (log: %s)" % (round_no, label, server, e,
                          opts.logs / ("%s-%s-r%d.log" % (server, label, round_no))), file=sys.stderr)
                    continue
                results.setdefault((label, server), []).append(cell)
                tsv.write("\t".join(fmt(cell[k]) for k in FIELDS) + "\n")
                tsv.flush()
                errs = cell["err_connect"] + cell["err_read"] + cell["err_write"] + cell["err_timeout"]
                print("round %d  %-16s %-17s %9.0f req/s  p99 %8.2f ms  RSS %6.1f MiB (%d procs)  CPU %4.0f%%"
                      "  socket errors %d  non-2xx %d%s"
                      % (round_no, label, server, cell["rps"], cell["p99_ms"], cell["rss_mib"], cell["nprocs"],
                         cell["cpu_pct"], errs, cell["non2xx"], "" if cell["probe_ok"] else "  BAD BODY"),
                      file=sys.stderr)
    tsv.close()
    print()
    print(table(results, apps, servers))
    print()
    print("medians of %d round(s); wrk -t%d -c%d -d%ds; %d workers each; RSS = peak sum over the server's process tree;"
          % (opts.rounds, opts.wrk_threads, opts.connections, opts.duration, opts.workers))
    print("flags: E socket errors (connect/write/timeout), R read errors, S non-2xx, B probe body wrong; cells: %s"
          % out)


if __name__ == "__main__":
    main()

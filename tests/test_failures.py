"""Failures stay local: an app that raises, a worker that dies mid-request (exit,
SIGKILL from outside, segfault), stray use of the standard streams, and apps
that cannot be loaded at all. The app is tests/apps/fail_app.py."""

import http.client
import os
import re
import signal
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from test_cli import run_gw


# ------------------------------------------------------------------ helpers

@pytest.fixture
def background():
    """submit(fn, *args) runs fn in a thread and returns its Future."""
    pool = ThreadPoolExecutor(4)
    yield pool.submit
    pool.shutdown(wait=False, cancel_futures=True)


def get(srv, path, conn=None):
    """(status, headers, body) of one GET, on `conn` when given (keep-alive)."""
    if conn is None:
        return srv.request("GET", path)
    conn.request("GET", path)
    r = conn.getresponse()
    return r.status, dict((k.lower(), v) for k, v in r.getheaders()), r.read()


def pid_of(srv, conn=None):
    """The pid of the worker that answers /pid (the only one when workers=1)."""
    status, headers, body = get(srv, "/pid", conn)
    assert status == 200, (status, body, short_log(srv))
    assert headers["x-worker-pid"] == body.decode()
    return int(body)


def wait_pidfile(path, timeout=10):
    deadline = time.time() + timeout
    while not path.exists():
        assert time.time() < deadline, "the app never wrote %s" % path
        time.sleep(0.01)
    return int(path.read_text())


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def gone(pid, timeout=5):
    """True once the process no longer exists (the master has reaped it)."""
    deadline = time.time() + timeout
    while alive(pid):
        if time.time() > deadline:
            return False
        time.sleep(0.02)
    return True


def wait_workers(srv, count, timeout=10):
    """The master's worker pids once there are `count` of them."""
    deadline = time.time() + timeout
    while len(srv.worker_pids()) != count:
        assert time.time() < deadline, "never %d workers: %s\n%s" % (count, srv.worker_pids(), short_log(srv))
        time.sleep(0.02)
    return set(srv.worker_pids())


def raw_exchange(srv, data, timeout=10):
    """Send raw bytes, read until the server closes; returns (bytes, how it ended)."""
    s = socket.create_connection((srv.host, srv.port), timeout=timeout)
    out = b""
    try:
        s.sendall(data)
        while True:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                return out, "timeout"
            except ConnectionResetError:
                return out, "reset"
            if not chunk:
                return out, "eof"
            out += chunk
    finally:
        s.close()


def all_succeed(srv, count=1000, connections=4):
    """`count` GET /pid spread over a few keep-alive connections; every one
    must be 200. Returns the set of worker pids that answered."""
    conns = [srv.conn() for _ in range(connections)]
    pids = set()
    try:
        for i in range(count):
            status, headers, body = get(srv, "/pid", conns[i % connections])
            assert status == 200, "request %d of %d after the failure: %s %r\n%s" % (i + 1, count, status, body,
                                                                                   short_log(srv))
            pids.add(int(body))
    finally:
        for c in conns:
            c.close()
    return pids


def assert_traceback_logged(srv, exception_line):
    srv.wait_log(r"Traceback \(most recent call last\):[\s\S]*?" + re.escape(exception_line))


def short_log(srv, limit=300):
    """The log with every line cut to `limit` characters (the stdio test logs 1 MB lines)."""
    return "\n".join(line[:limit] for line in srv.log.splitlines()[-200:])


def wait_log_quiet(srv, pattern, timeout=10):
    deadline = time.time() + timeout
    while not re.search(pattern, srv.log):
        assert time.time() < deadline, "log never matched %r:\n%s" % (pattern, short_log(srv))
        time.sleep(0.05)


def marker():
    return uuid.uuid4().hex[:12]


# Each way a worker can die in the middle of a request: the route that makes it
# die (the sigkill one sleeps until the test kills it) and how the master's log
# must describe the death.
DEATHS = {
    "os-exit": ("/exit", r"exit(?:ed)?(?: with)?(?: code| status)?:? 1\b"),
    "sigkill-from-outside": ("/pid?sleep=20", r"SIGKILL|signal 9\b"),
    "segfault-ctypes": ("/segv-ctypes", r"SIGSEGV|signal 11\b"),
    "segfault-faulthandler": ("/segv-faulthandler", r"SIGSEGV|signal 11\b"),
}


def die(srv, kind, tmp_path, background):
    """Send the request that kills its worker; returns (dead pid, (status, headers, body))."""
    route, _ = DEATHS[kind]
    pidfile = tmp_path / ("dying-%s.pid" % marker())
    sep = "&" if "?" in route else "?"
    pending = background(srv.request, "GET", "%s%spidfile=%s" % (route, sep, pidfile), None, None, 30)
    pid = wait_pidfile(pidfile)
    if kind == "sigkill-from-outside":
        time.sleep(0.2)  # well inside the app's sleep
        os.kill(pid, signal.SIGKILL)
    return pid, pending.result(30)


def assert_death_logged(srv, pid, kind):
    """A master line (not the worker's own output) names the pid and how it died."""
    srv.wait_log(r"(?m)^(?!.*\[worker %d\]).*\b%d\b.*(?:%s)" % (pid, pid, DEATHS[kind][1]))


def assert_bad_gateway(response, srv):
    status, _, body = response
    assert status == 502, (status, body, short_log(srv))
    assert len(body) < 512 and b"Traceback" not in body, body


# ------------------------------------------------------------------ app exceptions

@pytest.mark.parametrize("route,exception", [
    ("/raise", "ValueError: FAIL-RAISE"),
    ("/raise-in-iter", "ValueError: FAIL-RAISE-IN-ITER"),
    ("/raise-after-empty", "ValueError: FAIL-RAISE-AFTER-EMPTY"),
])
def test_exception_before_the_first_chunk_is_a_500(server, route, exception):
    srv = server("fail_app")
    pid = pid_of(srv)
    m = marker()
    status, headers, body = srv.request("GET", "%s?m=%s" % (route, m))
    assert status == 500, (status, body)
    assert 0 < len(body) < 512, body
    assert m.encode() not in body and b"Traceback" not in body, body
    assert "x-worker-pid" not in headers  # the app's held-back headers were dropped
    assert_traceback_logged(srv, "%s %s" % (exception, m))
    # An exception is not a crash: the same worker goes on serving.
    assert pid_of(srv) == pid
    assert all_succeed(srv, 200) == {pid}


def test_exception_after_the_first_chunk_cuts_a_chunked_response(server):
    srv = server("fail_app")
    pid = pid_of(srv)
    m = marker()
    data, ending = raw_exchange(srv, b"GET /raise-after-chunk?m=%s HTTP/1.1\r\nHost: t\r\n\r\n" % m.encode())
    assert ending in ("eof", "reset"), "the connection was left open after the failure: %r" % data
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), data
    assert b"transfer-encoding: chunked" in head.lower(), data
    assert b"FIRST-CHUNK|" in body
    assert not body.endswith(b"0\r\n\r\n"), "the cut response was terminated as if complete: %r" % data
    assert_traceback_logged(srv, "ValueError: FAIL-RAISE-AFTER-CHUNK " + m)
    assert pid_of(srv) == pid
    assert all_succeed(srv, 200) == {pid}


def test_exception_after_the_first_chunk_cuts_a_content_length_response(server):
    srv = server("fail_app")
    pid = pid_of(srv)
    m = marker()
    conn = srv.conn()
    conn.request("GET", "/raise-after-chunk?cl=1&m=" + m)
    r = conn.getresponse()
    assert r.status == 200
    assert r.getheader("Content-Length") == "1000"
    with pytest.raises((http.client.IncompleteRead, ConnectionError)) as cut:
        r.read()
    if isinstance(cut.value, http.client.IncompleteRead):
        assert cut.value.partial == b"FIRST-CHUNK|"
    conn.close()
    assert_traceback_logged(srv, "ValueError: FAIL-RAISE-AFTER-CHUNK " + m)
    assert pid_of(srv) == pid


# ------------------------------------------------------------------ workers that die

@pytest.mark.parametrize("kind", list(DEATHS))
def test_worker_death_is_one_502_and_a_new_worker(server, tmp_path, background, kind):
    srv = server("fail_app")
    before = pid_of(srv)
    dead, response = die(srv, kind, tmp_path, background)
    assert dead == before
    assert_bad_gateway(response, srv)
    after = pid_of(srv)
    assert after != before
    assert gone(before) and before not in srv.worker_pids()
    assert srv.worker_pids() == [after]
    assert re.search(r"Booting worker with pid: %d\b" % after, srv.log)
    assert_death_logged(srv, before, kind)
    assert all_succeed(srv, 1000) == {after}
    assert srv.proc.poll() is None


def test_request_queued_behind_a_dying_worker_is_served(server, tmp_path, background):
    srv = server("fail_app")
    pidfile = tmp_path / "dying.pid"
    dying = background(srv.request, "GET", "/exit?sleep=1&pidfile=%s" % pidfile, None, None, 30)
    dead = wait_pidfile(pidfile)
    queued = [background(srv.request, "GET", "/pid", None, None, 30) for _ in range(2)]
    assert_bad_gateway(dying.result(30), srv)
    for future in queued:
        status, _, body = future.result(30)
        assert status == 200, (status, body, short_log(srv))
        assert int(body) != dead


@pytest.mark.parametrize("kind", ["os-exit", "sigkill-from-outside", "segfault-ctypes"])
def test_death_leaves_the_other_workers_request_alone(server, tmp_path, background, kind):
    srv = server("fail_app", workers=2)
    srv.wait_log(r"(Worker \d+ ready[\s\S]*){2}")
    slow_pidfile = tmp_path / "slow.pid"
    slow = background(srv.request, "GET", "/pid?sleep=2&pidfile=%s" % slow_pidfile, None, None, 30)
    slow_pid = wait_pidfile(slow_pidfile)
    dead, response = die(srv, kind, tmp_path, background)
    assert dead != slow_pid
    assert_bad_gateway(response, srv)
    status, headers, body = slow.result(30)
    assert (status, body) == (200, str(slow_pid).encode()), short_log(srv)
    assert alive(slow_pid)
    assert gone(dead)
    pids = wait_workers(srv, 2)
    assert slow_pid in pids and dead not in pids
    assert all_succeed(srv, 200) <= pids


# ------------------------------------------------------------------ standard streams

def test_print_stdout_and_stdin_do_not_disturb_the_protocol(server):
    srv = server("fail_app")
    conn = srv.conn()
    markers = [marker() for _ in range(3)]
    for m in markers:
        status, _, body = get(srv, "/stdio?m=" + m, conn)
        assert status == 200, (status, body[:500])
        assert body == ('{"stdin": "", "fd0": "", "pid": %s}' % pid_of(srv, conn)).encode()
    pid = pid_of(srv, conn)
    tag = r"\[worker %d\] " % pid
    for m in markers:
        for line in ["FAIL-PRINT", "FAIL-MULTI-A", "FAIL-MULTI-B", "FAIL-FD1-WRITE", "FAIL-STDERR",
                     "FAIL-FD2-WRITE", "FAIL-STDIO-DONE"]:
            wait_log_quiet(srv, r"(?m)^.*%s%s %s$" % (tag, line, m))
        # The 1 MB line is logged (long lines may be cut into several tagged lines).
        wait_log_quiet(srv, r"%sFAIL-HUGE-START %s x{1000}" % (tag, m))
        wait_log_quiet(srv, r"(?m)^.*%sx* FAIL-HUGE-END %s$" % (tag, m))
    assert srv.log.count("x") >= 3 << 20, "the 1 MB prints did not reach the log whole"
    assert "FAKE-FRAME" in srv.log  # the fake frames went to the log, not to a client
    assert srv.worker_pids() == [pid]
    assert all_succeed(srv, 200) == {pid}


def test_output_and_stdin_at_import_time(server):
    srv = server("fail_noisy_import")
    status, _, body = srv.request("GET", "/")
    assert status == 200
    pid = srv.worker_pids()[0]
    assert body == ("stdin-at-import='' pid=%d" % pid).encode()
    srv.wait_log(r"\[worker %d\] FAIL-IMPORT-PRINT" % pid)
    srv.wait_log(r"\[worker %d\] FAIL-IMPORT-FD1" % pid)


# ------------------------------------------------------------------ apps that cannot load

BOOT_FAILURES = [
    # (id, APP, what stderr must show)
    ("raise-at-import", "fail_import_raise", ["Traceback (most recent call last)", "RuntimeError: FAIL-IMPORT-RAISED"]),
    ("syntax-error", "fail_syntax", ["SyntaxError", "FAIL-SYNTAX-MARKER", "fail_syntax.py"]),
    ("missing-module", "fail_no_such_module", ["ModuleNotFoundError", "fail_no_such_module"]),
    ("missing-attribute", "fail_not_callable:no_such_callable", ["no_such_callable", "fail_not_callable"]),
    # The message names what was looked up (module:application), not just the module.
    ("not-callable", "fail_not_callable", ["callable", "fail_not_callable:application", "FAIL-NOT-CALLABLE"]),
    ("not-callable-explicit", "fail_not_callable:application",
     ["callable", "fail_not_callable:application", "FAIL-NOT-CALLABLE"]),
    ("factory-raises", "fail_factory:make()", ["Traceback (most recent call last)", "RuntimeError: FAIL-FACTORY-RAISED"]),
    ("sys-exit-at-import", "fail_sysexit", ["FAIL-SYSEXIT-AT-IMPORT"]),
]


@pytest.mark.parametrize("workers", [1, 4])
@pytest.mark.parametrize("app,expected", [b[1:] for b in BOOT_FAILURES], ids=[b[0] for b in BOOT_FAILURES])
def test_app_that_cannot_load_stops_the_server_fast(default_python, app, expected, workers):
    result = run_gw("--bind", "127.0.0.1:0", "--workers", str(workers), "--python", default_python, app,
                    timeout=10)
    assert result.code == 3, result
    assert result.seconds < 2, result
    for text in expected:
        assert text in result.stderr, (text, result.stderr)
    assert result.stdout == ""


def test_app_that_cannot_load_through_the_server_fixture(server):
    started = time.monotonic()
    srv = server("fail_import_raise", wait=False)
    code = srv.proc.wait(10)
    assert time.monotonic() - started < 2
    assert code != 0
    assert "RuntimeError: FAIL-IMPORT-RAISED" in srv.log
    assert "Traceback (most recent call last)" in srv.log


def test_boot_traceback_reaches_stderr_even_with_an_error_logfile(default_python, tmp_path):
    errors = tmp_path / "error.log"
    result = run_gw("--bind", "127.0.0.1:0", "--python", default_python, "--error-logfile", str(errors),
                    "fail_import_raise")
    assert result.code == 3
    assert "RuntimeError: FAIL-IMPORT-RAISED" in result.stderr
    assert "RuntimeError: FAIL-IMPORT-RAISED" in errors.read_text()

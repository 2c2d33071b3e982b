"""Failures stay local: app exceptions, dying workers, stray stdio, broken imports."""

import http.client
import os
import signal
import threading
import time

import pytest


def get(srv, path, conn=None):
    c = conn or srv.conn()
    c.request("GET", path)
    r = c.getresponse()
    return r.status, r.read()


def worker_pid(srv):
    status, body = get(srv, "/")
    assert status == 200
    return int(body)


def test_exception_before_headers_is_a_500_with_traceback_logged(server):
    srv = server("iso_app")
    status, _, body = srv.request("GET", "/raise-before")
    assert status == 500
    assert len(body) < 100 and b"ISO-BEFORE-HEADERS" not in body
    srv.wait_log(r"Traceback[\s\S]*ValueError: ISO-BEFORE-HEADERS")
    assert worker_pid(srv) > 0


def test_exception_after_headers_cuts_the_connection(server):
    srv = server("iso_app")
    c = srv.conn()
    c.request("GET", "/raise-after")
    r = c.getresponse()
    assert r.status == 200
    with pytest.raises(http.client.IncompleteRead) as cut:
        r.read()
    assert cut.value.partial == b"partial"
    srv.wait_log(r"ValueError: ISO-AFTER-HEADERS")
    assert worker_pid(srv) > 0


@pytest.mark.parametrize("path", ["/exit", "/segfault", "/selfkill"])
def test_worker_death_is_a_502_for_that_request_only(server, path):
    srv = server("iso_app")
    before = worker_pid(srv)
    status, _, body = srv.request("GET", path)
    assert status == 502, body
    after = worker_pid(srv)
    assert after != before
    conn = srv.conn()
    for _ in range(1000):
        assert get(srv, "/", conn)[0] == 200
    srv.wait_log(r"Worker %d died" % before)


def test_sigkill_from_outside_mid_request(server):
    srv = server("iso_app")
    pid = worker_pid(srv)
    result = {}

    def slow():
        result["status"] = srv.request("GET", "/slow?5", timeout=20)[0]

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.5)
    os.kill(pid, signal.SIGKILL)
    t.join(20)
    assert result["status"] == 502
    srv.wait_log(r"Worker %d died \(killed by signal 9 \(SIGKILL\)\)" % pid)
    conn = srv.conn()
    for _ in range(1000):
        assert get(srv, "/", conn)[0] == 200


def test_other_workers_requests_are_untouched(server):
    srv = server("iso_app", workers=2)
    srv.wait_log(r"(ready[\s\S]*){2}")
    result = {}

    def slow():
        result["slow"] = srv.request("GET", "/slow?1.5", timeout=20)

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.3)
    assert srv.request("GET", "/exit")[0] == 502
    t.join(20)
    assert result["slow"][0] == 200


def test_print_and_stdin_do_not_disturb_the_protocol(server):
    srv = server("iso_app")
    for _ in range(3):
        status, _, body = srv.request("GET", "/print")
        assert status == 200
        assert body == b"stdin=''"
    pid = worker_pid(srv)
    srv.wait_log(r"\[worker %d\] ISO-PRINTED-LINE" % pid)
    srv.wait_log(r"\[worker %d\] ISO-RAW-FD1-WRITE" % pid)
    assert "died" not in srv.log


@pytest.mark.parametrize("app,expected", [
    ("iso_import_error", r"RuntimeError: ISO-IMPORT-FAILED"),
    ("iso_syntax_error", r"SyntaxError"),
    ("iso_app:missing", r"has no attribute 'missing'"),
    ("iso_not_callable", r"not a WSGI callable"),
    ("no_such_module_here", r"ModuleNotFoundError"),
])
def test_boot_failure_exits_fast_with_the_traceback(server, app, expected):
    started = time.monotonic()
    srv = server(app, wait=False)
    code = srv.proc.wait(10)
    elapsed = time.monotonic() - started
    assert code == 3
    assert elapsed < 2, elapsed
    srv.wait_log(expected)
    assert "Worker failed to boot" in srv.log

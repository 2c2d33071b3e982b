"""Worker lifecycle against the real binary: timeouts with tracebacks,
recycling, crash loops, signals, zero-drop reload, admission, master death,
threads."""

import http.client
import os
import re
import signal
import socket
import subprocess
import threading
import time

import pytest


def answer(srv, path="/", timeout=15):
    status, _, body = srv.request("GET", path, timeout=timeout)
    return status, body.decode()


def pid_of(srv):
    status, body = answer(srv)
    assert status == 200
    return int(body.split()[0])


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_for(condition, timeout=10, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting for " + what)


def in_background(fn, *args):
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("value", fn(*args)))
    thread.start()
    return thread, result


def test_timeout_logs_the_traceback_and_answers_504(server):
    srv = server("wl_app", "--timeout", "1")
    before = pid_of(srv)
    started = time.monotonic()
    assert answer(srv, "/hang")[0] == 504
    assert time.monotonic() - started < 6
    srv.wait_log(r"Worker %d timed out" % before)
    srv.wait_log(r"\[worker %d\].*line \d+ in wl_hang_in_here" % before)
    assert pid_of(srv) != before


def test_max_requests_with_jitter_recycles_without_failures(server):
    srv = server("wl_app", "--max-requests", "20", "--max-requests-jitter", "5", workers=2)
    conn, pids = srv.conn(), set()
    for _ in range(200):
        conn.request("GET", "/")
        response = conn.getresponse()
        assert response.status == 200
        pids.add(int(response.read().split()[0]))
    assert len(pids) >= 6
    assert len(re.findall(r"served (\d+) requests \(--max-requests\)", srv.log)) >= 4
    assert all(20 <= int(n) <= 26 for n in re.findall(r"served (\d+) requests", srv.log))


def test_max_worker_memory_recycles_a_leaking_app(server):
    srv = server("wl_app", "--max-worker-memory", "80")
    conn, pids = srv.conn(), set()
    for _ in range(60):
        conn.request("GET", "/leak")
        response = conn.getresponse()
        assert response.status == 200
        pids.add(int(response.read().split()[0]))
    assert len(pids) >= 2
    srv.wait_log(r"over --max-worker-memory; retiring it")


def test_a_crash_loop_backs_off_and_logs_each_death(server):
    srv = server("wl_app")
    for _ in range(4):
        assert answer(srv, "/die")[0] == 502
    assert len(re.findall(r"Worker \d+ died \(exit code 1\)", srv.log)) == 4
    srv.wait_log(r"the next starts in \d")
    wait_for(lambda: answer(srv)[0] == 200, what="a worker after the backoff")
    pid = pid_of(srv)
    os.kill(pid, signal.SIGKILL)
    srv.wait_log(r"Worker %d died \(killed by signal 9 \(SIGKILL\)\)" % pid)


def test_death_before_hello_at_boot_exits_non_zero(server):
    srv = server("wl_boot_death", wait=False)
    assert srv.proc.wait(5) == 3
    assert re.search(r"exited before it was ready \(exit code 5\)", srv.log)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_term_and_int_finish_in_flight_requests(server, sig):
    srv = server("wl_app")
    pid_of(srv)
    thread, result = in_background(answer, srv, "/sleep?1")
    time.sleep(0.3)
    srv.proc.send_signal(sig)
    thread.join(10)
    assert result["value"][0] == 200
    assert srv.proc.wait(10) == 0
    with pytest.raises(OSError):
        socket.create_connection((srv.host, srv.port), timeout=1)


def test_quit_stops_at_once(server):
    srv = server("wl_app")
    workers = srv.worker_pids()

    def cut_short():
        try:
            return srv.request("GET", "/sleep?10", timeout=20)[0]
        except (OSError, http.client.HTTPException) as e:
            return e

    thread, result = in_background(cut_short)
    time.sleep(0.3)
    started = time.monotonic()
    srv.proc.send_signal(signal.SIGQUIT)
    assert srv.proc.wait(5) == 0
    assert time.monotonic() - started < 3
    wait_for(lambda: not any(alive(p) for p in workers), 3, "the workers to die")
    thread.join(10)
    assert result["value"] != 200


def test_hup_serves_new_code_and_retires_old_workers(server, tmp_path):
    version = tmp_path / "version"
    version.write_text("v1")
    srv = server("wl_app", env={"WL_VERSION_FILE": str(version)}, workers=2)
    old = set(srv.worker_pids())
    assert answer(srv)[1].split()[1] == "v1"
    version.write_text("v2")
    srv.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: answer(srv)[1].split()[1] == "v2", what="the new code")
    wait_for(lambda: not any(alive(p) for p in old), what="the old workers to exit")
    assert all(answer(srv)[1].split()[1] == "v2" for _ in range(20))


def test_ttin_and_ttou_change_the_worker_count(server):
    srv = server("wl_app", workers=2)
    wait_for(lambda: len(srv.worker_pids()) == 2, what="2 workers")
    srv.proc.send_signal(signal.SIGTTIN)
    wait_for(lambda: len(srv.worker_pids()) == 3, what="3 workers")
    # Signals sent back to back may coalesce into one: wait for each.
    srv.proc.send_signal(signal.SIGTTOU)
    wait_for(lambda: len(srv.worker_pids()) == 2, what="2 workers")
    srv.proc.send_signal(signal.SIGTTOU)
    wait_for(lambda: len(srv.worker_pids()) == 1, what="1 worker")
    srv.proc.send_signal(signal.SIGTTOU)
    srv.wait_log(r"Not decreasing the number of workers below 1")
    assert answer(srv)[0] == 200


def test_usr1_reopens_the_logs_and_pid_file(server, tmp_path):
    access, errors, pidfile = tmp_path / "access.log", tmp_path / "error.log", tmp_path / "app.pid"
    srv = server("wl_app", "--access-logfile", str(access), "--error-logfile", str(errors), "--pid", str(pidfile),
                 bind="127.0.0.1:%d" % free_port(), wait=False)
    wait_for(lambda: errors.exists() and "ready" in errors.read_text(), what="the error log")
    srv.host, srv.port = "127.0.0.1", int(re.search(r":(\d+) \(", errors.read_text()).group(1))
    assert pidfile.read_text().strip() == str(srv.proc.pid)
    assert answer(srv, "/before")[0] == 200
    os.rename(access, tmp_path / "access.log.1")
    os.rename(errors, tmp_path / "error.log.1")
    srv.proc.send_signal(signal.SIGUSR1)
    wait_for(lambda: access.exists() and errors.exists(), what="the reopened logs")
    assert answer(srv, "/after")[0] == 200
    wait_for(lambda: "/after" in access.read_text(), what="the access line in the new file")
    assert "/before" in (tmp_path / "access.log.1").read_text()
    srv.stop()
    assert not pidfile.exists()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_five_reloads_under_load_drop_nothing(server, tmp_path):
    version = tmp_path / "version"
    version.write_text("v0")
    srv = server("wl_app", env={"WL_VERSION_FILE": str(version)}, workers=2)
    stop, failures, served = threading.Event(), [], [0]
    lock = threading.Lock()

    def client():
        conn = srv.conn(timeout=15)
        while not stop.is_set():
            try:
                conn.request("GET", "/")
                response = conn.getresponse()
                response.read()
                ok = 200 <= response.status < 300
            except (OSError, http.client.HTTPException) as e:
                ok, response = False, e
                conn = srv.conn(timeout=15)
            with lock:
                served[0] += 1
                if not ok:
                    failures.append(getattr(response, "status", response))

    threads = [threading.Thread(target=client) for _ in range(64)]
    for t in threads:
        t.start()
    try:
        for n in range(1, 6):
            time.sleep(0.7)
            version.write_text("v%d" % n)
            srv.proc.send_signal(signal.SIGHUP)
        time.sleep(1.5)
    finally:
        stop.set()
        for t in threads:
            t.join(20)
    assert failures == []
    assert served[0] > 500
    assert len(re.findall(r"Reloading", srv.log)) == 5
    wait_for(lambda: answer(srv)[1].split()[1] == "v5", what="the last code")


def test_backlog_full_answers_503_at_once(server):
    srv = server("wl_app", "--backlog", "2")
    results = []

    def slow():
        started = time.monotonic()
        status = answer(srv, "/sleep?1.5")[0]
        results.append((status, time.monotonic() - started))

    threads = [threading.Thread(target=slow) for _ in range(8)]
    for t in threads:
        t.start()
        time.sleep(0.05)
    for t in threads:
        t.join(20)
    refused = [elapsed for status, elapsed in results if status == 503]
    assert len(refused) >= 3
    assert max(refused) < 1.0
    assert sum(1 for status, _ in results if status == 200) >= 3


def test_queue_timeout_answers_503_instead_of_serving_stale(server):
    srv = server("wl_app", "--queue-timeout", "0.5")
    threads = [in_background(answer, srv, "/sleep?2")[0] for _ in range(2)]
    time.sleep(0.2)
    started = time.monotonic()
    assert answer(srv, "/late")[0] == 503
    assert time.monotonic() - started < 1.5
    for t in threads:
        t.join(10)
    time.sleep(0.3)
    assert "START /late" not in srv.log


def test_a_client_gone_while_queued_is_never_sent_to_a_worker(server):
    srv = server("wl_app")
    busy = [in_background(answer, srv, "/sleep?1")[0] for _ in range(2)]  # running + queued in the pipe
    time.sleep(0.2)
    for path in (b"/gone-in-master-queue",):
        s = socket.create_connection((srv.host, srv.port))
        s.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path)
        time.sleep(0.1)
        s.close()
    for t in busy:
        t.join(10)
    assert answer(srv)[0] == 200
    assert "START /gone-in-master-queue" not in srv.log


def test_a_client_gone_from_the_pipe_queue_is_skipped(server):
    srv = server("wl_app")
    running = in_background(answer, srv, "/sleep?1")[0]
    time.sleep(0.2)
    s = socket.create_connection((srv.host, srv.port))
    s.sendall(b"GET /gone-in-pipe HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.2)
    s.close()
    running.join(10)
    assert answer(srv)[0] == 200
    assert "START /gone-in-pipe" not in srv.log


def test_a_client_gone_mid_response_frees_the_worker(server):
    srv = server("wl_app")
    pid = pid_of(srv)
    s = socket.create_connection((srv.host, srv.port))
    s.sendall(b"GET /forever HTTP/1.1\r\nHost: x\r\n\r\n")
    assert s.recv(100).startswith(b"HTTP/1.1 200")
    time.sleep(0.3)
    s.close()
    srv.wait_log(r"FOREVER CLOSED")
    assert pid_of(srv) == pid


def test_workers_die_with_the_master(server):
    srv = server("wl_app", workers=3)
    wait_for(lambda: len(srv.worker_pids()) == 3, what="3 workers")
    workers = srv.worker_pids()
    srv.proc.send_signal(signal.SIGKILL)
    srv.proc.wait(5)
    wait_for(lambda: not any(alive(p) for p in workers), 1.0, "every worker to die within 1 s")


def test_threads_serve_requests_at_once(server):
    srv = server("wl_app", "--threads", "4")
    results = []
    threads = [threading.Thread(target=lambda: results.append(answer(srv, "/sleep?0.5"))) for _ in range(4)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert time.monotonic() - started < 1.5
    assert all(status == 200 for status, _ in results)
    names = {body.split()[2] for _, body in results}
    assert len(names) == 4
    assert all(body.split()[3] == "True" for _, body in results)

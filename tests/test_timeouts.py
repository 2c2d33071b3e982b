"""A connection's timeouts on the wire (raw sockets): --header-timeout for a
request head, --keep-alive for an idle connection, --body-timeout for a body
that stalls. The flags are small here so the tests are short; every bound is
loose, since the machines are shared (src/timeouts.rs has exact unit tests on
a paused clock)."""

import socket
import time

GET = b"GET /probe HTTP/1.1\r\nHost: x\r\n\r\n"


def connect(srv):
    return socket.create_connection((srv.host, srv.port), timeout=15)


def read_response(s):
    """One response with a Content-Length from `s`: (head, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, "closed before a response: %r" % data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")][0])
    while len(body) < length:
        chunk = s.recv(65536)
        assert chunk, "closed in the middle of a body"
        body += chunk
    return head, body


def seconds_until_closed(s, started):
    """Waits for the server to close `s`, which must send nothing more; the
    seconds since `started`."""
    try:
        extra = s.recv(65536)
    except ConnectionResetError:
        extra = b""
    assert extra == b"", extra
    return time.monotonic() - started


def test_an_idle_connection_is_closed_after_keep_alive(server):
    srv = server("strict_app", "--keep-alive", "1", "--header-timeout", "30")
    s = connect(srv)
    # Taken before the request, so the response's flush (where the timer
    # starts) can only come later.
    started = time.monotonic()
    s.sendall(GET)
    assert read_response(s)[0].startswith(b"HTTP/1.1 200")
    assert 0.95 < seconds_until_closed(s, started) < 10


def test_keep_alive_may_be_longer_than_the_header_timeout(server):
    srv = server("strict_app", "--keep-alive", "30", "--header-timeout", "1")
    s = connect(srv)
    s.sendall(GET)
    read_response(s)
    time.sleep(2.5)
    s.sendall(GET)
    assert read_response(s)[0].startswith(b"HTTP/1.1 200")


def test_a_slow_head_is_closed_after_the_header_timeout(server):
    srv = server("strict_app", "--header-timeout", "1", "--keep-alive", "30")
    started = time.monotonic()
    s = connect(srv)
    s.sendall(b"GET /slow-head HTTP/1.1\r\nHost: x\r\n")
    assert 0.95 < seconds_until_closed(s, started) < 10
    assert "SERVED /slow-head" not in srv.log


def test_a_trickled_head_is_closed_after_the_header_timeout(server):
    """The header timeout bounds the whole head, not the gap between bytes."""
    srv = server("strict_app", "--header-timeout", "1", "--keep-alive", "30")
    s = connect(srv)
    started = time.monotonic()
    try:
        for byte in b"GET /trickle HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 100:
            s.send(bytes([byte]))
            time.sleep(0.1)
        raise AssertionError("the server kept reading a head for %.1f s" % (time.monotonic() - started))
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert time.monotonic() - started < 10
    assert "SERVED /trickle" not in srv.log


def test_the_next_head_gets_the_header_timeout_not_the_keep_alive(server):
    """An idle spell ends with the first byte of the next request."""
    srv = server("strict_app", "--keep-alive", "1", "--header-timeout", "30")
    s = connect(srv)
    s.sendall(GET)
    read_response(s)
    s.sendall(GET[:10])
    time.sleep(2.5)
    s.sendall(GET[10:])
    assert read_response(s)[0].startswith(b"HTTP/1.1 200")


def test_an_app_slower_than_both_timers_still_answers(server):
    """Neither timer runs while a worker has the request, be it the first on
    the connection or a later one."""
    srv = server("life_app", "--keep-alive", "1", "--header-timeout", "1")
    s = connect(srv)
    for _ in range(2):
        s.sendall(b"GET /sleep?2.5 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(s)[0].startswith(b"HTTP/1.1 200")


def test_keep_alive_zero_closes_after_each_response(server):
    srv = server("strict_app", "--keep-alive", "0")
    s = connect(srv)
    s.sendall(GET)
    head, _ = read_response(s)
    assert b"\r\nconnection: close" in head.lower()
    assert seconds_until_closed(s, time.monotonic()) < 5


def test_a_stalled_body_gets_408_before_a_worker_sees_it(server):
    srv = server("strict_app", "--body-timeout", "1")
    s = connect(srv)
    s.sendall(b"POST /stalled HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
    head, _ = read_response(s)
    assert head.startswith(b"HTTP/1.1 408")
    assert b"\r\nconnection: close" in head.lower()
    assert seconds_until_closed(s, time.monotonic()) < 5
    srv.wait_log(r"\[WARNING\] Refused POST /stalled HTTP/1.1 with 408")
    assert "SERVED /stalled" not in srv.log


def test_a_body_that_stalls_while_the_app_reads_gets_408(server):
    """Past the first 64 KiB the app reads the body itself; a stall there
    is still the client's: 408, and the worker is free for the next request."""
    srv = server("strict_app", "--body-timeout", "1")
    s = connect(srv)
    s.sendall(b"POST /stalled HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n" + b"z" * 100000)
    head, _ = read_response(s)
    assert head.startswith(b"HTTP/1.1 408")
    assert seconds_until_closed(s, time.monotonic()) < 5
    assert "SERVED /stalled" in srv.log
    status, _, _ = srv.request("GET", "/after")
    assert status == 200
    assert "ERROR" not in srv.log


def test_a_body_that_stalls_after_the_answer_started_cuts_the_connection(server):
    srv = server("strict_app", "--body-timeout", "1")
    s = connect(srv)
    s.sendall(b"POST /answer-then-read HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n" + b"z" * 100000)
    received = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        received += chunk
    assert received.startswith(b"HTTP/1.1 200")
    assert b"started" in received
    assert b"read " not in received
    assert not received.endswith(b"0\r\n\r\n"), "a cut response must not look complete"
    srv.wait_log(r"\[WARNING\] POST /answer-then-read HTTP/1.1: no more body arrived within --body-timeout")
    status, _, _ = srv.request("GET", "/after")
    assert status == 200


def test_a_worker_lost_while_the_body_stalls_gets_502_at_once(server):
    """The body's own timeout is for the client; a dead worker is answered now."""
    srv = server("strict_app", "--body-timeout", "30")
    s = connect(srv)
    started = time.monotonic()
    s.sendall(b"POST /die-while-reading HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n" + b"z" * 100000)
    head, _ = read_response(s)
    assert head.startswith(b"HTTP/1.1 502")
    assert time.monotonic() - started < 15
    srv.wait_log(r"\[ERROR\]")
    status, _, _ = srv.request("GET", "/after")
    assert status == 200

"""The front end on the wire (raw sockets): limits, ambiguous framing, header
spoofing, response integrity and Expect: 100-continue. docs/accepts.md lists
the policy, one line per case."""

import json
import socket
import time

import pytest


def exchange(srv, data):
    return srv.exchange(data, timeout=5)


def status_of(response):
    return int(response.split(b" ", 2)[1])


def responses(stream):
    """Splits a byte stream into (status, body) responses, framed by Content-Length."""
    found = []
    while stream:
        head, _, stream = stream.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        headers = dict(line.lower().split(b": ", 1) for line in lines[1:])
        length = int(headers.get(b"content-length", b"0"))
        found.append((int(lines[0].split(b" ")[1]), stream[:length]))
        stream = stream[length:]
    return found


@pytest.fixture
def srv(server):
    return server("strict_app")


REFUSED = {
    "content-length-then-chunked": (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 30\r\n"
                                    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "chunked-then-content-length": (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                                    b"Content-Length: 5\r\n\r\n0\r\n\r\n", 400),
    "content-length-and-chunked-http10": (b"POST / HTTP/1.0\r\nHost: x\r\nContent-Length: 5\r\n"
                                          b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "two-content-lengths": (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400),
    "plus-content-length": (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello", 400),
    "empty-content-length": (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: \r\n\r\n", 400),
    "huge-content-length": (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n", 400),
    "chunked-twice": (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 400),
    "chunked-twice-lines": (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "chunked-not-last": (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", 400),
    "te-on-http10": (b"POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "obs-fold": (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", 400),
    "bad-chunk-size": (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", 400),
    "nul-in-chunk-extension": (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                               b"5;a\x00b\r\nhello\r\n0\r\n\r\n", 400),
    "esc-in-chunk-extension": (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                               b"5;a=\x1bb\r\nhello\r\n0\r\n\r\n", 400),
    "del-in-chunk-extension": (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                               b"5;a\x7f\r\nhello\r\n0\r\n\r\n", 400),
    "bare-cr-in-chunk-extension": (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                                   b"5;a\rb\r\nhello\r\n0\r\n\r\n", 400),
    "bare-lf-in-chunks": (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n", 400),
    "missing-host": (b"GET / HTTP/1.1\r\n\r\n", 400),
    "two-hosts": (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    "absolute-host-mismatch": (b"GET http://a/ HTTP/1.1\r\nHost: b\r\n\r\n", 400),
    "nul-in-path": (b"GET /a%00b HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "long-request-line": (b"GET /" + b"a" * 4100 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    "long-field": (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8200 + b"\r\n\r\n", 431),
    "too-many-fields": (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: a\r\n" % i for i in range(101)) + b"\r\n",
                        431),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_with_a_status_and_a_close(srv, name):
    data, expected = REFUSED[name]
    out, closed = exchange(srv, data + b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(out) == expected, out[:200]
    assert closed, "the connection must be closed after a refusal"
    assert len(responses(out)) == 1, out
    assert "SERVED /smuggled" not in srv.log
    srv.wait_log(r"\[WARNING\] Refused .*")


def test_chunk_extensions_without_control_characters_are_ignored(srv):
    data = (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;name=value;quoted=\"a\tb\"\r\nhello\r\n0\r\n\r\n")
    out, _ = exchange(srv, data)
    [(status, body)] = responses(out)
    assert status == 200, out
    assert json.loads(body)["body"] == 5


def test_limits_are_flags(server):
    srv = server("strict_app", "--limit-request-line", "100", "--limit-request-field-size", "50",
                 "--limit-request-fields", "5", "--limit-request-body", "10")
    assert status_of(exchange(srv, b"GET /" + b"a" * 90 + b" HTTP/1.1\r\nHost: x\r\n\r\n")[0]) == 414
    assert status_of(exchange(srv, b"GET / HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 50 + b"\r\n\r\n")[0]) == 431
    many = b"".join(b"X-%d: a\r\n" % i for i in range(6))
    assert status_of(exchange(srv, b"GET / HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")[0]) == 431
    assert status_of(exchange(srv, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world")[0]) == 413
    chunked = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nhello \r\n6\r\nworld!\r\n0\r\n\r\n"
    assert status_of(exchange(srv, chunked)[0]) == 413
    ok = exchange(srv, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nConnection: close\r\n\r\nhelloworld")[0]
    assert status_of(ok) == 200


def test_body_limit_memory_stays_bounded_for_a_huge_chunked_body(server):
    srv = server("strict_app", "--limit-request-body", "1048576")
    s = socket.create_connection((srv.host, srv.port), timeout=10)
    s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (1 << 16, b"z" * (1 << 16))
    sent = 0
    try:
        while sent < (64 << 20):
            s.sendall(chunk)
            sent += 1 << 16
    except OSError:
        pass
    rss_kib = int([l for l in open("/proc/%d/status" % srv.proc.pid) if l.startswith("VmRSS")][0].split()[1])
    s.close()
    assert sent < (64 << 20), "the server kept reading past the limit"
    assert rss_kib < 64 * 1024


def test_trailers_never_reach_the_environ(srv):
    data = (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            b"5\r\nhello\r\n0\r\nX-Trailer-Evil: 1\r\nContent-Length: 99\r\n\r\n")
    out, _ = exchange(srv, data)
    assert status_of(out) == 200
    seen = json.loads(out.split(b"\r\n\r\n", 1)[1])
    assert seen["body"] == 5
    assert "HTTP_X_TRAILER_EVIL" not in seen["environ"]
    assert "CONTENT_LENGTH" not in seen["environ"]


def test_bare_lf_head_is_accepted_as_one_request(srv):
    out, _ = exchange(srv, b"GET /lf HTTP/1.1\nHost: x\nConnection: close\n\n")
    assert [status for status, _ in responses(out)] == [200]


@pytest.mark.parametrize("policy,expected", [("drop", "absent"), ("refuse", 400), ("dangerous", "present")])
def test_underscore_headers(server, policy, expected):
    srv = server("strict_app", "--header-map", policy)
    data = (b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 1.2.3.4\r\nX_Forwarded_For: 6.6.6.6\r\n"
            b"Content_Length: 5\r\nConnection: close\r\n\r\n")
    out, _ = exchange(srv, data)
    if expected == 400:
        assert status_of(out) == 400
        return
    environ = json.loads(out.split(b"\r\n\r\n", 1)[1])["environ"]
    assert "CONTENT_LENGTH" not in environ
    if expected == "absent":
        assert environ["HTTP_X_FORWARDED_FOR"] == "1.2.3.4"
    else:
        assert environ["HTTP_X_FORWARDED_FOR"] == "6.6.6.6"


@pytest.mark.parametrize("path", ["/bad-header", "/bad-status"])
def test_crlf_from_the_app_never_reaches_the_wire(srv, path):
    out, _ = exchange(srv, b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path.encode())
    assert status_of(out) == 500
    assert b"pwned" not in out and b"X-Evil" not in out
    srv.wait_log(r"the app's response is invalid")


def test_pipelined_requests_answered_in_order(srv):
    data = b"".join(b"GET /p%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(5))
    out, _ = exchange(srv, data + b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    paths = [json.loads(body)["environ"]["PATH_INFO"] for _, body in responses(out)]
    assert paths == ["/p0", "/p1", "/p2", "/p3", "/p4", "/last"]


def test_expect_continue_only_when_the_app_reads(srv):
    s = socket.create_connection((srv.host, srv.port), timeout=5)
    s.sendall(b"POST /no-read HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    first = s.recv(4096)
    assert first.startswith(b"HTTP/1.1 401"), first
    assert b"100 Continue" not in first
    s.close()
    s = socket.create_connection((srv.host, srv.port), timeout=5)
    s.sendall(b"POST /read HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
    interim = s.recv(4096)
    assert interim.startswith(b"HTTP/1.1 100 Continue"), interim
    s.sendall(b"hello")
    rest = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        rest += chunk
    s.close()
    assert b"200 OK" in interim + rest
    assert b'"body": 5' in interim + rest


@pytest.mark.parametrize("path", ["/short", "/long"])
def test_content_length_mismatch_closes_the_connection(server, path):
    srv = server("strict_app:framing")
    out, closed = exchange(srv, b"GET %s HTTP/1.1\r\nHost: x\r\n\r\nGET /next HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
    assert closed, "a response that breaks its own framing must end the connection"
    assert out.startswith(b"HTTP/1.1 200 OK")
    srv.wait_log(r"Content-Length; cutting the connection")
    # Whatever was sent never holds more body than the declared length.
    head, _, body = out.partition(b"\r\n\r\n")
    assert len(body) <= int(dict(l.split(b": ", 1) for l in head.split(b"\r\n")[1:])[b"Content-Length"])
    time.sleep(0.2)
    assert "SERVED /next" not in srv.log


@pytest.mark.parametrize("name", ["Connection", "Keep-Alive", "Transfer-Encoding", "Upgrade", "TE", "Trailer"])
def test_hop_by_hop_headers_from_the_app_are_an_error(server, name):
    srv = server("strict_app:framing")
    out, _ = exchange(srv, b"GET /hop/%s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % name.encode())
    assert status_of(out) == 500
    srv.wait_log(r"hop-by-hop header")


def test_an_unread_body_never_hides_a_request(server):
    srv = server("strict_app:framing")
    hidden = b"GET /hidden HTTP/1.1\r\nHost: x\r\n\r\n"
    data = b"POST /ignores-body HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(hidden), hidden)
    out, _ = exchange(srv, data + b"GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    time.sleep(0.2)
    assert "SERVED /hidden" not in srv.log
    assert [status for status, _ in responses(out)] in ([200, 200], [200])

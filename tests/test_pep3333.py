"""PEP 3333 conformance of rwsgi-gw, end to end: the real binary, real sockets,
the apps in tests/apps/pep_*.py.

Tests that exercise the worker shim run once per interpreter (the `python`
fixture: every CPython 3.8-3.13 with the pure-Python codec, and the venv python
with msgpack). Where an app is wrapped in wsgiref.validate.validator the worker
runs with PYTHONWARNINGS=error, so any validator complaint turns into an app
exception: a 500 and a traceback in the server log. Those tests therefore
check the status *and* that the log holds no traceback.

Tests of the HTTP side (framing, HEAD/204/304, keep-alive) run on the default
python only.
"""

import hashlib
import http.client
import io
import json
import socket
import sys
import time
import uuid
from pathlib import Path

import pytest

APPS = Path(__file__).resolve().parent / "apps"
sys.path.insert(0, str(APPS))
import pep_input  # noqa: E402  (the reference reader, run against io.BytesIO)

VALIDATE_ENV = {"PYTHONWARNINGS": "error"}
LOG_PROBLEMS = ("Traceback", "without being closed", "WSGIWarning")


# ---------------------------------------------------------------- helpers

def start(server, python, app, env=None, **kw):
    """Start `app` on the interpreter `python` ((path, codec) from the fixture)."""
    path, codec = python
    return server(app, python=path, codec=codec, env=env, **kw)


def start_validated(server, python, app, env=None, **kw):
    return start(server, python, app, env=dict(VALIDATE_ENV, **(env or {})), **kw)


def assert_clean_log(srv, settle=0.3):
    """Check the server log for app errors and validator complaints, after giving
    the worker's last stderr lines `settle` seconds to reach it. (The server keeps
    running: shutdown has its own test.)"""
    time.sleep(settle)
    log = srv.log
    found = [p for p in LOG_PROBLEMS if p in log]
    assert not found, "server log shows %s:\n%s" % (found, log)


def check_values(actual, expected):
    """Assert actual[k] == v for every expected item; report all mismatches at once."""
    wrong = {k: {"got": actual.get(k, "<missing>"), "want": v} for k, v in expected.items() if actual.get(k, "<missing>") != v}
    assert wrong == {}, "mismatched values: %r" % wrong


def exchange(srv, data, timeout=10):
    """Send raw bytes and read until the server closes. Returns (bytes, closed, local_port);
    closed is False when the server kept the connection open until the timeout."""
    s = socket.create_connection((srv.host, srv.port), timeout=timeout)
    try:
        local_port = s.getsockname()[1]
        s.sendall(data)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                return out, False, local_port
            if not chunk:
                return out, True, local_port
            out += chunk
    finally:
        s.close()


class Resp:
    def __init__(self, version, status, reason, headers, body):
        self.version, self.status, self.reason, self.headers, self.body = version, status, reason, headers, body

    def header(self, name):
        """All values of header `name` joined with ", ", or None."""
        values = [v for k, v in self.headers if k == name.lower()]
        return ", ".join(values) if values else None

    def __repr__(self):
        return "Resp(%s %s %r, %r, %r)" % (self.version, self.status, self.reason, self.headers, self.body[:200])


def _read_line(data, pos):
    end = data.find(b"\r\n", pos)
    assert end >= 0, "incomplete line at %d in %r" % (pos, data[pos:pos + 200])
    return data[pos:end], end + 2


def _read_chunked(data, pos):
    body = b""
    while True:
        line, pos = _read_line(data, pos)
        size = int(line.split(b";")[0].strip(), 16)
        if size == 0:
            while True:  # trailer section
                line, pos = _read_line(data, pos)
                if not line:
                    return body, pos
        assert pos + size + 2 <= len(data), "truncated chunk in %r" % data[pos - 20:pos + 40]
        body += data[pos:pos + size]
        assert data[pos + size:pos + size + 2] == b"\r\n", "chunk not followed by CRLF"
        pos += size + 2


def parse_responses(data, methods):
    """Parse the responses to `methods` (in order) out of `data`. Any byte after the
    last response, or a body where none is allowed, makes this fail."""
    responses, pos = [], 0
    for i, method in enumerate(methods):
        line, pos = _read_line(data, pos)
        assert line.startswith(b"HTTP/1."), "response %d: bad status line %r (after %r)" % (i, line, data[:pos])
        version, status, reason = (line.decode("latin-1").split(" ", 2) + [""])[:3]
        headers = []
        while True:
            line, pos = _read_line(data, pos)
            if not line:
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers.append((name.strip().lower(), value.strip()))
        resp = Resp(version, int(status), reason, headers, b"")
        te, cl = resp.header("transfer-encoding"), resp.header("content-length")
        if method == "HEAD" or resp.status in (204, 304) or resp.status < 200:
            pass
        elif te and "chunked" in te.lower():
            resp.body, pos = _read_chunked(data, pos)
        elif cl is not None:
            resp.body, pos = data[pos:pos + int(cl)], pos + int(cl)
            assert len(resp.body) == int(cl), "body shorter than Content-Length: %r" % resp
        else:
            assert i == len(methods) - 1, "close-delimited response %d is not the last one" % i
            resp.body, pos = data[pos:], len(data)
        responses.append(resp)
    assert pos == len(data), "unexpected bytes after the responses: %r" % data[pos:pos + 300]
    return responses


def raw_request(method, target, version="HTTP/1.1", headers=(("Host", "pep.test"),), body=b""):
    head = "%s %s %s\r\n" % (method, target, version) + "".join("%s: %s\r\n" % h for h in headers)
    return head.encode("latin-1") + b"\r\n" + body


def raw_one(srv, method, target, version="HTTP/1.1", headers=(("Host", "pep.test"),), body=b""):
    """One request on its own connection (closed after it); returns (Resp, closed, local_port)."""
    if version == "HTTP/1.1":
        headers = tuple(headers) + (("Connection", "close"),)
    data, closed, port = exchange(srv, raw_request(method, target, version, headers, body))
    return parse_responses(data, [method])[0], closed, port


def read_body(resp):
    """(body, error): error is the exception when the body did not arrive complete."""
    try:
        return resp.read(), None
    except (http.client.IncompleteRead, ConnectionError, socket.timeout) as exc:
        return getattr(exc, "partial", b""), exc


def get(srv, path, method="GET", body=None, headers=None):
    """One request with http.client; returns (response with .body, error reading the body)."""
    c = srv.conn()
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        r.body, err = read_body(r)
        return r, err
    finally:
        c.close()


def outcome(srv, path, method="GET"):
    """What the client saw: (status or None, body bytes received, error class name or None)."""
    try:
        r, err = get(srv, path, method=method)
    except (http.client.HTTPException, ConnectionError) as exc:
        return None, b"", type(exc).__name__
    return r.status, r.body, type(err).__name__ if err else None


def get_json(srv, path, **kw):
    r, err = get(srv, path, **kw)
    assert err is None and r.status == 200, "status %s, error %r, body %r" % (r.status, err, r.body[:500])
    return json.loads(r.body.decode("utf-8"))


def wait_for_line(path, prefix, timeout=10.0):
    """Wait until the file at `path` holds a line starting with `prefix`; returns it."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists():
            for line in path.read_text().splitlines():
                if line.startswith(prefix):
                    return line
        time.sleep(0.05)
    content = path.read_text() if path.exists() else "<no file>"
    raise AssertionError("no line starting with %r within %ss; file holds:\n%s" % (prefix, timeout, content))


# ---------------------------------------------------------------- environ

WSGI_KEYS = {
    "wsgi.url_scheme": "http",
    "wsgi.version": "(1, 0)",
    "pep.version_type": "tuple",
    "wsgi.multithread": "False",
    "wsgi.multiprocess": "True",
    "wsgi.run_once": "False",
    "wsgi.input_terminated": "True",
    "pep.input_methods": ["read", "readline", "readlines", "__iter__"],
    "pep.errors_methods": ["write", "writelines", "flush"],
    "pep.non_str_cgi_keys": [],
}

ENVIRON_TARGET = "/caf%C3%A9/%7Euser/a%20b?x=1&q=%C3%A9&sp=a+b&e="
ENVIRON_HEADERS = (
    ("Host", "example.com:8080"),
    ("X_Under", "evil"),  # a name with "_" must not reach the environ at all
    ("X-Under", "good"),
    ("X-Custom", "custom value"),
    ("X-Dup", "one"),
    ("X-Dup", "two"),
    ("Cookie", "a=1"),
    ("Cookie", "b=2"),
    ("X-Latin", "caf\xe9"),  # a latin-1 byte (0xE9) in a header value
    ("Accept", "*/*"),
)


def environ_of(resp):
    assert resp.status == 200, resp
    return json.loads(resp.body.decode("utf-8"))


def test_environ_request_line_and_headers(server, python):
    srv = start_validated(server, python, "pep_environ:validated")
    resp, closed, client_port = raw_one(srv, "GET", ENVIRON_TARGET, headers=ENVIRON_HEADERS)
    env = environ_of(resp)
    check_values(env, dict(WSGI_KEYS, **{
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        # percent-decoded bytes, then decoded as latin-1 (a native str)
        "PATH_INFO": b"/caf\xc3\xa9/~user/a b".decode("latin-1"),
        "QUERY_STRING": "x=1&q=%C3%A9&sp=a+b&e=",
        "RAW_URI": ENVIRON_TARGET,
        "SERVER_NAME": "example.com",
        "SERVER_PORT": "8080",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": str(client_port),
        "HTTP_HOST": "example.com:8080",
        "HTTP_X_CUSTOM": "custom value",
        "HTTP_X_DUP": "one,two",
        "HTTP_COOKIE": "a=1; b=2",
        "HTTP_X_LATIN": "caf\xe9",
        "HTTP_X_UNDER": "good",
        "HTTP_ACCEPT": "*/*",
        "HTTP_CONNECTION": "close",
    }))
    http_keys = sorted(k for k in env if k.startswith("HTTP_"))
    assert http_keys == sorted(["HTTP_HOST", "HTTP_X_CUSTOM", "HTTP_X_DUP", "HTTP_COOKIE", "HTTP_X_LATIN",
                                "HTTP_X_UNDER", "HTTP_ACCEPT", "HTTP_CONNECTION"])
    assert "evil" not in json.dumps(env), "a header whose name has an underscore leaked into the environ"
    for key in ("CONTENT_LENGTH", "CONTENT_TYPE"):
        assert env.get(key, "") == "", "%s=%r for a request without a body" % (key, env[key])
    assert "wsgi.file_wrapper" in env and "wsgi.input" in env and "wsgi.errors" in env
    assert closed
    assert_clean_log(srv)


def test_environ_content_headers_and_methods(server, python):
    srv = start_validated(server, python, "pep_environ:validated")
    # Body with Content-Length (http.client sends it).
    env = get_json(srv, "/submit?a=1", method="POST", body=b"x=1&y=22",
                   headers={"Content-Type": "application/x-www-form-urlencoded"})
    check_values(env, {"REQUEST_METHOD": "POST", "PATH_INFO": "/submit", "QUERY_STRING": "a=1",
                       "CONTENT_TYPE": "application/x-www-form-urlencoded", "CONTENT_LENGTH": "8"})
    assert "HTTP_CONTENT_TYPE" not in env and "HTTP_CONTENT_LENGTH" not in env
    # Chunked body: no CONTENT_LENGTH (wsgi.input_terminated lets the app read to EOF).
    resp, _, _ = raw_one(srv, "PUT", "/chunked", headers=(("Host", "pep.test"), ("Content-Type", "text/plain"),
                                                          ("Transfer-Encoding", "chunked")),
                         body=b"5\r\nhello\r\n0\r\n\r\n")
    env = environ_of(resp)
    check_values(env, {"REQUEST_METHOD": "PUT", "CONTENT_TYPE": "text/plain", "wsgi.input_terminated": "True"})
    assert env.get("CONTENT_LENGTH", "") == "", env.get("CONTENT_LENGTH")
    assert "HTTP_CONTENT_LENGTH" not in env and "HTTP_CONTENT_TYPE" not in env
    # Methods pass through; a path of "/" stays "/" and an empty query is "".
    for method in ("DELETE", "OPTIONS", "PATCH"):
        env = get_json(srv, "/", method=method)
        check_values(env, {"REQUEST_METHOD": method, "PATH_INFO": "/", "QUERY_STRING": "", "SCRIPT_NAME": ""})
    assert_clean_log(srv)


def test_environ_http10_without_host(server, python):
    """HTTP/1.0 request from raw socket bytes, no Host: the listener's address fills in."""
    srv = start_validated(server, python, "pep_environ:validated")
    resp, closed, client_port = raw_one(srv, "GET", "/ten?v=1", version="HTTP/1.0", headers=())
    env = environ_of(resp)
    check_values(env, dict(WSGI_KEYS, **{
        "SERVER_PROTOCOL": "HTTP/1.0",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": str(srv.port),
        "PATH_INFO": "/ten",
        "QUERY_STRING": "v=1",
        "RAW_URI": "/ten?v=1",
        "REMOTE_PORT": str(client_port),
    }))
    assert "HTTP_HOST" not in env
    assert closed, "the server kept an HTTP/1.0 connection open"
    assert_clean_log(srv)


def test_workers_exit_cleanly_with_warnings_as_errors(server, python):
    """Stopping the server after a request: with PYTHONWARNINGS=error (how the
    validated apps run) the worker must not die with a warning or traceback, e.g.
    a ResourceWarning for a file the shim left open."""
    srv = start_validated(server, python, "pep_environ:validated")
    assert get_json(srv, "/")["PATH_INFO"] == "/"
    srv.stop()
    log = srv.log
    assert "exited" in log or "Shutting down" in log, log
    found = [p for p in LOG_PROBLEMS + ("Exception ignored", "ResourceWarning") if p in log]
    assert not found, "server log shows %s:\n%s" % (found, log)


# ---------------------------------------------------------------- wsgi.input

def _lines_body():
    """~430 KiB of lines of varied length, one 150 KiB line across several 64 KiB
    boundaries, empty lines, and no newline at the very end."""
    lines = []
    for i in range(3000):
        lines.append(b"line %d " % i + b"x" * ((i * 37) % 200))
        if i % 97 == 0:
            lines.append(b"")
        if i == 1500:
            lines.append(bytes(range(10)) * 15000 + b"\r\rlong")  # no \n inside
    return b"\n".join(lines) + b"\nno trailing newline"


BODIES = {
    "empty": b"",
    "small": b"alpha\nbeta\n\ngamma\r\nno newline at the end",
    "newline-only": b"\n\n\n",
    "big": _lines_body(),
}

INPUT_CASES = [
    ("read", 0, "empty"), ("read", 0, "small"), ("read", 0, "big"),
    ("read_n", 1, "small"), ("read_n", 7, "small"), ("read_n", 1, "newline-only"), ("read_n", 5, "empty"),
    ("read_n", 1000, "big"), ("read_n", 65536, "big"), ("read_n", 100000, "big"), ("read_n", 1 << 20, "big"),
    ("readline", 0, "small"), ("readline", 0, "newline-only"), ("readline", 0, "big"), ("readline", 0, "empty"),
    ("readline_n", 1, "small"), ("readline_n", 5, "small"), ("readline_n", 3000, "big"),
    ("readline_n", 70000, "big"),
    ("readlines", 0, "small"), ("readlines", 0, "big"),
    ("readlines_hint", 10, "small"), ("readlines_hint", 50000, "big"),
    ("iter", 0, "small"), ("iter", 0, "big"), ("iter", 0, "empty"),
    ("mixed", 3, "small"), ("mixed", 70000, "big"),
]


def _chunks(body, sizes=(1, 10, 1000, 70000, 3)):
    pos, i = 0, 0
    while pos < len(body):
        yield body[pos:pos + sizes[i % len(sizes)]]
        pos += sizes[i % len(sizes)]
        i += 1


def _input_case(srv, mode, arg, body_name, chunked):
    body = BODIES[body_name]
    want = pep_input.summarize(pep_input.consume(io.BytesIO(body), mode, arg))
    want["content_length"] = None if chunked else str(len(body))
    path = "/input?mode=%s&arg=%d" % (mode, arg)
    got = get_json(srv, path, method="POST", body=_chunks(body) if chunked else body)
    if chunked and got.get("content_length") == "":
        got["content_length"] = None  # absent or empty are both fine for a chunked body
    return None if got == want else {"case": (mode, arg, body_name, "chunked" if chunked else "length"),
                                     "got": _short(got), "want": _short(want)}


def _short(report):
    pieces = report["pieces"]
    return dict(report, pieces=pieces if len(pieces) <= 12 else pieces[:6] + ["..."] + pieces[-6:],
                n_pieces=len(pieces))


def test_input_methods_behave_like_bytesio(server, python):
    """read(), read(n), readline(), readline(n), readlines([hint]), iteration and mixes,
    on bodies below and far above 64 KiB, sent with Content-Length and chunked: the
    pieces must be exactly what io.BytesIO returns for the same calls."""
    srv = start(server, python, "pep_input:application")
    failures = [f for chunked in (False, True) for mode, arg, name in INPUT_CASES
                for f in [_input_case(srv, mode, arg, name, chunked)] if f]
    assert failures == [], json.dumps(failures, indent=1)
    assert_clean_log(srv)


def test_input_reads_large_body_in_order(server, python):
    """A 3 MiB body of distinct bytes read with read(n) of odd sizes arrives intact."""
    srv = start(server, python, "pep_input:application")
    body = b"".join(hashlib.sha256(b"%d" % i).digest() for i in range(3 * (1 << 20) // 32))
    got = get_json(srv, "/input?mode=read_n&arg=12345", method="POST", body=body)
    assert sum(got["pieces"]) == len(body)
    assert got["sha256"] == hashlib.sha256(body).hexdigest()
    assert got["pieces"][:-2] == [12345] * (len(got["pieces"]) - 2) and got["pieces"][-1] == 0
    assert_clean_log(srv)


# ---------------------------------------------------------------- response side

def test_write_callable_file_wrapper_and_errors(server, python):
    srv = start_validated(server, python, "pep_response:validated")
    expected = {
        "/write": b"first,second,third,fourth",
        "/write-gen": b"abc",
        "/write-only": b"w0;w1;w2;",
        "/file?block=4096": (APPS / "pep_response.py").read_bytes(),
        "/file?block=1000": (APPS / "pep_response.py").read_bytes(),
    }
    for path, body in expected.items():
        r, err = get(srv, path)
        assert (r.status, err, r.body) == (200, None, body), path
    marker = "PEP-ERRORS-" + uuid.uuid4().hex
    r, err = get(srv, "/errors?marker=" + marker)
    assert (r.status, err, r.body) == (200, None, b"logged")
    for suffix in ("-write", "-lines1", "-lines2"):
        srv.wait_log(marker + suffix)
    assert_clean_log(srv)


def test_response_status_and_headers_from_app(server, python):
    srv = start_validated(server, python, "pep_response:validated")
    r, err = get(srv, "/headers")
    assert (r.status, err, r.body) == (200, None, b"cookies")
    assert r.headers.get_all("Set-Cookie") == ["a=1; Path=/", "b=2"]
    assert r.getheader("X-Latin") == "caf\xe9"
    r, err = get(srv, "/reason")
    assert (r.status, r.reason, r.body) == (200, "Everything Is Fine", b"reason")
    r, err = get(srv, "/empty-chunks")
    assert (r.status, err, r.body) == (201, None, b"")
    r, err = get(srv, "/status?code=404&body=nope")
    assert (r.status, r.body, r.getheader("X-Status-App")) == (404, b"nope", "404")
    assert_clean_log(srv)


def test_start_response_exc_info(server, python):
    srv = start_validated(server, python, "pep_excinfo:validated")
    for path, body in (("/replace", b"replaced"), ("/replace-late", b"replaced late")):
        r, err = get(srv, path)
        assert (r.status, err, r.body) == (503, None, body), path
        assert r.getheader("X-Second") == "1" and r.getheader("X-First") is None, (path, r.getheaders())
    r, err = get(srv, "/reraise")
    assert (r.status, err, r.body) == (200, None, b"partial;reraised:ValueError:original-error;same")
    r, err = get(srv, "/twice")
    assert r.status == 200 and r.body.startswith(b"raised:"), (r.status, r.body)
    assert_clean_log(srv)


def test_app_exception_before_first_block_is_500(server, python):
    srv = start_validated(server, python, "pep_excinfo:validated")
    for path, marker in (("/raise-before-start", "PEP-BOOM-BEFORE-START"),
                         ("/raise-before-body", "PEP-BOOM-BEFORE-BODY")):
        r, err = get(srv, path)
        assert r.status == 500, (path, r.status, r.body)
        assert marker.encode() not in r.body, "the traceback must not reach the client"
        srv.wait_log(r"(?s)Traceback.*RuntimeError: " + marker)
    # The worker keeps serving.
    r, err = get(srv, "/replace")
    assert (r.status, r.body) == (503, b"replaced")


def test_app_exception_after_first_block_cuts_response(server, python):
    """The app yields a block, then raises. The block was handed over, so the status
    line and that block must reach the client (PEP 3333: blocks are not held back),
    then the connection must be cut so that the response cannot look complete.
    Repeated, because a race would only show now and then."""
    srv = start_validated(server, python, "pep_excinfo:validated")
    outcomes = [outcome(srv, "/raise-after-send") for _ in range(100)]
    wrong = [o for o in outcomes if o != (200, b"partial-body;", "IncompleteRead")]
    assert wrong == [], "%d of 100 responses went wrong: %r" % (len(wrong), sorted(set(wrong)))
    srv.wait_log(r"(?s)Traceback.*RuntimeError: PEP-BOOM-AFTER-SEND")
    r, err = get(srv, "/replace")
    assert (r.status, r.body) == (503, b"replaced")


# ---------------------------------------------------------------- close()

def close_server(server, python, tmp_path):
    log = tmp_path / "close.log"
    return start(server, python, "pep_close:application", env={"PEP_CLOSE_LOG": str(log)}), log


def test_close_called(server, python, tmp_path):
    srv, log = close_server(server, python, tmp_path)
    r, err = get(srv, "/?tag=normal&n=3")
    assert (r.status, err, r.body) == (200, None, b"0:....1:....2:....")
    assert wait_for_line(log, "normal closed") == "normal closed produced=3"

    r, err = get(srv, "/?tag=list&kind=list&n=2")
    assert (r.status, err, r.body) == (200, None, b"item0;item1;")
    assert wait_for_line(log, "list closed") == "list closed produced=2"

    r, err = get(srv, "/?tag=head&n=2", method="HEAD")
    assert (r.status, r.body) == (200, b"")
    wait_for_line(log, "head closed")

    r, err = get(srv, "/?tag=fail0&fail=0")  # raises before the first chunk
    assert r.status == 500
    assert wait_for_line(log, "fail0 closed") == "fail0 closed produced=0"

    # Raises after the first chunk went out: the response must not look complete
    # (what exactly the client sees is test_app_exceptions' business).
    status, body, error = outcome(srv, "/?tag=fail1&n=3&fail=1")
    assert error is not None, (status, body)
    assert wait_for_line(log, "fail1 closed") == "fail1 closed produced=1"
    srv.wait_log("PEP-CLOSE-FAIL fail1 at 1")


def test_close_called_when_client_disconnects(server, python, tmp_path):
    """The client leaves in the middle of a long streamed response: the app's
    iterable must be closed soon after (not only once it would have ended, 60 s
    later), and the worker must be free for the next request."""
    srv, log = close_server(server, python, tmp_path)
    s = socket.create_connection((srv.host, srv.port), timeout=10)
    s.sendall(raw_request("GET", "/?tag=gone&n=3000&size=16384&delay=0.02"))
    received = b""
    while len(received) < 100000:
        chunk = s.recv(65536)
        assert chunk, "server closed early: %r" % received[:300]
        received += chunk
    assert received.startswith(b"HTTP/1.1 200")
    s.close()
    line = wait_for_line(log, "gone closed", timeout=10)
    produced = int(line.split("produced=")[1])
    assert produced < 3000
    t0 = time.time()
    r, err = get(srv, "/?tag=after&n=1")
    assert (r.status, err, r.body) == (200, None, b"0:....")
    assert time.time() - t0 < 5
    wait_for_line(log, "after closed")


# ---------------------------------------------------------------- HTTP framing

@pytest.fixture
def response_app(server, default_python):
    return server("pep_response:validated", python=default_python, env=VALIDATE_ENV)


def test_head_204_304_have_no_body(response_app):
    """Pipelined on one connection: any body byte after HEAD, 204 or 304 would
    be parsed as the next status line and fail."""
    srv = response_app
    requests = [("HEAD", "/cl"), ("HEAD", "/gen?n=3"), ("GET", "/status?code=204&body=must-not-be-sent"),
                ("GET", "/status?code=304&body=must-not-be-sent"), ("HEAD", "/status?code=200&body=abc"),
                ("GET", "/status?code=200&body=last")]
    data = b"".join(raw_request(m, p, headers=(("Host", "pep.test"),) + ((("Connection", "close"),)
                                                                       if i == len(requests) - 1 else ()))
                    for i, (m, p) in enumerate(requests))
    out, closed, _ = exchange(srv, data)
    head_cl, head_gen, r204, r304, head_list, last = parse_responses(out, [m for m, _ in requests])
    assert [r.status for r in (head_cl, head_gen, r204, r304, head_list, last)] == [200, 200, 204, 304, 200, 200]
    assert head_cl.header("content-length") == "11"
    assert r204.header("content-length") is None and r204.header("transfer-encoding") is None, r204
    assert r304.header("transfer-encoding") is None and r304.header("etag") == '"pep-etag"', r304
    assert r204.header("x-status-app") == "204"
    assert last.body == b"last"
    assert closed
    assert_clean_log(srv)


def test_app_content_length_is_respected(response_app):
    for version in ("HTTP/1.1", "HTTP/1.0"):
        r, closed, _ = raw_one(response_app, "GET", "/cl", version=version)
        assert (r.status, r.body, r.header("content-length"), r.header("transfer-encoding")) == \
            (200, b"hello world", "11", None), (version, r)
        assert closed
    assert_clean_log(response_app)


def test_no_content_length_chunked_on_http11(response_app):
    r, closed, _ = raw_one(response_app, "GET", "/gen?n=5")
    assert r.status == 200 and r.header("transfer-encoding") == "chunked", r
    assert r.header("content-length") is None
    assert r.body == b"chunk-0;chunk-1;chunk-2;chunk-3;chunk-4;"
    assert_clean_log(response_app)


def test_no_content_length_close_delimited_on_http10(response_app):
    r, closed, _ = raw_one(response_app, "GET", "/gen?n=5&delay=0.01", version="HTTP/1.0", headers=())
    assert r.status == 200 and r.header("transfer-encoding") is None, r
    assert r.body == b"chunk-0;chunk-1;chunk-2;chunk-3;chunk-4;"
    assert closed, "an HTTP/1.0 response without Content-Length must end with the connection"
    assert_clean_log(response_app)


def test_keep_alive_serves_many_requests_on_one_connection(response_app):
    srv = response_app
    c = srv.conn()
    sequence = [
        ("GET", "/gen?n=3", None, 200, b"chunk-0;chunk-1;chunk-2;"),
        ("POST", "/echo", b"posted body" * 1000, 200, b"posted body" * 1000),
        ("HEAD", "/cl", None, 200, b""),
        ("GET", "/status?code=204", None, 204, b""),
        ("GET", "/cl", None, 200, b"hello world"),
        ("POST", "/echo", iter([b"chunked ", b"upload"]), 200, b"chunked upload"),
        ("GET", "/write", None, 200, b"first,second,third,fourth"),
    ]
    sockets = []
    try:
        for method, path, body, status, want in sequence:
            c.request(method, path, body=body)
            r = c.getresponse()
            got = r.read()
            assert (r.status, got) == (status, want), (method, path)
            assert not r.will_close, "server asked to close after %s %s" % (method, path)
            sockets.append(c.sock)
        local_port = c.sock.getsockname()[1]
        c.request("GET", "/environ")
        env = json.loads(c.getresponse().read())
    finally:
        c.close()
    assert all(s is sockets[0] for s in sockets)
    assert env["REMOTE_PORT"] == str(local_port), "the last request came on another connection"
    assert_clean_log(srv)

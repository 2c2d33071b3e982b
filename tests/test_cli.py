"""The command line: usage errors, APP forms, binds, the workers' environment,
interpreter choice, and the error/access logs.

`run_gw` runs the binary to completion with stdout and stderr kept apart; it is
also what tests/test_failures.py uses for apps that cannot boot.
"""

import http.client
import json
import os
import re
import socket
import subprocess
import time
from collections import namedtuple
from datetime import datetime, timezone

import pytest

from conftest import APPS, BINARY, PYENV_PYTHONS, VENV_PYTHON, Server

Run = namedtuple("Run", "code stdout stderr seconds")


def run_gw(*args, timeout=10, cwd=APPS, env=None):
    """Run rwsgi-gw until it exits; a server that is still up after `timeout`
    seconds is killed and the test fails."""
    started = time.monotonic()
    proc = subprocess.Popen([str(BINARY)] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, cwd=str(cwd), env=env, text=True, errors="replace",
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, err = proc.communicate()
        raise AssertionError("rwsgi-gw %s still running after %ss; stderr:\n%s" % (args, timeout, err))
    return Run(proc.returncode, out, err, time.monotonic() - started)


def get_json(srv, path="/", conn=None):
    c = conn or srv.conn()
    c.request("GET", path)
    r = c.getresponse()
    body = r.read()
    assert r.status == 200, (r.status, body, srv.log)
    return json.loads(body)


def listening(log):
    """Every 'Listening at:' line: [(address, pid)]."""
    return [(m.group(1), int(m.group(2))) for m in re.finditer(r"Listening at: (\S+) \((\d+)\)", log)]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_file_text(path, pattern, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        m = re.search(pattern, text)
        if m:
            return m
        time.sleep(0.02)
    raise AssertionError("%s never matched %r:\n%s" % (path, pattern, path.read_text() if path.exists() else ""))


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=10):
        http.client.HTTPConnection.__init__(self, "localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def connection_for(address, timeout=10):
    """An HTTPConnection for an address as the log prints it."""
    if address.startswith("unix:"):
        return UnixHTTPConnection(address[len("unix:"):], timeout)
    m = re.fullmatch(r"http://(\[[^\]]+\]|[^:]+):(\d+)", address)
    assert m, address
    return http.client.HTTPConnection(m.group(1).strip("[]"), int(m.group(2)), timeout=timeout)


@pytest.fixture
def launch(tmp_path):
    """Start the binary with exactly these arguments (no defaults added); the
    environment is the test's own (use monkeypatch)."""
    started = []

    def start(*args, wait=True):
        assert BINARY.exists(), "build the binary first: cargo build --release"
        srv = Server([str(BINARY)] + list(args), tmp_path / ("launch%d.log" % len(started)), cwd=str(tmp_path))
        started.append(srv)
        return srv.wait_listening() if wait else srv

    yield start
    for srv in started:
        srv.stop()


# ------------------------------------------------------------------ usage errors

USAGE_ERRORS = [
    # (id, arguments, text the sentence must quote)
    ("unknown-flag", ["--no-such-flag", "cli_forms"], "--no-such-flag"),
    ("workers-0", ["--workers", "0", "cli_forms"], "0"),
    ("workers-abc", ["--workers", "abc", "cli_forms"], "abc"),
    ("workers-negative", ["-w", "-1", "cli_forms"], "-1"),
    ("workers-too-many", ["--workers", "100000", "cli_forms"], "100000"),
    ("bind-nohost", ["--bind", "nohost", "cli_forms"], "nohost"),
    ("bind-port-too-big", ["--bind", "host:99999", "cli_forms"], "99999"),
    ("bind-port-missing", ["--bind", "127.0.0.1:", "cli_forms"], "127.0.0.1:"),
    ("bind-port-not-a-number", ["-b", "127.0.0.1:http80", "cli_forms"], "http80"),
    ("bind-unterminated-ipv6", ["--bind", "[::1:65001", "cli_forms"], "[::1:65001"),
    ("bind-empty-unix", ["--bind", "unix:", "cli_forms"], "unix:"),
    ("app-three-parts", ["a:b:c"], "a:b:c"),
    ("app-no-module", [":x"], ":x"),
    ("app-no-callable", ["mod:"], "mod:"),
    ("app-unclosed-call", ["mod:f("], "mod:f("),
    ("app-bad-module-name", ["1mod:app"], "1mod:app"),
    ("app-missing", [], "APP"),
    ("app-twice", ["cli_forms", "cli_forms:other"], "cli_forms:other"),
    ("env-no-equals", ["--env", "NOEQUALS", "cli_forms"], "NOEQUALS"),
    ("env-empty-key", ["-e", "=value", "cli_forms"], "=value"),
    ("python-missing", ["--python", "/nonexistent/bin/python3", "cli_forms"], "/nonexistent/bin/python3"),
    ("python-not-executable", ["--python", str(APPS / "cli_forms.py"), "cli_forms"], str(APPS / "cli_forms.py")),
    ("chdir-missing", ["--chdir", "/nonexistent/dir", "cli_forms"], "/nonexistent/dir"),
    ("chdir-is-a-file", ["--chdir", str(APPS / "cli_forms.py"), "cli_forms"], str(APPS / "cli_forms.py")),
    ("log-level-unknown", ["--log-level", "loud", "cli_forms"], "loud"),
    ("keep-alive-negative", ["--keep-alive=-1", "cli_forms"], "-1"),
    ("keep-alive-not-a-number", ["--keep-alive", "long", "cli_forms"], "long"),
    ("header-timeout-not-a-number", ["--header-timeout", "soon", "cli_forms"], "soon"),
    # --private-tmp would hide these from the workers (the python, too, when the checkout is under /tmp).
    ("private-tmp-hides-chdir", ["--private-tmp", "--chdir", "/tmp", "cli_forms"], "/tmp"),
    ("strict-hides-pythonpath", ["--sandbox", "strict", "--pythonpath", "/tmp", "cli_forms"], "/tmp"),
    ("private-tmp-hides-sys-path", ["--private-tmp", "--python", os.path.realpath(VENV_PYTHON), "--chdir", "/",
                                    "--env", "PYTHONPATH=/tmp", "cli_forms"], "/tmp on "),
]


@pytest.mark.parametrize("args,quoted", [u[1:] for u in USAGE_ERRORS], ids=[u[0] for u in USAGE_ERRORS])
def test_usage_error_is_one_sentence_and_exit_2(args, quoted):
    result = run_gw(*args, timeout=3)
    assert result.code == 2, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    sentence = lines[0]
    assert sentence.startswith("rwsgi-gw: "), sentence
    assert sentence.rstrip().endswith("."), sentence
    assert quoted in sentence, sentence
    assert "Listening" not in result.stderr and "Booting" not in result.stderr
    assert result.stdout == ""
    assert result.seconds < 2, result


def test_help_names_every_option():
    result = run_gw("--help")
    assert result.code == 0, result
    for flag in ["-b, --bind", "-w, --workers", "--python", "--chdir", "--pythonpath", "-e, --env",
                 "--access-logfile", "--error-logfile", "--log-level", "APP"]:
        assert flag in result.stdout, flag


# ------------------------------------------------------------------ APP forms

@pytest.mark.parametrize("app,expected", [
    ("cli_forms", "application"),
    ("cli_forms:application", "application"),
    ("cli_forms:other", "other"),
    ("cli_forms:make()", "factory"),
    ("cli_forms:make('custom')", "custom"),
])
def test_app_forms(server, app, expected):
    srv = server(app)
    conn = srv.conn()
    for _ in range(3):
        info = get_json(srv, conn=conn)
        assert info["callable"] == expected
        # A factory runs once per worker, not once per request.
        assert info["factory_calls"] == (0 if expected in ("application", "other") else 1)


def test_app_in_a_package_under_chdir(server, tmp_path):
    pkg = tmp_path / "project" / "cli_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "wsgi.py").write_text(
        "def application(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [b'served from cli_pkg.wsgi']\n")
    srv = server("cli_pkg.wsgi:application", chdir=tmp_path / "project")
    assert srv.request("GET", "/")[2] == b"served from cli_pkg.wsgi"


def test_chdir_is_the_workers_cwd_and_first_on_sys_path(server):
    info = get_json(server("cli_forms"))
    assert info["cwd"] == str(APPS)
    assert info["path"][0] == str(APPS)


def test_pythonpath_adds_every_comma_separated_dir(server, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    (second / "cli_helper_mod.py").write_text("WORD = 'from the second dir'\n")
    (first / "cli_pp_app.py").write_text(
        "import cli_helper_mod\n"
        "def application(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [cli_helper_mod.WORD.encode()]\n")
    srv = server("cli_pp_app", "--pythonpath", "%s,%s" % (first, second))
    assert srv.request("GET", "/")[:3:2] == (200, b"from the second dir")


# ------------------------------------------------------------------ environment

def test_env_flags_reach_the_app_and_nothing_else_leaks(server, monkeypatch):
    monkeypatch.setenv("CLI_MASTER_SECRET", "must-not-leak")
    monkeypatch.setenv("DATABASE_URL", "postgres://master-only")
    srv = server("cli_forms", "-e", "CLI_SHORT=short flag", "--env", "CLI_EMPTY=",
                 env={"CLI_GIVEN": "yes", "CLI_WITH_EQUALS": "a=b=c", "CLI_SPACES": " two words "})
    env = get_json(srv)["env"]
    assert env["CLI_GIVEN"] == "yes"
    assert env["CLI_WITH_EQUALS"] == "a=b=c"
    assert env["CLI_SPACES"] == " two words "
    assert env["CLI_SHORT"] == "short flag"
    assert env["CLI_EMPTY"] == ""
    assert "CLI_MASTER_SECRET" not in env
    assert "DATABASE_URL" not in env
    assert env.get("PATH") == os.environ["PATH"]


# ------------------------------------------------------------------ binds

def test_tcp_listening_line_names_the_master_pid(server):
    srv = server("cli_forms")
    [(address, pid)] = listening(srv.log)
    assert address == "http://127.0.0.1:%d" % srv.port
    assert pid == srv.proc.pid
    info = get_json(srv)
    assert info["remote_addr"] == "127.0.0.1"


def test_unix_socket_bind(server, tmp_path):
    path = str(tmp_path / "gw.sock")
    # A stale socket file left by a dead server is replaced.
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()
    srv = server("cli_forms", bind="unix:" + path)
    assert listening(srv.log) == [("unix:" + path, srv.proc.pid)]
    conn = UnixHTTPConnection(path)
    for _ in range(3):
        conn.request("GET", "/")
        r = conn.getresponse()
        assert r.status == 200
        info = json.loads(r.read())
        assert info["callable"] == "application"
    assert info["remote_addr"] == ""


def test_ipv6_loopback_bind(server):
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("this machine has no ::1")
    srv = server("cli_forms", bind="[::1]:0")
    [(address, _)] = listening(srv.log)
    assert re.fullmatch(r"http://\[::1\]:\d+", address), address
    assert srv.host == "::1"
    assert get_json(srv)["remote_addr"] == "::1"


def test_several_binds_all_serve(server, tmp_path):
    path = str(tmp_path / "several.sock")
    srv = server("cli_forms", "--bind", "127.0.0.1:0", "-b", "unix:" + path)
    addresses = [a for a, _ in listening(srv.log)]
    assert len(addresses) == 3, srv.log
    assert sum(a.startswith("http://127.0.0.1:") for a in addresses) == 2
    assert "unix:" + path in addresses
    assert len(set(addresses)) == 3
    for address in addresses:
        conn = connection_for(address)
        conn.request("GET", "/")
        r = conn.getresponse()
        assert r.status == 200, address
        assert json.loads(r.read())["callable"] == "application"
        conn.close()


# ------------------------------------------------------------------ workers and interpreter choice

def test_boot_lines_name_every_worker(launch, default_python):
    srv = launch("-b", "127.0.0.1:0", "-w", "3", "--python", default_python, "--chdir", str(APPS), "cli_forms")
    ready = [int(p) for p in re.findall(r"Worker (\d+) ready: Python \d+\.\d+\.\d+, codec (?:msgpack|pure)",
                                        srv.wait_log(r"(Worker \d+ ready[\s\S]*){3}").group(0))]
    booted = [int(p) for p in re.findall(r"Booting worker with pid: (\d+)", srv.log)]
    assert len(booted) == 3 and sorted(booted) == sorted(ready)
    assert sorted(srv.worker_pids()) == sorted(booted)
    seen = {get_json(srv)["pid"] for _ in range(10)}
    assert seen <= set(booted)


def test_web_concurrency_is_the_default_worker_count(launch, monkeypatch):
    monkeypatch.setenv("WEB_CONCURRENCY", "2")
    srv = launch("--bind", "127.0.0.1:0", "--python", str(VENV_PYTHON), "--chdir", str(APPS), "cli_forms")
    srv.wait_log(r"(Worker \d+ ready[\s\S]*){2}")
    time.sleep(0.3)
    assert len(re.findall(r"Booting worker with pid", srv.log)) == 2
    assert len(srv.worker_pids()) == 2


@pytest.mark.skipif(not VENV_PYTHON.exists(), reason="no .venv")
def test_default_python_is_the_virtual_env(launch, monkeypatch):
    monkeypatch.setenv("VIRTUAL_ENV", str(VENV_PYTHON.parent.parent))
    srv = launch("--bind", "127.0.0.1:0", "--chdir", str(APPS), "cli_forms")
    info = get_json(srv)
    assert os.path.realpath(info["prefix"]) == os.path.realpath(str(VENV_PYTHON.parent.parent))


@pytest.mark.skipif(not PYENV_PYTHONS, reason="no pyenv interpreter to put on PATH")
def test_default_python_without_virtual_env_is_python3_on_path(launch, monkeypatch):
    version, path = sorted(PYENV_PYTHONS.items())[0]
    monkeypatch.delenv("VIRTUAL_ENV", raising=False)
    monkeypatch.setenv("PATH", os.path.dirname(path) + os.pathsep + os.environ["PATH"])
    srv = launch("--bind", "127.0.0.1:0", "--chdir", str(APPS), "cli_forms")
    info = get_json(srv)
    assert info["version"].startswith(version + "."), info["version"]


# ------------------------------------------------------------------ logs

ACCESS_LINE = (r'127\.0\.0\.1 - - \[(?P<time>\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d \+0000)\] '
               r'"(?P<request>[^"]*)" (?P<status>\d{3}) (?P<size>\d+|-) "(?P<referer>[^"]*)" "(?P<agent>[^"]*)"')


def send_access_log_requests(port):
    """Three requests whose access-log lines the tests know; returns their bodies' sizes."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    sizes = []
    for method, target, headers in [
        ("GET", "/some/path?x=1&y=%20", {"User-Agent": "cli-test/1.0", "Referer": "http://ref.example/page"}),
        ("GET", "/plain", {}),
        ("POST", "/post", {"User-Agent": "poster"}),
    ]:
        conn.request(method, target, body=b"abc" if method == "POST" else None, headers=headers)
        r = conn.getresponse()
        sizes.append(len(r.read()))
        assert r.status == 200
    conn.close()
    return sizes


def check_access_lines(text, sizes):
    lines = text.splitlines()
    assert len(lines) == 3, text
    expected = [
        ("GET /some/path?x=1&y=%20 HTTP/1.1", "http://ref.example/page", "cli-test/1.0"),
        ("GET /plain HTTP/1.1", "-", "-"),
        ("POST /post HTTP/1.1", "-", "poster"),
    ]
    for line, size, (request, referer, agent) in zip(lines, sizes, expected):
        m = re.fullmatch(ACCESS_LINE, line)
        assert m, line
        assert (m["request"], m["status"], m["size"], m["referer"], m["agent"]) == (
            request, "200", str(size), referer, agent), line
        when = datetime.strptime(m["time"], "%d/%b/%Y:%H:%M:%S %z")
        assert abs((datetime.now(timezone.utc) - when).total_seconds()) < 120, line


def test_access_and_error_log_files(server, tmp_path):
    access, errors = tmp_path / "access.log", tmp_path / "error.log"
    srv = server("cli_forms", "--access-logfile", str(access), "--error-logfile", str(errors), wait=False)
    port = int(wait_file_text(errors, r"Listening at: http://127\.0\.0\.1:(\d+)").group(1))
    wait_file_text(errors, r"Worker \d+ ready")
    sizes = send_access_log_requests(port)
    wait_file_text(access, r"(\n[^\n]*){3}")
    check_access_lines(access.read_text(), sizes)
    # Nothing went to the terminal: the error log file got it all.
    assert "Listening at" not in srv.log and "Booting worker" not in srv.log
    assert "Booting worker with pid" in errors.read_text()


def test_access_log_dash_is_stdout(server, tmp_path):
    errors = tmp_path / "error.log"
    srv = server("cli_forms", "--access-logfile", "-", "--error-logfile", str(errors), wait=False)
    # srv.log holds the process's stdout (stderr too, but it is redirected to the file).
    port = int(wait_file_text(errors, r"Listening at: http://127\.0\.0\.1:(\d+)").group(1))
    sizes = send_access_log_requests(port)
    srv.wait_log(r"(\n[^\n]*){3}")
    check_access_lines(srv.log, sizes)


def test_log_level_warning_keeps_errors_and_drops_info(launch, tmp_path):
    port = free_port()
    srv = launch("--bind", "127.0.0.1:%d" % port, "--python", str(VENV_PYTHON), "--chdir", str(APPS),
                 "--log-level", "warning", "cli_forms", wait=False)
    conn = None
    deadline = time.time() + 10
    while conn is None:
        try:
            conn = socket.create_connection(("127.0.0.1", port), timeout=1)
        except OSError:
            assert time.time() < deadline and srv.proc.poll() is None, srv.log
            time.sleep(0.05)
    conn.close()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/raise")
    assert c.getresponse().status == 500
    srv.wait_log(r"Traceback[\s\S]*ValueError: CLI-FORMS-RAISED")
    assert "[INFO]" not in srv.log
    assert "Listening at" not in srv.log and "Booting worker" not in srv.log

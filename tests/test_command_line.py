"""The command line: APP forms, binds, environment, logs, and one-sentence usage errors."""

import http.client
import json
import os
import socket
import subprocess
import time

import pytest

from conftest import APPS, BINARY


def run_cli(*args, env=None, timeout=10):
    return subprocess.run([str(BINARY)] + list(args), capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=str(APPS), stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("args", [
    ["--no-such-flag", "cli_app"],
    ["--workers", "0", "cli_app"],
    ["--workers", "abc", "cli_app"],
    ["--bind", "host:99999", "cli_app"],
    ["--bind", "unix:", "cli_app"],
    ["--bind", "no.such.host.invalid:80", "cli_app"],
    ["a:b:c"],
    [":x"],
    ["mod:"],
    ["mod:f("],
    ["--env", "NOEQUALS", "cli_app"],
    ["--python", "/nonexistent/python", "cli_app"],
    ["--chdir", "/nonexistent/dir", "cli_app"],
    ["--timeout", "-1", "cli_app"],
    ["--log-level", "loud", "cli_app"],
    [],
])
def test_usage_errors_are_one_sentence_and_exit_2(args):
    result = run_cli(*args)
    assert result.returncode == 2, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("rwsgi-gw: ")
    assert result.stdout == ""


def test_help_exits_0():
    result = run_cli("--help")
    assert result.returncode == 0
    for flag in ["--bind", "--workers", "--python", "--chdir", "--pythonpath", "--env", "--access-logfile",
                 "--error-logfile", "--log-level", "--timeout", "--threads"]:
        assert flag in result.stdout


@pytest.mark.parametrize("app,expected", [
    ("cli_app", "application"),
    ("cli_app:other", "other"),
    ("cli_app:make()", "made"),
    ("cli_app:make('hi')", "hi"),
])
def test_app_forms(server, app, expected):
    srv = server(app)
    status, _, body = srv.request("GET", "/")
    assert status == 200
    assert json.loads(body)["callable"] == expected


def test_env_is_clean_plus_flags(server, monkeypatch):
    monkeypatch.setenv("CLI_SECRET_FROM_MASTER", "leak")
    srv = server("cli_app", env={"CLI_GIVEN": "yes=really"})
    env = json.loads(srv.request("GET", "/")[2])["env"]
    assert env["CLI_GIVEN"] == "yes=really"
    assert "CLI_SECRET_FROM_MASTER" not in env
    assert "RWSGI_GW_SHIM" not in env
    assert "PATH" in env


def test_chdir_and_pythonpath(server, tmp_path):
    srv = server("cli_extra_mod", "--pythonpath", str(APPS / "cli_extra"))
    assert srv.request("GET", "/")[2] == b"from --pythonpath"
    srv = server("cli_app")
    info = json.loads(srv.request("GET", "/")[2])
    assert info["cwd"] == str(APPS)
    assert info["path"][0] == str(APPS)


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path):
        http.client.HTTPConnection.__init__(self, "localhost", timeout=10)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.unix_path)


def test_unix_socket_and_several_binds(server, tmp_path):
    path = str(tmp_path / "app.sock")
    srv = server("cli_app", "--bind", "unix:" + path)
    srv.wait_log(r"Listening at: unix:" + path)
    conn = UnixConnection(path)
    conn.request("GET", "/")
    response = conn.getresponse()
    assert response.status == 200
    assert json.loads(response.read())["callable"] == "application"
    assert srv.request("GET", "/")[0] == 200
    srv.stop()
    assert not os.path.exists(path)


def test_ipv6_bind(server):
    try:
        socket.socket(socket.AF_INET6).bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    srv = server("cli_app", bind="[::1]:0")
    assert srv.host == "::1"
    assert srv.request("GET", "/")[0] == 200


def test_log_files_and_access_log_format(server, tmp_path):
    access, errors = tmp_path / "access.log", tmp_path / "error.log"
    srv = server("cli_app", "--access-logfile", str(access), "--error-logfile", str(errors), wait=False)
    deadline = time.time() + 10
    while "Listening at" not in (errors.read_text() if errors.exists() else ""):
        assert time.time() < deadline
        time.sleep(0.05)
    port = int(errors.read_text().split("Listening at: http://127.0.0.1:")[1].split()[0])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/some/path?x=1", headers={"User-Agent": "cli-test/1.0", "Referer": "http://ref/"})
    body = conn.getresponse().read()
    conn.close()
    deadline = time.time() + 5
    while not access.read_text():
        assert time.time() < deadline
        time.sleep(0.05)
    line = access.read_text().splitlines()[0]
    import re
    assert re.fullmatch(r'127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000\] '
                        r'"GET /some/path\?x=1 HTTP/1\.1" 200 %d "http://ref/" "cli-test/1\.0"' % len(body), line), line
    assert "Worker" in errors.read_text()


def test_log_level_warning_hides_info(server):
    srv = server("cli_app", "--log-level", "warning", wait=False)
    time.sleep(1.5)
    assert srv.proc.poll() is None
    assert "Booting worker" not in srv.log


def test_boot_traceback_reaches_stderr_even_with_an_error_logfile(tmp_path):
    result = run_cli("--bind", "127.0.0.1:0", "--error-logfile", str(tmp_path / "e.log"), "iso_import_error")
    assert result.returncode == 3
    assert "ISO-IMPORT-FAILED" in result.stderr
    assert "ISO-IMPORT-FAILED" in (tmp_path / "e.log").read_text()

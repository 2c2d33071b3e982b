"""Integration harness: the real rwsgi-gw binary, real interpreters, real sockets.

`server(app, ...)` starts the binary on an ephemeral port with the test apps in
`tests/apps/` and returns a `Server` once it listens; every server is stopped at
the end of its test. `PYTHONS` is the list of interpreters the suite runs the
apps on: every CPython 3.8-3.13 found under pyenv, plus the project venv's
python (which has the msgpack C extension) and Debian's pypy3 when installed.
Interpreters that are missing are named in the session header.
"""

import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
APPS = ROOT / "tests" / "apps"
BINARY = Path(os.environ.get("RWSGI_GW_BIN", ROOT / "target" / "release" / "rwsgi-gw"))
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"

WANTED = ["3.8", "3.9", "3.10", "3.11", "3.12", "3.13"]


def _pyenv_root():
    root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    if shutil.which("pyenv"):
        try:
            root = subprocess.check_output(["pyenv", "root"], text=True).strip()
        except (OSError, subprocess.CalledProcessError):
            pass
    return Path(root)


def _find_pythons():
    found, skipped = {}, []
    versions = _pyenv_root() / "versions"
    for minor in WANTED:
        candidates = sorted(versions.glob(minor + ".*")) if versions.is_dir() else []
        candidates = [c / "bin" / "python3" for c in candidates if re.fullmatch(r"\d+\.\d+\.\d+", c.name)]
        candidates = [c for c in candidates if c.exists()]
        if candidates:
            found[minor] = str(candidates[-1])
        else:
            skipped.append(minor)
    return found, skipped


PYENV_PYTHONS, SKIPPED_PYTHONS = _find_pythons()
# The suite's interpreters: (id, path, codec the shim should pick).
PYTHONS = [("cpython" + v, PYENV_PYTHONS[v], "pure") for v in WANTED if v in PYENV_PYTHONS]
PYPY = shutil.which("pypy3")
if PYPY:
    PYTHONS.append(("pypy3", PYPY, "pure"))
else:
    SKIPPED_PYTHONS.append("pypy3")
if VENV_PYTHON.exists():
    PYTHONS.append(("venv-msgpack", str(VENV_PYTHON), "msgpack"))


def pytest_report_header(config):
    lines = ["rwsgi-gw binary: %s" % BINARY]
    lines.append("worker pythons: " + ", ".join("%s=%s" % (i, p) for i, p, _ in PYTHONS))
    if SKIPPED_PYTHONS:
        lines.append("skipped interpreters (not installed): " + ", ".join(SKIPPED_PYTHONS))
    else:
        lines.append("skipped interpreters: none")
    return lines


@pytest.fixture(params=PYTHONS, ids=[p[0] for p in PYTHONS])
def python(request):
    """Each test using this runs once per interpreter; yields (path, codec)."""
    _, path, codec = request.param
    return path, codec


@pytest.fixture
def default_python():
    """The venv's python when present (msgpack codec), else the first pyenv one."""
    return PYTHONS[-1][1]


class Server:
    def __init__(self, args, log_path, cwd):
        self.args = args
        self.log_path = log_path
        self.log_file = open(log_path, "wb")
        self.proc = subprocess.Popen(
            args,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            start_new_session=True,
        )
        self.host = None
        self.port = None
        self.unix = None

    @property
    def log(self):
        return Path(self.log_path).read_text(errors="replace")

    def wait_listening(self, timeout=15):
        deadline = time.time() + timeout
        while time.time() < deadline:
            m = re.search(r"Listening at: http://(\[[^\]]+\]|[^:\s]+):(\d+)", self.log)
            u = re.search(r"Listening at: unix:(\S+)", self.log)
            if m or u:
                if m:
                    self.host, self.port = m.group(1).strip("[]"), int(m.group(2))
                if u:
                    self.unix = u.group(1)
                return self
            if self.proc.poll() is not None:
                raise AssertionError("rwsgi-gw exited with %s before listening:\n%s" % (self.proc.returncode, self.log))
            time.sleep(0.02)
        raise AssertionError("rwsgi-gw did not listen within %ss:\n%s" % (timeout, self.log))

    def wait_log(self, pattern, timeout=10):
        deadline = time.time() + timeout
        while time.time() < deadline:
            m = re.search(pattern, self.log)
            if m:
                return m
            time.sleep(0.02)
        raise AssertionError("log never matched %r:\n%s" % (pattern, self.log))

    def conn(self, timeout=10):
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def request(self, method="GET", path="/", body=None, headers=None, timeout=10):
        """One request on a fresh connection; returns (status, headers dict, body bytes)."""
        c = self.conn(timeout)
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            return r.status, dict((k.lower(), v) for k, v in r.getheaders()), r.read()
        finally:
            c.close()

    def raw(self, data, timeout=10):
        """Send raw bytes, read until the server closes; returns all bytes received."""
        return self.exchange(data, timeout)[0]

    def exchange(self, data, timeout=10):
        """Send raw bytes; returns (bytes received, whether the server closed
        the connection rather than going quiet for `timeout` seconds)."""
        s = socket.create_connection((self.host, self.port), timeout=timeout)
        try:
            s.sendall(data)
            out = b""
            while True:
                try:
                    chunk = s.recv(65536)
                except socket.timeout:
                    return out, False
                if not chunk:
                    return out, True
                out += chunk
        finally:
            s.close()

    def worker_pids(self):
        """Pids of the live worker processes (children of the master)."""
        try:
            out = subprocess.check_output(["pgrep", "-P", str(self.proc.pid)], text=True)
        except subprocess.CalledProcessError:
            return []
        return [int(p) for p in out.split()]

    def stop(self, sig=signal.SIGTERM, timeout=15):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.log_file.close()
        return self.proc.returncode


@pytest.fixture
def server(tmp_path, default_python):
    """server(app, *extra_args, python=None, codec=None, workers=1, env=None, wait=True, bind=..., chdir=APPS)"""
    started = []

    def start(app, *extra, python=None, codec=None, workers=1, env=None, wait=True, bind="127.0.0.1:0", chdir=APPS):
        assert BINARY.exists(), "build the binary first: cargo build --release"
        args = [str(BINARY), "--bind", bind, "--workers", str(workers), "--python", python or default_python,
                "--chdir", str(chdir)]
        if codec == "pure":
            args += ["--env", "RWSGI_SHIM_CODEC=pure"]
        for k, v in (env or {}).items():
            args += ["--env", "%s=%s" % (k, v)]
        args += list(extra) + [app]
        srv = Server(args, tmp_path / ("server%d.log" % len(started)), cwd=str(tmp_path))
        started.append(srv)
        return srv.wait_listening() if wait else srv

    yield start
    for srv in started:
        srv.stop()

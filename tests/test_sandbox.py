"""Each worker gets only what it needs: always-on isolation, and the options
that take more away, each with an app that tries to break it."""

import os
import re
import shutil
import subprocess
import tempfile

import pytest

from conftest import APPS, BINARY

SYSTEM_PYTHON = "/usr/bin/python3"
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
needs_system_python = pytest.mark.skipif(not os.path.exists(SYSTEM_PYTHON),
                                         reason="needs %s, readable by other users" % SYSTEM_PYTHON)


def ask(srv, path):
    status, _, body = srv.request("GET", path, timeout=20)
    return status, body.decode()


def test_always_on_isolation(server, monkeypatch):
    monkeypatch.setenv("SB_MASTER_ONLY", "secret")
    srv = server("sb_app")
    status, body = ask(srv, "/proc")
    own_group, no_new_privs, fds, env = body.split("|")
    assert status == 200
    assert own_group == "True"
    assert no_new_privs.split() == ["NoNewPrivs:", "1"]
    assert "socket:" not in fds, fds
    assert all(t.startswith(("pipe:", "/dev/null", "/proc/")) for t in fds.split(",")), fds
    assert "SB_MASTER_ONLY" not in env.split(",")
    worker = srv.worker_pids()[0]
    with open("/proc/%d/status" % worker) as f:
        assert re.search(r"NoNewPrivs:\s+1", f.read())
    with open("/proc/%d/limits" % worker) as f:
        assert re.search(r"Max core file size\s+0\s+0", f.read()), "core dumps must be off"
    assert os.getpgid(worker) == worker


@root_only
@needs_system_python
def test_user_group_and_umask(server):
    srv = server("sb_app", "--user", "nobody", "--group", "nogroup", "--umask", "027", python=SYSTEM_PYTHON)
    uid, gid, groups, umask = ask(srv, "/whoami")[1].split(" ", 3)
    nobody = int(subprocess.check_output(["id", "-u", "nobody"]))
    nogroup = int(subprocess.check_output(["getent", "group", "nogroup"], text=True).split(":")[2])
    assert (int(uid), int(gid), groups, umask) == (nobody, nogroup, "[%d]" % nogroup, "27")
    assert os.stat("/proc/%d" % srv.proc.pid).st_uid == 0, "the master stays root"


def test_address_space_limit_is_an_error_and_a_fresh_worker(server):
    srv = server("sb_app", "--worker-rlimit-as", "300")
    before = ask(srv, "/")[1]
    status, _ = ask(srv, "/alloc?600")
    assert status == 500
    srv.wait_log(r"MemoryError")
    srv.wait_log(r"Worker %s died \(exit code 4\)" % before)
    assert ask(srv, "/alloc?10") == (200, "allocated %d" % (10 << 20))
    assert ask(srv, "/")[1] != before
    assert all(ask(srv, "/")[0] == 200 for _ in range(20))


def test_open_files_limit(server):
    srv = server("sb_app", "--worker-rlimit-nofile", "64")
    assert ask(srv, "/files?200")[1].startswith("refused after")
    assert ask(srv, "/files?10") == (200, "opened 10")


@root_only
@needs_system_python
def test_process_limit_for_an_unprivileged_user(server):
    srv = server("sb_app", "--user", "nobody", "--worker-rlimit-nproc", "8", python=SYSTEM_PYTHON)
    assert ask(srv, "/threads?50")[1].startswith("refused after")


def test_cpu_limit_kills_and_replaces_the_worker(server):
    srv = server("sb_app", "--worker-rlimit-cpu", "1")
    before = ask(srv, "/")[1]
    assert ask(srv, "/spin")[0] == 502
    srv.wait_log(r"Worker %s died \(killed by signal (24|9)" % before)
    assert ask(srv, "/")[1] != before


def test_isolated_network_cannot_reach_even_loopback(server):
    free = server("sb_app")
    assert ask(free, "/connect?%d" % free.port)[1] == "connected"
    srv = server("sb_app", "--isolate-network")
    status, body = ask(srv, "/connect?%d" % srv.port)
    assert status == 200 and body.startswith("blocked"), body
    assert ask(srv, "/")[0] == 200


@pytest.mark.parametrize("args,message", [
    (["--user", "no-such-user-here"], "no user"),
    (["--group", "no-such-group-here"], "no group"),
    (["--umask", "999"], "octal"),
])
def test_sandbox_flags_fail_loudly(args, message):
    result = subprocess.run([str(BINARY)] + args + ["sb_app"], capture_output=True, text=True, cwd=str(APPS))
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def check_files(srv, *items):
    status, body = ask(srv, "/?" + ",".join(items))
    assert status == 200, body
    return body.split(",")


def test_landlock_allows_only_the_interpreter_the_app_and_what_is_given(server, tmp_path):
    writable = tmp_path / "writable"
    writable.mkdir()
    readable = tmp_path / "readable"
    readable.mkdir()
    (readable / "data").write_text("x")
    srv = server("sb_app:files", "--allow-read", str(readable), "--allow-write", str(writable))
    results = check_files(srv, "r:/etc/shadow", "r:/root/.bash_history", "r:%s/data" % readable,
                          "w:%s/new" % writable, "w:%s/new" % readable, "w:%s/sb_new" % APPS,
                          "r:%s/sb_app.py" % APPS)
    assert results[0] == "PermissionError"
    assert results[1] in ("PermissionError", "FileNotFoundError")
    assert results[2:] == ["ok", "ok", "PermissionError", "PermissionError", "ok"]


@pytest.fixture
def outside_tmp(default_python):
    """(app directory, interpreter) that --private-tmp leaves visible: the
    checkout itself, and so its venv, may be under /tmp (rwsgi-gw refuses to
    start then, as test_cli checks)."""
    python = os.path.realpath(default_python)
    if python.startswith("/tmp/"):
        pytest.skip("every interpreter here is under /tmp, which --private-tmp hides")
    apps = tempfile.mkdtemp(prefix="rwsgi-gw-sandbox-", dir="/var/tmp")
    shutil.copy(APPS / "sb_app.py", apps)
    yield apps, python
    shutil.rmtree(apps)


def test_private_tmp_is_empty_and_writable(server, tmp_path, outside_tmp):
    apps, python = outside_tmp
    marker = tmp_path.parent / "rwsgi-gw-host-tmp-marker"
    marker.write_text("host")
    try:
        srv = server("sb_app:files", "--private-tmp", chdir=apps, python=python)
        results = check_files(srv, "r:%s" % marker, "w:/tmp/inside")
        assert results == ["FileNotFoundError", "ok"]
        assert not os.path.exists("/tmp/inside")
    finally:
        marker.unlink()


def test_strict_preset(server, outside_tmp):
    apps, python = outside_tmp
    srv = server("sb_app:files", "--sandbox", "strict", chdir=apps, python=python)
    assert check_files(srv, "r:/etc/shadow", "w:%s/sb_new" % apps, "w:/tmp/ok", "r:/etc/hosts") == [
        "PermissionError", "PermissionError", "ok", "ok"]
    whole = server("sb_app", "--sandbox", "strict", chdir=apps, python=python)
    assert ask(whole, "/connect?%d" % whole.port)[1].startswith("blocked")
    assert ask(whole, "/whoami")[1].split()[3] == "27"


setpriv = pytest.mark.skipif(not os.path.exists("/usr/bin/setpriv") or os.geteuid() != 0,
                             reason="needs root and setpriv to take CAP_SYS_ADMIN away")


@setpriv
def test_a_missing_kernel_feature_is_refused_unless_best_effort(server):
    without_admin = ["/usr/bin/setpriv", "--inh-caps=-sys_admin", "--bounding-set=-sys_admin", str(BINARY)]
    result = subprocess.run(without_admin + ["--isolate-network", "sb_app"], capture_output=True, text=True,
                            cwd=str(APPS))
    assert result.returncode == 2
    assert "network namespace" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    proc = subprocess.Popen(without_admin + ["--bind", "127.0.0.1:0", "--isolate-network", "--sandbox-best-effort",
                                             "sb_app"], stderr=subprocess.PIPE, text=True, cwd=str(APPS))
    try:
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if "ready:" in line:
                break
        assert any("Sandbox feature skipped" in line and "network namespace" in line for line in lines), lines
    finally:
        proc.terminate()
        proc.wait(10)

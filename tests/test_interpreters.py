"""The same app on every interpreter the machine has (pyenv CPython 3.8-3.13,
pypy3, the venv's python), through both codec paths: the shim's pure-Python
MessagePack codec everywhere, and the msgpack C extension where installed.
The pytest header lists the interpreters that were skipped."""

import os
import re
import subprocess

import pytest

from conftest import PYTHONS, VENV_PYTHON


def test_worker_runs_the_named_interpreter_with_the_expected_codec(server, python):
    path, codec = python
    srv = server("interp_app", python=path, codec=codec)
    status, _, body = srv.request("GET", "/")
    assert status == 200
    executable, version = body.decode().split("|")
    assert os.path.realpath(executable) == os.path.realpath(path)
    expected = subprocess.check_output([path, "-c", "import sys; print(sys.version.split()[0])"], text=True).strip()
    assert version == expected
    assert re.search(r"Worker \d+ ready: Python %s, codec %s" % (re.escape(expected), codec), srv.log)


def test_body_both_ways_on_every_codec(server, python):
    path, codec = python
    srv = server("interp_app", python=path, codec=codec)
    payload = bytes(range(256)) * 1000
    status, headers, body = srv.request("POST", "/", body=payload)
    assert status == 200
    assert headers["transfer-encoding"] == "chunked"
    assert body == payload


@pytest.mark.skipif(not VENV_PYTHON.exists(), reason="no .venv")
def test_forcing_the_pure_codec_where_msgpack_is_installed(server):
    srv = server("interp_app", python=str(VENV_PYTHON), codec="pure")
    assert srv.request("GET", "/")[0] == 200
    assert re.search(r"ready: Python \S+, codec pure", srv.log)


def test_every_wanted_cpython_is_covered_or_reported():
    from conftest import SKIPPED_PYTHONS, WANTED
    covered = {pid[len("cpython"):] for pid, _, _ in PYTHONS if pid.startswith("cpython")}
    assert covered | set(SKIPPED_PYTHONS) >= set(WANTED)

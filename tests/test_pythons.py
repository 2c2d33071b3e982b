"""Every interpreter the machine has (pyenv CPython 3.8-3.13, pypy3, the venv's
python) through both codec paths: the shim's pure-Python MessagePack codec and
the msgpack C extension.

The `python` fixture gives each interpreter with its natural codec (pure for the
bare pyenv builds and PyPy, msgpack for the venv). `test_the_other_codec` runs
each one through the other path as well: the venv's python with the pure codec
forced, and each pyenv CPython with msgpack installed by pip into a cache
directory (.pytest_cache) that the worker gets on PYTHONPATH; that case is
skipped, with the reason, when pip cannot get msgpack (offline) and on PyPy,
where msgpack has no C extension. Interpreters that are not installed are
skipped by name in `test_wanted_interpreter_is_installed`, and listed in the
session header.
"""

import functools
import hashlib
import json
import os
import random
import re
import subprocess

import pytest

from conftest import PYTHONS, SKIPPED_PYTHONS, WANTED

PROBE = ("import json, platform, sys; print(json.dumps({'version': sys.version, "
         "'python_version': platform.python_version(), 'implementation': platform.python_implementation(), "
         "'executable': sys.executable, 'prefix': sys.prefix}))")


@functools.lru_cache(maxsize=None)
def probe(path):
    """What the interpreter at `path` says about itself when run directly."""
    return json.loads(subprocess.check_output([path, "-c", PROBE], text=True))


def has_msgpack_extension(path, pythonpath=None):
    env = dict(os.environ, PYTHONPATH=pythonpath) if pythonpath else None
    return subprocess.run([path, "-c", "import msgpack._cmsgpack"], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0


@pytest.fixture(scope="session")
def msgpack_for(request, tmp_path_factory):
    """msgpack_for(path) -> a directory holding the msgpack C extension for that
    interpreter (installed by its own pip on first use), or skips the test."""

    def provide(path):
        info = probe(path)
        if info["implementation"] != "CPython":
            pytest.skip("msgpack has no C extension on %s" % info["implementation"])
        tag = "msgpack-%s-%s" % (info["implementation"], info["python_version"])
        cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
        target = str(cache.mkdir(tag) if cache else tmp_path_factory.mktemp(tag))
        if has_msgpack_extension(path, target):
            return target
        result = subprocess.run([path, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                                 "--no-input", "--only-binary=:all:", "--upgrade", "--target", target, "msgpack"],
                                capture_output=True, text=True, timeout=300)
        if result.returncode != 0 or not has_msgpack_extension(path, target):
            pytest.skip("could not install msgpack for %s: %s" % (path, (result.stderr or result.stdout)[-300:]))
        return target

    return provide


def check_interpreter(srv, path, codec):
    """The worker runs exactly `path`, and its ready line names `codec`."""
    expected = probe(path)
    status, _, body = srv.request("GET", "/info")
    assert status == 200, body
    info = json.loads(body)
    assert info["version"] == expected["version"]
    assert info["implementation"] == expected["implementation"]
    assert info["prefix"] == expected["prefix"]
    assert os.path.realpath(info["executable"]) == os.path.realpath(expected["executable"])
    ready = re.findall(r"Worker (\d+) ready: Python (\S+), codec (\w+)", srv.log)
    assert ready == [(str(info["pid"]), expected["python_version"], codec)], srv.log


# (request body size, the app's read and response chunk size): MessagePack
# bin8/bin16/bin32 boundaries, bodies inside the request frame (up to 64 KiB)
# and pulled chunk by chunk beyond it, response chunks above the shim's slice size.
BODIES = [(0, 1000), (1, 1), (255, 100), (256, 256), (65535, 4096), (65536, 65536), (65537, 300000),
          ((1 << 20) + 3, 65536), (3 << 20, 1 << 20)]


def check_bodies_both_ways(srv):
    rng = random.Random(3333)
    conn = srv.conn(timeout=60)
    for size, chunk in BODIES:
        payload = bytes(rng.getrandbits(8) for _ in range(min(size, 4096))) * (size // 4096 + 1)
        payload = payload[:size]
        conn.request("POST", "/echo?chunk=%d" % chunk, body=payload)
        r = conn.getresponse()
        data = r.read()
        assert r.status == 200, (size, data[:300])
        assert r.getheader("X-Read-Length") == str(size)
        assert r.getheader("X-Read-Sha256") == hashlib.sha256(payload).hexdigest(), size
        if size:
            assert r.getheader("Transfer-Encoding") == "chunked", (size, r.getheaders())
        assert len(data) == size and data == payload, (size, len(data))
    # A chunked upload (no Content-Length), in uneven pieces.
    pieces = [bytes([i % 256]) * (i * 1000 + 1) for i in range(1, 40)]
    conn.request("POST", "/echo?chunk=7000", body=iter(pieces), encode_chunked=True,
                 headers={"Transfer-Encoding": "chunked"})
    r = conn.getresponse()
    assert r.status == 200
    assert r.read() == b"".join(pieces)
    # Latin-1 text both ways: request header into the environ, response header and body out.
    conn.request("GET", "/latin1", headers={"X-Latin": "caf\xe9 \xff\xa0end"})
    r = conn.getresponse()
    assert r.status == 200
    assert r.read() == "caf\xe9 \xff\xa0end".encode("latin-1")
    assert r.getheader("X-Latin-Back") == "caf\xe9 \xff\xa0end"
    conn.close()


def test_worker_runs_the_given_interpreter_with_the_expected_codec(server, python):
    path, codec = python
    srv = server("cli_interp", python=path, codec=codec)
    check_interpreter(srv, path, codec)


def test_post_body_and_streamed_response(server, python):
    path, codec = python
    srv = server("cli_interp", python=path, codec=codec)
    check_bodies_both_ways(srv)
    assert re.search(r"ready: Python \S+, codec %s" % codec, srv.log)
    assert "Traceback" not in srv.log


def test_the_other_codec(server, python, msgpack_for):
    """Each interpreter through the codec path the `python` fixture does not give it."""
    path, natural = python
    if natural == "msgpack":
        other, env, codec_flag = "pure", {}, "pure"
    else:
        other, env, codec_flag = "msgpack", {"PYTHONPATH": msgpack_for(path)}, None
    srv = server("cli_interp", python=path, codec=codec_flag, env=env)
    check_interpreter(srv, path, other)
    check_bodies_both_ways(srv)


@pytest.mark.parametrize("name", ["cpython" + v for v in WANTED] + ["pypy3"])
def test_wanted_interpreter_is_installed(name):
    """Skipped, by name, for each wanted interpreter this machine lacks."""
    short = name[len("cpython"):] if name.startswith("cpython") else name
    if short in SKIPPED_PYTHONS:
        pytest.skip("%s is not installed: its tests did not run" % name)
    paths = [p for i, p, _ in PYTHONS if i == name]
    assert len(paths) == 1, (name, PYTHONS)
    info = probe(paths[0])
    if name.startswith("cpython"):
        assert info["implementation"] == "CPython"
        assert info["python_version"].startswith(short + "."), info
    else:
        assert info["implementation"] == "PyPy"

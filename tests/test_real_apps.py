"""Real frameworks through the real binary: Flask and Django, imported from the
project venv by workers running that venv's python (rwsgi-gw itself is not
installed there: it is the Rust binary).

The apps live in tests/realapps/: `flaskapp:app` and the Django project
`djangoproj` (settings given to the workers with --env, since they start with a
clean environment). Each serves /json, /form (urlencoded POST echoed back) and
/stream (a generator: Flask's stream_with_context, Django's StreamingHttpResponse).
"""

import json
import subprocess
import urllib.parse

import pytest

from conftest import ROOT, VENV_PYTHON

REALAPPS = ROOT / "tests" / "realapps"


def venv_has(module):
    if not VENV_PYTHON.exists():
        return False
    return subprocess.run([str(VENV_PYTHON), "-c", "import " + module], capture_output=True).returncode == 0


FRAMEWORKS = [
    pytest.param(("flaskapp:app", {}, "flask"),
                 marks=pytest.mark.skipif(not venv_has("flask"), reason="flask is not importable in .venv"),
                 id="flask"),
    pytest.param(("djangoproj.wsgi:application", {"DJANGO_SETTINGS_MODULE": "djangoproj.settings"}, "django"),
                 marks=pytest.mark.skipif(not venv_has("django"), reason="django is not importable in .venv"),
                 id="django"),
]

FORM = [("name", "Zo\u00e9 & co"), ("tag", "a"), ("tag", "b")]


@pytest.fixture(params=FRAMEWORKS)
def real_app(request, server):
    app, env, name = request.param
    srv = server(app, python=str(VENV_PYTHON), env=env, workers=2, chdir=REALAPPS)
    return srv, name


def rows(n, who):
    return b"".join(b"row %d %s\n" % (i, who.encode()) for i in range(n))


@pytest.mark.skipif(not VENV_PYTHON.exists(), reason="no .venv")
def test_rwsgi_gw_is_not_in_the_venv():
    probe = subprocess.run([str(VENV_PYTHON), "-c", "import rwsgi_shim"], capture_output=True)
    assert probe.returncode != 0


def test_json_route(real_app):
    srv, name = real_app
    status, headers, body = srv.request("GET", "/json?q=caf%C3%A9")
    assert status == 200, body
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {"framework": name, "items": [1, 2, 3], "query": "caf\u00e9"}


def test_form_post(real_app):
    srv, _ = real_app
    form = urllib.parse.urlencode(FORM)
    status, headers, body = srv.request("POST", "/form", body=form,
                                        headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200, body
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {"name": "Zo\u00e9 & co", "tags": ["a", "b"]}


def test_streamed_response(real_app):
    srv, _ = real_app
    status, headers, body = srv.request("GET", "/stream?n=5&who=ada")
    assert status == 200, body
    assert headers["content-type"].startswith("text/plain")
    assert "content-length" not in headers
    assert headers.get("transfer-encoding") == "chunked"
    assert body == rows(5, "ada")
    assert "Traceback" not in srv.log


def test_long_stream(real_app):
    srv, _ = real_app
    status, _, body = srv.request("GET", "/stream?n=2000&who=bob")
    assert status == 200
    assert body == rows(2000, "bob")


def test_routes_on_one_keep_alive_connection(real_app):
    """JSON, form, stream, then JSON again, all on one HTTP/1.1 connection."""
    srv, name = real_app
    c = srv.conn()
    first_socket = None
    try:
        for q in ("one", "two"):
            c.request("GET", "/json?q=" + q)
            r = c.getresponse()
            assert r.status == 200
            assert json.loads(r.read()) == {"framework": name, "items": [1, 2, 3], "query": q}
            first_socket = first_socket or c.sock
            c.request("POST", "/form", body=urllib.parse.urlencode(FORM),
                      headers={"Content-Type": "application/x-www-form-urlencoded"})
            r = c.getresponse()
            assert r.status == 200
            assert json.loads(r.read()) == {"name": "Zo\u00e9 & co", "tags": ["a", "b"]}
            c.request("GET", "/stream?n=3&who=" + q)
            r = c.getresponse()
            assert r.status == 200
            assert r.read() == rows(3, q)
            assert not r.will_close
        assert c.sock is not None and c.sock is first_socket  # never reconnected
    finally:
        c.close()
    assert "Traceback" not in srv.log


def test_unknown_route_is_the_frameworks_404(real_app):
    srv, _ = real_app
    status, _, _ = srv.request("GET", "/no-such-page")
    assert status == 404

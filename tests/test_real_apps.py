"""Real frameworks through the real binary: Flask and Django, imported from the
project venv by a worker running that venv's python (rwsgi-gw itself is not
installed there: it is the Rust binary)."""

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
    pytest.param(("flaskapp:app", {}, "flask"), marks=pytest.mark.skipif(not venv_has("flask"), reason="no flask in .venv"),
                 id="flask"),
    pytest.param(("djangoproj.wsgi", {"DJANGO_SETTINGS_MODULE": "djangoproj.settings"}, "django"),
                 marks=pytest.mark.skipif(not venv_has("django"), reason="no django in .venv"), id="django"),
]


@pytest.fixture(params=FRAMEWORKS)
def real_app(request, server):
    app, env, name = request.param
    srv = server(app, python=str(VENV_PYTHON), env=env, workers=2, chdir=REALAPPS)
    return srv, name


def test_rwsgi_gw_is_not_in_the_venv():
    probe = subprocess.run([str(VENV_PYTHON), "-c", "import rwsgi_shim"], capture_output=True)
    assert probe.returncode != 0


def test_json_route(real_app):
    srv, name = real_app
    status, headers, body = srv.request("GET", "/json?q=caf%C3%A9")
    assert status == 200, body
    assert headers["content-type"].startswith("application/json")
    assert json.loads(body) == {"framework": name, "items": [1, 2, 3], "query": "caf\u00e9"}


def test_form_post(real_app):
    srv, _ = real_app
    form = urllib.parse.urlencode([("name", "Zo\u00e9 & co"), ("tag", "a"), ("tag", "b")])
    status, _, body = srv.request("POST", "/form", body=form,
                                  headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200, body
    assert json.loads(body) == {"name": "Zo\u00e9 & co", "tags": ["a", "b"]}


def test_streamed_response(real_app):
    srv, _ = real_app
    status, headers, body = srv.request("GET", "/stream")
    assert status == 200, body
    assert headers.get("transfer-encoding") == "chunked"
    assert body == b"".join(b"row %d\n" % i for i in range(5))
    assert "Traceback" not in srv.log

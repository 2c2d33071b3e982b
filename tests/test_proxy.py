"""Proxy headers: believed only from --forwarded-allow-ips (and unix-socket
peers), and a real nginx in front of rwsgi-gw over a unix socket."""

import http.client
import json
import re
import shutil
import socket
import subprocess
import time

import pytest

FORWARDED = {
    "X-Forwarded-For": "6.6.6.6, 203.0.113.9",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "shop.example",
    "X-Forwarded-Prefix": "/shop",
}


def seen(srv, headers):
    status, _, body = srv.request("GET", "/item", headers=headers)
    assert status == 200
    return json.loads(body)


def test_forwarded_headers_from_a_trusted_peer(server):
    env = seen(server("proxy_app"), FORWARDED)
    assert env["REMOTE_ADDR"] == "203.0.113.9"
    assert env["wsgi.url_scheme"] == "https"
    assert env["HTTP_HOST"] == "shop.example"
    assert env["SCRIPT_NAME"] == "/shop"
    assert env["PATH_INFO"] == "/item"


def test_rfc7239_forwarded(server):
    env = seen(server("proxy_app"), {"Forwarded": 'for=6.6.6.6, for="[2001:db8::7]:4711";proto=https;host=a.example'})
    assert (env["REMOTE_ADDR"], env["wsgi.url_scheme"], env["HTTP_HOST"]) == ("2001:db8::7", "https", "a.example")


def test_forwarded_headers_from_anyone_else_pass_through(server):
    env = seen(server("proxy_app", "--forwarded-allow-ips", "10.9.9.9"), FORWARDED)
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["wsgi.url_scheme"] == "http"
    assert env["HTTP_HOST"].startswith("127.0.0.1:")
    assert env["SCRIPT_NAME"] == ""
    assert env["HTTP_X_FORWARDED_FOR"] == "6.6.6.6, 203.0.113.9"


NGINX_CONF = """
daemon off;
master_process off;
user root;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    client_max_body_size 200m;
    upstream app {{
        server unix:{sock};
        keepalive 8;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto https;
            proxy_request_buffering off;
        }}
    }}
}}
"""


@pytest.fixture
def nginx(tmp_path, server):
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not shutil.which(binary):
        pytest.skip("nginx is not installed (.ci/run installs it from Debian)")
    sock = tmp_path / "app.sock"
    srv = server("proxy_app", "--bind", "unix:%s" % sock, "--log-level", "debug", workers=2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = tmp_path / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp_path, sock=sock, port=port))
    proc = subprocess.Popen([binary, "-c", str(conf), "-p", str(tmp_path)], stderr=subprocess.PIPE)
    deadline = time.time() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert time.time() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() is not None else ""
            time.sleep(0.05)
    yield srv, port
    proc.terminate()
    proc.wait(10)


def test_behind_nginx_over_a_unix_socket(nginx):
    srv, port = nginx
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", "/hello", headers={"Host": "site.example"})
    env = json.loads(conn.getresponse().read())
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["wsgi.url_scheme"] == "https"
    assert env["HTTP_HOST"] == "site.example"

    size = 100 << 20
    block = b"u" * (1 << 20)
    conn.putrequest("POST", "/upload")
    conn.putheader("Content-Length", str(size))
    conn.endheaders()
    for _ in range(size // len(block)):
        conn.send(block)
    response = conn.getresponse()
    assert response.status == 200
    assert json.loads(response.read())["received"] == size

    for _ in range(20):
        conn.request("GET", "/again")
        assert conn.getresponse().read()
    conn.close()
    accepted = len(re.findall(r"Accepted a connection from a unix socket", srv.log))
    assert 1 <= accepted < 22 / 2, "nginx should reuse its upstream connections (%d for 22 requests)" % accepted

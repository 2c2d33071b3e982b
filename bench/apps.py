"""The benchmark's WSGI apps (bench/run.py); the same callables run under every server."""

HELLO = b"Hello world!\n"
BIG = b"x" * (1 << 20)
CHUNK = b"y" * 1024


def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [HELLO]


def big(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(BIG)))])
    return [BIG]


def stream(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return (CHUNK for _ in range(100))


def echo(environ, start_response):
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(body)))])
    return [body]


try:
    from flask import Flask, jsonify

    flask_app = Flask(__name__)

    @flask_app.route("/")
    def index():
        return jsonify(message="Hello, World!", n=42)

except ImportError:  # the bench skips the flask row
    flask_app = None


def sleep50(environ, start_response):
    """50 ms of waiting (I/O, say) per request: what --threads is for."""
    import time

    time.sleep(0.05)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [HELLO]

"""A small Flask app: a JSON route, a form POST and a streamed response."""

from flask import Flask, Response, jsonify, request, stream_with_context

app = Flask(__name__)


@app.route("/json")
def json_route():
    return jsonify(framework="flask", items=[1, 2, 3], query=request.args.get("q"))


@app.route("/form", methods=["POST"])
def form():
    return jsonify(name=request.form["name"], tags=request.form.getlist("tag"))


@app.route("/stream")
def stream():
    def rows():
        for i in range(5):
            yield "row %d\n" % i

    return Response(stream_with_context(rows()), mimetype="text/plain")

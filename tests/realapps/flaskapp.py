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
    # stream_with_context keeps the request alive while the server iterates:
    # the generator reads request.args after the view has returned.
    def rows():
        for i in range(int(request.args.get("n", "5"))):
            yield "row %d %s\n" % (i, request.args.get("who", ""))

    return Response(stream_with_context(rows()), mimetype="text/plain")

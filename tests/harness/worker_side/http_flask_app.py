"""A Flask (Debian's 2.2) app for tests/harness/test_http_frameworks.py."""
from flask import Flask, Response, jsonify, request

app = Flask(__name__)


@app.route("/items/<int:item_id>")
def item(item_id):
    return jsonify(item_id=item_id, q=request.args.get("q"))


@app.route("/form", methods=["POST"])
def form():
    return jsonify(dict(request.form))


@app.route("/upload", methods=["POST"])
def upload():
    return jsonify(size=len(request.get_data()))


@app.route("/stream")
def stream():
    return Response((f"line {i}\n" for i in range(3)), mimetype="text/plain")


@app.route("/cookie")
def cookie():
    r = Response("ok")
    r.set_cookie("a", "1")
    r.set_cookie("b", "2")
    return r

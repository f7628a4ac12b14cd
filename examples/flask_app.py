"""A small, real Flask app to run under the graceful config pack.

    gunicorn -c conf/graceful.py examples.flask_app:app

Routes: `/` (version and pid), `/healthz` (the readiness path), `/slow?seconds=N`
(a request that takes a while, to watch a drain), `/echo` (POST body back).
"""

import os
import time

from flask import Flask, jsonify, request

MAX_SLOW_SECONDS = 120.0


def create_app(version=None):
    """The app, answering with `version` (default: $APP_VERSION or "1")."""
    app = Flask(__name__)
    version = version or os.environ.get("APP_VERSION", "1")

    @app.get("/")
    def index():
        return jsonify(version=version, pid=os.getpid())

    @app.get("/healthz")
    def healthz():
        return "ok\n"

    @app.get("/slow")
    def slow():
        seconds = min(max(float(request.args.get("seconds", "1")), 0.0), MAX_SLOW_SECONDS)
        time.sleep(seconds)
        return jsonify(version=version, pid=os.getpid(), slept=seconds)

    @app.post("/echo")
    def echo():
        return request.get_data(), 200, {"Content-Type": "application/octet-stream"}

    return app


app = create_app()

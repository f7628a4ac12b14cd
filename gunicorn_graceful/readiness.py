"""The readiness check a new worker passes before its master counts it as serving.

It calls the app in-process, as Gunicorn would for a request, so it proves the
code imported, the routes answer and the warm-up ran, without a network hop
and without the worker accepting a single connection first.
"""

import importlib
import io
import sys


class NotReady(Exception):
    """The check failed; the message is the one line the master logs."""


def _environ(path):
    path_info, _, query = path.partition("?")
    return {
        "REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": path_info,
        "QUERY_STRING": query, "SERVER_NAME": "localhost", "SERVER_PORT": "0",
        "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "0",
        "HTTP_HOST": "localhost", "HTTP_USER_AGENT": "gunicorn-graceful-readiness",
        "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr, "wsgi.multithread": False, "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }


def call(app, path):
    """GET `path` from the WSGI app in-process; the status code it answered."""
    status = []

    def start_response(line, headers, exc_info=None):
        status.append(line)
        return lambda data: None

    body = app(_environ(path), start_response)
    try:
        for _ in body:
            pass
    finally:
        if hasattr(body, "close"):
            body.close()
    if not status:
        raise NotReady("readiness path %s sent no status" % path)
    return int(status[0].split(" ", 1)[0])


def _load_callable(ref):
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def check(app, settings):
    """Raise NotReady with the reason unless the app is ready to serve."""
    for path in settings.readiness_warmup:
        call(app, path)
    if settings.readiness_path:
        code = call(app, settings.readiness_path)
        if not 200 <= code < 300:
            raise NotReady("readiness path %s answered %s" % (settings.readiness_path, code))
    if settings.readiness_callable:
        if not _load_callable(settings.readiness_callable)(app):
            raise NotReady("readiness callable %s returned false" % settings.readiness_callable)

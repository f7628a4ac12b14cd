"""The readiness check a new worker passes before its master counts it as serving.

It calls the app in-process, as Gunicorn would for a request, so it proves the
code imported, the routes answer and the warm-up ran, without a network hop
and without the worker accepting a single connection first.
"""

import importlib
import inspect
import io
import sys

from gunicorn_graceful.settings import ACCEPT


class NotReady(Exception):
    """The check failed; the message is the one line the master logs."""


def describe(exc):
    """The last line of a traceback: what an operator needs in one ERROR line."""
    text = str(exc).strip().splitlines()
    return "%s: %s" % (type(exc).__name__, text[-1]) if text else type(exc).__name__


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


def _judge_path(settings, code):
    low, high = ACCEPT[settings.readiness_accept]
    if low <= code < high:
        return
    reason = "readiness path %s answered %s" % (settings.readiness_path, code)
    if code < 500:  # no such route, or a redirect: the setting, not the app, is off
        reason += (" (point graceful_readiness_path at a route that answers 2xx, or set "
                   "graceful_readiness_accept = '<500' to accept any answer of a running app)")
    raise NotReady(reason)


def _judge_callable(settings, result):
    if not result:
        raise NotReady("readiness callable %s returned false" % settings.readiness_callable)


def check(app, settings):
    """Raise NotReady with the reason unless the app is ready to serve."""
    for path in settings.readiness_warmup:
        call(app, path)
    if settings.readiness_path:
        _judge_path(settings, call(app, settings.readiness_path))
    if settings.readiness_callable:
        _judge_callable(settings, _load_callable(settings.readiness_callable)(app))


async def call_asgi(app, path, state):
    """GET `path` from the ASGI app in-process, with the lifespan state; the status it answered."""
    path_info, _, query = path.partition("?")
    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1", "method": "GET", "scheme": "http", "path": path_info,
        "raw_path": path_info.encode(), "query_string": query.encode(), "root_path": "",
        "headers": [(b"host", b"localhost"), (b"user-agent", b"gunicorn-graceful-readiness")],
        "client": ("127.0.0.1", 0), "server": ("localhost", 0), "state": dict(state),
    }
    import asyncio  # here: a WSGI worker need not hold asyncio's megabytes
    status = []
    answered = asyncio.get_running_loop().create_future()
    messages = iter([{"type": "http.request", "body": b"", "more_body": False}])

    async def receive():
        message = next(messages, None)
        if message is None:
            await answered  # the client "leaves" once the response is complete
            message = {"type": "http.disconnect"}
        return message

    async def send(message):
        if message["type"] == "http.response.start":
            status.append(message["status"])
        elif not message.get("more_body") and not answered.done():
            answered.set_result(None)

    try:
        await app(scope, receive, send)
    finally:
        answered.cancel()
    if not status:
        raise NotReady("readiness path %s sent no status" % path)
    return status[0]


async def check_asgi(app, settings, state):
    """`check` for an ASGI app; the callable may be a coroutine function."""
    for path in settings.readiness_warmup:
        await call_asgi(app, path, state)
    if settings.readiness_path:
        _judge_path(settings, await call_asgi(app, settings.readiness_path, state))
    if settings.readiness_callable:
        result = _load_callable(settings.readiness_callable)(app)
        _judge_callable(settings, await result if inspect.isawaitable(result) else result)

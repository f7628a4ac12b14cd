"""Around an ASGI app, whatever server runs it: the guard and the app's lifespan.

The graceful ASGI workers wrap the app in `Guard`, an ASGI middleware, so the
same code serves Gunicorn's native asgi worker and uvicorn's:
- it answers the health and liveness paths itself, and in lame duck makes every
  response close its connection;
- it lists what is in flight (requests, server-sent-event streams, WebSockets)
  for the drain report, and can close every open WebSocket with a code of its
  choosing;
- it speaks the lifespan protocol to the server itself, and to the app when the
  app speaks it: the readiness check runs between the app's startup and the
  server's first accept, and the app's shutdown is bounded by the drain.
What the app sees of a drain is `gunicorn_graceful.asgi` (`draining()`).
"""

import asyncio
import time

from gunicorn_graceful import counters
from gunicorn_graceful.asgi import STATE_KEY
from gunicorn_graceful.events import emit, redact
from gunicorn_graceful.workers import health, inflight, readiness

_HEALTH_HEADERS = [(name.lower().encode(), value.encode()) for name, value in health.HEADERS]
_CLOSE = (b"connection", b"close")


class Call(inflight.Request):
    """One HTTP request, stream or WebSocket in flight, from its ASGI scope.

    On the hot path of every request: it stores references only. Whether an HTTP
    call is a stream (its response is `text/event-stream`) is read from the response
    headers when a report asks (`kind`)."""

    __slots__ = ("websocket", "task", "cut", "headers", "status")

    def __init__(self, scope, websocket=False):
        self.environ, self.started, self.thread = scope, time.monotonic(), None
        self.websocket, self.task, self.cut, self.headers = websocket, asyncio.current_task(), \
            False, ()
        self.status = None

    @property
    def kind(self):
        if self.websocket:
            return "websocket"
        for name, value in self.headers:
            if name.lower() == b"content-type":
                return "stream" if value.startswith(b"text/event-stream") else "http"
        return "http"

    @property
    def method(self):
        return "WEBSOCKET" if self.websocket else self.environ.get("method", "GET")

    @property
    def path(self):
        query = self.environ.get("query_string", b"")
        path = self.environ.get("path", "/")
        return redact(path + ("?" + query.decode("latin-1") if query else ""))

    @property
    def peer(self):
        client = self.environ.get("client") or ("-", "-")
        return "%s:%s" % tuple(client[:2])


class Guard:
    """The ASGI middleware of the graceful workers (see the module docstring)."""

    def __init__(self, app, worker):
        self.app, self.worker = app, worker
        self.registry = worker.inflight
        self.health_paths = {worker.settings.health_path, worker.settings.liveness_path} - {""}
        self.websockets = {}  # registry key -> coroutine function closing that socket
        self.closing = []  # the tasks sending close frames, once the drain began
        self.close_round = None  # (code, reason) once the drain closed the WebSockets
        self.slot = counters.mine()  # where this worker counts, with metrics on
        self.app_lifespan = None

    async def __call__(self, scope, receive, send):
        """HTTP inline (the hot path: one coroutine layer less), the rest by type."""
        kind = scope["type"]
        if kind == "http":
            if scope["path"] in self.health_paths:
                return await self.answer_health(scope, send)
            call = Call(scope)
            registry, worker, draining, slot = (self.registry, self.worker,
                                                self.worker.draining, self.slot)
            key = registry.add(call)
            began = slot.started() if slot is not None else None

            async def tracked_send(message):
                if message["type"] == "http.response.start":
                    call.headers = message.get("headers") or ()
                    call.status = message.get("status")
                    if worker.lame_duck or draining.reason is not None:
                        message = dict(message, headers=_closing(call.headers))
                await send(message)

            try:
                await self.app(scope, receive, tracked_send)
            except asyncio.CancelledError:
                if not (call.cut and worker.CUT_QUIETLY):
                    raise
            finally:
                registry.end(key)
                worker.limits.after_request()
                if slot is not None:
                    slot.ended(call.status, began)
            return None
        if kind == "websocket":
            return await self.websocket(scope, receive, send)
        if kind == "lifespan":
            return await self.lifespan(scope, receive, send)
        return await self.app(scope, receive, send)

    async def answer_health(self, scope, send):
        status, body = health.answer(scope["path"], self.worker.health_state(),
                                     self.worker.settings.liveness_path)
        headers = _HEALTH_HEADERS + [(b"content-length", str(len(body)).encode())]
        if self.worker.lame_duck or self.worker.draining.is_set():
            headers.append(_CLOSE)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def websocket(self, scope, receive, send):
        """A WebSocket, closable by the drain's close round (`close_websockets`) from its
        acceptance until it ends (see `Socket`)."""
        sock = Socket(self, Call(scope, websocket=True), receive, send)
        try:
            await self.app(scope, sock.receive, sock.send)
        except asyncio.CancelledError:
            if not (sock.call.cut and self.worker.CUT_QUIETLY):
                raise
        finally:
            sock.forget()

    def close_websockets(self, code, reason):
        """Send every open WebSocket a close frame, and every one accepted later (the
        handshake was on its way); the frames go out as tasks of their own (kept here:
        the loop holds only weak references to tasks)."""
        self.close_round = (code, reason)
        self.closing = [asyncio.ensure_future(close(code, reason))
                        for close in list(self.websockets.values())]

    async def lifespan(self, scope, receive, send):
        """The server's lifespan: the app's startup and the readiness check (unless `start`
        ran them already), then, at the end of the drain, the app's shutdown, bounded by
        what the drain has left."""
        await receive()  # lifespan.startup
        if self.app_lifespan is None:
            await self.start(scope)
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        await self.shutdown_app()
        await send({"type": "lifespan.shutdown.complete"})

    async def start(self, scope):
        """The app's startup, then the readiness check; a worker that fails either exits.

        A worker class calls it itself, before its server's lifespan, where that server
        bounds the startup by less than `graceful_readiness_timeout` (see asgi_native)."""
        state = scope.setdefault("state", {})
        state[STATE_KEY] = self.worker.draining
        self.app_lifespan = AppLifespan(self.app, scope, self.worker)
        failure = await self.app_lifespan.startup()
        if failure is None:
            failure = await self.worker.prove_ready(self.app, state)
        if failure is not None:
            self.worker.refuse(failure)
            await self.app_lifespan.shutdown(self.worker.settings.lifespan_shutdown_timeout)
            self.worker.exit_not_ready()
        self.worker.became_ready()

    async def shutdown_app(self):
        """The app's lifespan shutdown (once), bounded by what the drain has left."""
        if self.app_lifespan is not None:
            await self.app_lifespan.shutdown(self.worker.lifespan_time_left())


class Socket:
    """One WebSocket between the app and the server, as the guard sees it: sent exactly one
    close frame (none once the app closed it or the client left; its own at once when
    accepted after the drain's close round), and, where the server stops reading once a
    close frame went out (Gunicorn 24 and 25, `HEARS_CLOSE_REPLY`), the app is told the
    client left instead of waiting in receive() until the cut."""

    def __init__(self, guard, call, receive, send):
        self.guard, self.call, self._receive, self._send = guard, call, receive, send
        self.key = None
        self.closed = False  # a close frame went out (the app's or this worker's), or the client left
        self.gone = None if guard.worker.HEARS_CLOSE_REPLY else \
            asyncio.get_running_loop().create_future()

    async def close(self, code, reason):
        """This worker's close frame, unless one went out already."""
        if not self.closed:
            self._closing(code)
            await self._send({"type": "websocket.close", "code": code, "reason": reason})

    def _closing(self, code):
        self.closed = True
        self.guard.websockets.pop(self.key, None)
        if self.gone is not None and not self.gone.done():
            self.gone.set_result(code)

    async def send(self, message):
        kind = message["type"]
        if self.closed and kind in ("websocket.send", "websocket.close"):
            return  # moot: the socket is closing
        if kind == "websocket.close":
            self._closing(message.get("code", 1000))
        await self._send(message)
        if kind == "websocket.accept":
            guard = self.guard
            if guard.slot is not None:
                guard.slot.websocket(True)
            self.key = guard.registry.add(self.call)
            guard.websockets[self.key] = self.close
            if guard.close_round is not None:
                guard.closing.append(asyncio.ensure_future(self.close(*guard.close_round)))

    async def receive(self):
        message = await (self._receive() if self.gone is None else self._receive_or_gone())
        if message["type"] == "websocket.disconnect":
            self._closing(message.get("code", 1005))
        return message

    async def _receive_or_gone(self):
        receiving = asyncio.ensure_future(self._receive())
        done, _ = await asyncio.wait({receiving, self.gone}, return_when=asyncio.FIRST_COMPLETED)
        if receiving in done:
            return receiving.result()
        receiving.cancel()
        return {"type": "websocket.disconnect", "code": self.gone.result()}

    def forget(self):
        """The app's handler ended."""
        if self.key is not None:
            self.guard.websockets.pop(self.key, None)
            self.guard.registry.end(self.key)
            if self.guard.slot is not None:
                self.guard.slot.websocket(False)


class AppLifespan:
    """The app's side of the lifespan protocol, run as a task of its own.

    An app that raises before it asked for its first message does not speak
    lifespan (uvicorn and Gunicorn treat it the same way): it starts as ready.
    """

    def __init__(self, app, scope, worker):
        self.app, self.scope, self.worker = app, scope, worker
        self.inbox, self.outbox = asyncio.Queue(), asyncio.Queue()
        self.asked = False
        self.started = False
        self.task = None

    async def _receive(self):
        self.asked = True
        return await self.inbox.get()

    async def _run(self):
        await self.app(self.scope, self._receive, self.outbox.put)

    async def _reply(self, timeout=None):
        """The app's next message, or None when it returned or raised (or `timeout` ran out)."""
        getter = asyncio.ensure_future(self.outbox.get())
        done, _ = await asyncio.wait({getter, self.task}, timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            return getter.result()
        getter.cancel()
        return None

    async def startup(self):
        """None when the app started (or has no lifespan), else why it failed."""
        self.task = asyncio.ensure_future(self._run())
        self.inbox.put_nowait({"type": "lifespan.startup"})
        reply = await self._reply()
        if reply is not None and reply["type"] == "lifespan.startup.complete":
            self.started = True
            return None
        if reply is not None:
            return "lifespan startup failed: %s" % _last_line(reply)
        error = self.task.exception()
        if error is not None and self.asked:
            return "lifespan startup raised %s" % readiness.describe(error)
        return None

    async def shutdown(self, timeout):
        """The app's shutdown, cancelled after `timeout` seconds (one WARNING then)."""
        if not self.started:
            return
        self.started = False
        started = time.monotonic()
        self.inbox.put_nowait({"type": "lifespan.shutdown"})
        reply = await self._reply(timeout=max(timeout, 0.0))
        if reply is None and not self.task.done():
            self.task.cancel()
            emit(self.worker.log, "warning", "lifespan.shutdown_timeout", pid=self.worker.pid,
                 timeout=max(timeout, 0.0),
                 reason="the app's lifespan shutdown did not finish in time; cancelled")
        elif reply is not None and reply["type"] == "lifespan.shutdown.failed":
            emit(self.worker.log, "error", "lifespan.shutdown_failed", pid=self.worker.pid,
                 reason=_last_line(reply))
        emit(self.worker.log, "info", "lifespan.shutdown", pid=self.worker.pid,
             duration=time.monotonic() - started)


def _closing(headers):
    """`headers` with `Connection: close` as their only connection header: an app's own
    (keep-alive, or close already) is replaced, not repeated."""
    return [header for header in headers if header[0].lower() != b"connection"] + [_CLOSE]


def _last_line(reply):
    """A lifespan failure's message in one line: Starlette sends the whole traceback, whose
    last line says what failed."""
    lines = (reply.get("message") or "").strip().splitlines()
    return lines[-1] if lines else "no message"

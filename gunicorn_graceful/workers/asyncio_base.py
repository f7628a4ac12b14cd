"""The graceful life of an asyncio (ASGI) worker, whichever server runs the connections.

Gunicorn's asgi worker and uvicorn's both wait for connections without
heartbeating (the master kills the worker at `timeout`), never close a
WebSocket with a code that tells the client why, and skip or delay the app's
lifespan shutdown when the drain runs out. Here the drain, in order:
1. SIGTERM: the worker says "draining" (state bit), the app's `Draining` is set,
   a heartbeat task keeps the master's timeout away until the worker exits;
2. stops accepting: on a full stop (the master closed the door) only once the
   listen queue is empty, so what waited there is served, then shuts the listener;
3. closes every open WebSocket: 1001 (going away) on a stop, 1012 (service
   restart) on a reload, a recycle or an upgrade; after
   `graceful_websocket_close_delay`, when the app wants to close its own first;
4. serves what is in flight, reporting once a second, until the cut:
   `graceful_timeout - graceful_lifespan_shutdown_timeout` after SIGTERM;
5. cuts what is left (one WARNING each, already logged before the cut);
6. runs the app's lifespan shutdown, bounded so the worker exits by graceful_timeout.

The server-specific steps (servers, connections, lifespan) are the few methods
each worker class defines; every override of a server's internals is there.
"""

import asyncio
import dataclasses
import errno
import os
import signal
import time

from gunicorn.arbiter import Arbiter

from gunicorn_graceful import asgi, listeners, settings, state
from gunicorn_graceful.events import emit
from gunicorn_graceful.workers import guard, health, readiness
from gunicorn_graceful.workers.base import GracefulMixin

_POLL = 0.05
_CUT_WAIT = 1.0  # after the cut: how long cancelled calls get to unwind
_CLOSE_REASONS = {"stop": "server stopping", "restart": "server restarting"}


def drain_budget(graceful_timeout, current):
    """What a drain keeps for the app's lifespan shutdown and for its own WebSocket closes,
    as (lifespan_shutdown_timeout, websocket_close_delay).

    The settings, unless together they leave the connections no time: then both shrink in
    proportion to half of graceful_timeout, the connections keeping the other half. Gunicorn
    and uvicorn-worker start with any graceful_timeout (uvicorn-worker's own tests use 1 s),
    so a short one is fitted, not refused; 0 (no drain) keeps the settings, as before."""
    lifespan, delay = current.lifespan_shutdown_timeout, current.websocket_close_delay
    reserved = lifespan + delay
    if graceful_timeout <= 0 or reserved < graceful_timeout:
        return lifespan, delay
    scale = graceful_timeout / 2.0 / reserved
    return round(lifespan * scale, 3), round(delay * scale, 3)


def fitted(cfg, current):
    """The settings with the drain budget fitted into graceful_timeout (`drain_budget`)."""
    lifespan, delay = drain_budget(cfg.graceful_timeout, current)
    return dataclasses.replace(current, lifespan_shutdown_timeout=lifespan,
                               websocket_close_delay=delay)


_warned = set()  # the fitted budgets this master has warned about


def check_settings(cfg, log):
    """In the master (Gunicorn's start and the pack's HUP check both call it): one WARNING
    for each budget it fits, not one per call."""
    current = settings.checked()
    budget, key = fitted(cfg, current), (cfg.graceful_timeout, current)
    if budget != current and key not in _warned:
        _warned.add(key)
        emit(log, "warning", "settings.warning", problem=(
            "graceful_lifespan_shutdown_timeout=%s plus graceful_websocket_close_delay=%s do "
            "not fit in graceful_timeout=%s: the drain keeps %ss for the lifespan shutdown "
            "and %ss for the app's own WebSocket closes; connections get %ss"
            % (current.lifespan_shutdown_timeout, current.websocket_close_delay,
               cfg.graceful_timeout, budget.lifespan_shutdown_timeout,
               budget.websocket_close_delay,
               round(cfg.graceful_timeout - budget.lifespan_shutdown_timeout, 3))))


def _quiet_shut_listener(loop, context):
    """A full stop shuts the listener (see `listeners`) a moment before SIGTERM reaches the
    worker: asyncio's accept then fails with EINVAL until the worker closes its servers,
    and would log a traceback each time. Anything else goes to the default handler."""
    error = context.get("exception")
    if isinstance(error, OSError) and error.errno == errno.EINVAL \
            and "_accept_connection" in repr(context.get("handle")):
        return
    loop.default_exception_handler(context)


class AsyncGracefulMixin(GracefulMixin):
    """The drain of an asyncio worker (see the module docstring).

    A subclass defines: APP_ATTRIBUTE (where its base keeps the app),
    CUT_QUIETLY (whether a cancelled call should end quietly, for servers that
    log a cancellation as an app error), HEARS_CLOSE_REPLY, asyncio_servers, open_connections,
    abort_connections and shutdown_lifespan.

    Kept-alive connections are not closed at drain start: a client may be sending its
    next request at that moment and would see a reset. Every response of a draining
    worker closes its connection (the guard adds `Connection: close`), and an idle one
    closes at its keepalive timeout.
    """

    APP_ATTRIBUTE = "wsgi"
    CUT_QUIETLY = False
    HEARS_CLOSE_REPLY = True  # the server tells the app when a client answered a close frame
    THREADED = False  # every request ends in the event loop's thread
    TAKES_HANDOFF = False

    def init_process(self):
        settings.set_current(fitted(self.cfg, settings.current()))  # as the master warned
        self.draining = asgi.draining()
        self.guard = None
        self.cut_at = self.deadline = self.drain_began = None
        self.heartbeat = self.first_steps = None
        super().init_process()

    def init_signals(self):
        """The base's signals, plus SIGTERM ending a booting worker at once: the event loop's
        own handler would only run once the app is imported and the loop turns."""
        super().init_signals()
        signal.signal(signal.SIGTERM, self.handle_exit)

    def handle_exit(self, sig, frame):
        """SIGTERM outside the server's own handling: only a booting worker acts on it."""
        self.exit_if_booting()

    def end_at_deadline(self):
        """The report's deadline is the cut (`cut_at`), which the event loop makes itself."""

    def check_loaded(self):
        self.limits.check_boot_size()

    def wrap_app(self):
        self.guard = guard.Guard(getattr(self, self.APP_ATTRIBUTE), self)
        setattr(self, self.APP_ATTRIBUTE, self.guard)

    def health_state(self):
        """`alive` stays true while an asyncio worker drains (see `start_drain`)."""
        if self.draining.is_set():
            return self.drain_health(self.draining.reason)
        return health.LAME_DUCK if self.lame_duck else health.SERVING

    def before_serving(self):
        """Not yet ready: the guard says so from inside the lifespan (`became_ready`)."""

    def became_ready(self):
        asyncio.get_running_loop().set_exception_handler(_quiet_shut_listener)
        super().became_ready()

    async def prove_ready(self, app, lifespan_state):
        """None when the app passed its readiness check, else the reason."""
        try:
            await readiness.check_asgi(app, self.settings, lifespan_state)
            return None
        except readiness.NotReady as exc:
            reason = readiness.describe(exc)
        except Exception as exc:  # an unexpected failure keeps its traceback
            self.log.exception("readiness check raised")
            reason = readiness.describe(exc)
        return reason

    def exit_not_ready(self):
        """End a worker that failed to start, from inside the lifespan, before any accept.

        Not through the server: Gunicorn 24-26's asgi worker takes a failed lifespan
        startup for "no lifespan support" and serves anyway, and a SystemExit raised in
        the lifespan task is swallowed by both servers. The master reads the reason from
        the heartbeat file (`refuse`) and rolls the generation back."""
        os._exit(Arbiter.WORKER_BOOT_ERROR)

    def quick_stop(self):
        """SIGINT/SIGQUIT, Gunicorn's quick stop, at any moment (a drain included): cut what
        is in flight and exit as the sync worker does (`handle_quit`). Not through the
        servers: Gunicorn's asgi worker would run its shutdown (our full drain), and uvicorn
        drains on SIGINT and ignores a SIGQUIT that follows SIGTERM, which Gunicorn sends on
        Ctrl-C during a stop."""
        if self.serving:
            for call in self.inflight.snapshot():
                call.cut = True
            self.abort_connections()  # their clients learn now, not from a 500 of the unwinding
        self.handle_quit(signal.SIGQUIT, None)

    def check_parent(self):
        """False once the master is gone: the worker then drains as on a restart."""
        self.notice_orphaned()
        return not self.orphaned

    def start_drain(self):
        """In the event loop: the drain begins now (idempotent).

        `alive` stays true: Gunicorn's asgi worker closes a kept-alive connection once
        `alive` is false, also right after a response that announced keep-alive, and a
        client sending its next request on it at that moment sees it dropped. Draining
        responses announce `Connection: close` instead (the guard)."""
        if self.heartbeat is not None:
            return
        now = self.drain_began = time.monotonic()
        self.deadline = now + self.cfg.graceful_timeout
        self.cut_at = self.deadline - self.settings.lifespan_shutdown_timeout
        state.mark_draining(self.tmp)
        self.draining.set("restart" if self.orphaned else self.stop_reason())
        self.drain.begin(self.cut_at, 0)
        self.heartbeat = asyncio.ensure_future(self._beat())
        self.first_steps = asyncio.ensure_future(self._first_steps())

    async def _first_steps(self):
        """Steps 2 and 3, at once: the server's own loop may notice SIGTERM only later."""
        await self.stop_accepting()
        await self.close_websockets()

    async def _beat(self):
        while True:
            self.notify()
            await asyncio.sleep(1.0)

    async def graceful_shutdown(self):
        """Steps 2 to 6 of the module docstring."""
        self.start_drain()
        try:
            await self.first_steps
            if not await self.wait_until(self.drained, self.cut_at):
                await self.cut()
            await self.shutdown_lifespan()
        finally:
            self.heartbeat.cancel()

    async def wait_until(self, condition, deadline):
        """Poll `condition` until it holds (True) or `deadline` (monotonic) passes (False)."""
        while not condition():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(_POLL)
        return True

    def drained(self):
        return not len(self.inflight) and not self.open_connections()

    async def stop_accepting(self):
        if self.draining.reason == "stop":
            await self.wait_until(lambda: not any(listeners.queued(s) for s in self.sockets),
                                  self.cut_at)
            for sock in self.sockets:
                listeners.shut(sock)
        await self.close_servers()

    async def close_servers(self):
        """Stop accepting, then close the asyncio servers, without dropping a client.

        A connection asyncio accepted just before `Server.close()` but has not yet given
        a transport fails to attach to the closed server, and asyncio drops it silently:
        the client, whose request was sent, gets a reset. So: no more accepts first,
        then a turn of the loop for those connections to attach, then the close."""
        loop = asyncio.get_running_loop()
        servers = self.asyncio_servers()
        for server in servers:
            for sock in server.sockets or ():
                loop.remove_reader(sock.fileno())
        for _ in range(2):  # one turn to make their transports, one for connection_made
            await asyncio.sleep(0)
        for server in servers:
            server.close()

    async def close_websockets(self):
        delay = self.settings.websocket_close_delay
        if delay and self.guard.websockets:
            await self.wait_until(lambda: not self.guard.websockets,
                                  min(time.monotonic() + delay, self.cut_at))
        code = self.draining.close_code
        if self.guard.websockets:
            emit(self.log, "info", "drain.websockets_close", pid=self.pid,
                 websockets=len(self.guard.websockets), code=code)
        self.guard.close_websockets(code, _CLOSE_REASONS[self.draining.reason])

    async def cut(self):
        """The deadline for connections: end every call still running, each named first
        (the reporter's thread may be late: its lines must not depend on it)."""
        self.drain.cut()
        calls = self.inflight.snapshot()
        for call in calls:
            call.cut = True
        self.abort_connections()
        for call in calls:
            if call.task is not None and not call.task.done():
                call.task.cancel()
        await self.wait_until(lambda: not len(self.inflight), time.monotonic() + _CUT_WAIT)

    def lifespan_time_left(self):
        """What the app's lifespan shutdown may take: its setting, within the deadline."""
        budget = self.settings.lifespan_shutdown_timeout
        if self.deadline is None:
            return budget
        return max(min(budget, self.deadline - time.monotonic()), 0.0)

    def drain_fields(self):
        """What the drain lines add for an ASGI worker: long-lived calls by kind."""
        calls = self.inflight.snapshot()
        return {"websockets": sum(1 for c in calls if c.kind == "websocket"),
                "streams": sum(1 for c in calls if c.kind == "stream")}

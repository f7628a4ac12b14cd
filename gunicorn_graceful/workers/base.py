"""The graceful base every worker class shares: a drain that loses no request and says what it does.

The overrides of Gunicorn's worker internals are in the class files (`wsgi.py`,
`asgi_native.py`, `asgi_uvicorn.py`; the master's in `master/arbiter.py`); this
base only adds behaviour around them. Each method is small and says why it exists.
"""

import errno
import os
import select
import signal
import sys
import threading
import time

from gunicorn.arbiter import Arbiter

from gunicorn_graceful import counters, forked, handoff, listeners, release, settings, state
from gunicorn_graceful.events import emit
from gunicorn_graceful.workers import health, inflight, limits, readiness

_QUICK_EXIT = 0.9  # a quick stop: how long the unwinding may take before the process just ends
# A WSGI worker ends itself this long before graceful_timeout, so that its cut comes before the
# master's SIGKILL and the lines naming what it cut are true (the master's count starts first).
CUT_MARGIN = 0.25
_MIN_IDLE = 0.5  # seconds a connection from the queue may stay silent, at least (`first_byte`)


class GracefulMixin:
    """Drain, readiness and reporting, shared by both worker kinds.

    Life of a worker: booting (app loads, readiness check) -> ready (state bit
    set, master nudged) -> lame duck (SIGUSR2 from the master: keep serving,
    health answers 503, every response closes its connection) -> draining
    (SIGTERM: stop accepting, serve what is in flight and what already waits in
    the accept queue, report every second) -> stopped (one closing line).

    SIGTERM while booting ends the worker at once: it has accepted nothing, and
    the master must never have to SIGKILL a worker that may have. A worker whose
    master died (SIGKILL, OOM) drains as on SIGTERM instead of serving on.
    """

    LAME_DUCK_SIGNAL = signal.SIGUSR2
    # Whether the master hands what waits at a full stop to these workers (`handoff`): the
    # WSGI workers take it one connection at a time; an event loop accepts the whole queue
    # itself, then shuts the listener (`asyncio_base.stop_accepting`).
    TAKES_HANDOFF = True
    THREADED = True  # requests may end in several threads (see inflight.Registry)
    REGISTERS_AROUND_HANDLE_REQUEST = False  # the WSGI workers (`wrap_app`)

    # The pack's own state, in slots: CPython (3.11-3.13) keeps an instance's attributes in
    # the fast shared-keys layout only up to 30 names, and Gunicorn's gthread worker has 27
    # of its own; past that every `self.x` on the request path, Gunicorn's too, is a dict
    # lookup. `registers`: whether this worker registers its requests around
    # handle_request (set once its app is loaded, `wrap_app`).
    __slots__ = ("settings", "serving", "limits", "inflight", "drain", "backlog", "full_stop",
                 "lame_duck", "orphaned", "registers")

    @classmethod
    def check_config(cls, cfg, log):
        """Gunicorn's checks, and HTTP/2 refused in one line: its connections bypass the
        request path the pack hooks (lame duck's `Connection: close`, which HTTP/2 forbids,
        recycling's count), and a stop would need a GOAWAY the pack does not send."""
        settings.checked()
        protocols = getattr(cfg, "http_protocols", None) or ["h1"]
        if "h2" in protocols:
            raise SystemExit("Error: gunicorn-graceful: http_protocols=%s is not supported by "
                             "the pack's workers (allowed: h1)" % ",".join(protocols))
        parent = super()
        if hasattr(parent, "check_config"):
            parent.check_config(cfg, log)

    def init_process(self):
        if settings.installed() and not getattr(self.cfg.on_starting, "graceful_hook", False):
            self.refuse("on_starting is defined after install(globals()) and replaced the "
                        "pack's: the master runs without gunicorn-graceful; define hooks "
                        "before install(globals())")
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
        forked.close_stale()
        if forked.slot is not None:
            forked.slot.adopt(self.THREADED)
            forked.slot.forget_fd()
        release.enter(forked.release, settings.current().release_link)
        self.settings = settings.current()
        self.serving = False
        self.limits = limits.WorkerLimits(self)
        self.inflight = inflight.Registry(threads=self.THREADED)
        self.drain = inflight.DrainReporter(
            self.log, self.inflight, self.pid, self.settings.drain_log_interval,
            self.settings.deadline_warning, idle=self.idle_connections,
            reading=self.reading_connections, extra=self.drain_fields,
            held=self.held_connections, at_deadline=self.end_at_deadline)
        self.backlog = {}   # retiring: listener -> how many waited when SIGTERM came
        self.full_stop = False  # SIGTERM found the door closed (`take_share`)
        self.lame_duck = False
        self.orphaned = False  # the master is gone (`notice_orphaned`)
        self.registers = False
        health.quiet(self.log, self.settings)
        super().init_process()

    def load_wsgi(self):
        """Load the app, prove it ready, then track its requests.

        A failure leaves its reason in the heartbeat file for the master's
        ERROR line. A failed readiness check is an expected outcome: one ERROR
        line and a boot-error exit, no traceback; anything else keeps Gunicorn's
        own boot-failure handling, traceback included.
        """
        try:
            super().load_wsgi()
            self.check_loaded()
        except (readiness.NotReady, settings.SettingError) as exc:
            self.refuse(readiness.describe(exc))
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
        except BaseException as exc:
            state.write_reason(self.tmp, readiness.describe(exc))
            raise
        self.wrap_app()

    def check_loaded(self):
        """The app is loaded: is it ready? (The ASGI workers ask inside the lifespan.)"""
        readiness.check(self.wsgi, self.settings)
        self.limits.check_boot_size()

    def wrap_app(self):
        """Track each request: around Gunicorn's handle_request where the worker can
        (`registers` below: no wrapper on the app), else, and with metrics on (the status
        is read from start_response), by wrapping the app."""
        slot = counters.mine()
        self.registers = slot is None and self.REGISTERS_AROUND_HANDLE_REQUEST
        app = self.wsgi if self.registers else inflight.track(self.wsgi, self.inflight, slot)
        self.wsgi = health.wrap(app, self.settings, self.health_state)

    def refuse(self, reason):
        """Not ready: the reason for the master's rollback line, and one ERROR line here."""
        state.write_reason(self.tmp, reason)
        emit(self.log, "error", "worker.not_ready", pid=self.pid, reason=reason)

    def health_state(self):
        if not self.alive:
            return self.drain_health(self.stop_reason())
        return health.LAME_DUCK if self.lame_duck else health.SERVING

    def stop_reason(self):
        """A full stop closed the listeners' door; anything else is a restart."""
        return "stop" if any(listeners.door_closed(s) for s in self.sockets) else "restart"

    def drain_health(self, reason):
        """What a draining worker's probe says. Replaced while the service serves on (a
        HUP, a USR2 hand-over, recycling), it still answers what waited in the queue
        for it, and a probe among that speaks for the service: retiring, a 200, not a
        503 that takes the backend out. A full stop, or an orphan (no master replaces
        it): draining, a 503."""
        if reason == "restart" and not self.orphaned:
            return health.RETIRING
        return health.DRAINING

    def init_signals(self):
        """Gunicorn's worker signals, plus SIGUSR2 for lame duck (by default it kills a
        worker), and SIGINT left to the master under graceful_int = "drain" (`handle_int`)."""
        super().init_signals()
        signal.signal(self.LAME_DUCK_SIGNAL, self.handle_lame_duck)
        signal.siginterrupt(self.LAME_DUCK_SIGNAL, False)
        if self.drains_on_int():
            signal.signal(signal.SIGINT, self.handle_int)

    def drains_on_int(self):
        return self.settings.int == "drain"

    def handle_int(self, sig, frame):
        """SIGINT under graceful_int = "drain": nothing; the master drains this worker.

        The master never sends a worker SIGINT: this one came from outside, and what
        sends it reaches the master too (Ctrl-C signals the whole process group, so does
        `pkill -INT`). The master's stop then runs as on SIGTERM: lame duck, the door
        closed, then SIGTERM to each worker. A worker draining on its own SIGINT would
        skip all three (measured as SIGTERM to the group: 1-4 of ~2,300 requests reset
        in 2 of 6 runs). A handler, not SIG_IGN: the app's subprocesses get the default."""

    def handle_lame_duck(self, sig, frame):
        """SIGUSR2 from the master: keep serving, but tell clients and balancers to go."""
        self.lame_duck = True

    def run(self):
        self.drain.start()
        try:
            self.before_serving()
            super().run()
            self.serve_backlog()
        finally:
            drained, slot = self.drain.finish(), counters.mine()
            if drained is not None and slot is not None:
                slot.drained(*drained)

    def before_serving(self):
        """The app is loaded and checked: the WSGI workers are ready now."""
        self.became_ready()

    def became_ready(self):
        """From now on SIGTERM drains instead of ending the worker; the master may count it."""
        self.serving = True
        if self.alive:
            state.mark_ready(self.tmp, self.ppid)

    def idle_connections(self):
        return 0

    def drain_fields(self):
        return {}

    def reading_connections(self):
        return 0

    def held_connections(self):
        """(stage, peer) of each connection this worker holds outside the app, for the cut:
        at a full stop, what still waits for a worker is taken and named too (the cut
        ends it: no worker is left to serve it)."""
        held = []
        if self.stopping():
            queued = self.next_queued()
            for _ in range(listeners.TAKE_LIMIT):
                if queued is None:
                    break
                held.append(("queued", describe_peer(queued[2])))
                queued[1].close()
                queued = self.next_queued()
        return held

    def end_at_deadline(self):
        """The drain's deadline (graceful_timeout less CUT_MARGIN): the WSGI workers end here,
        what they cut named just before and counted (with metrics on); the asyncio classes
        cut on their own clock."""
        slot = counters.mine()
        if slot is not None:
            slot.drained(time.monotonic() - self.drain.started, len(self.inflight))
        os._exit(0)

    def exit_if_booting(self):
        """SIGTERM while booting (importing the app, running the readiness check): the
        worker has accepted nothing and holds no request, so it exits at once, from
        wherever it is. `os._exit`, because a SystemExit raised in a signal handler can
        land in a finalizer (importlib's module-lock callbacks), where Python swallows
        it and the import goes on. Every class's SIGTERM path calls this first."""
        if not self.serving:
            os._exit(0)

    def handle_exit(self, sig, frame):
        """SIGTERM: start draining (`exit_if_booting` first). Runs in a signal handler: no
        lock, no thread start."""
        self.exit_if_booting()
        if self.alive:
            self.start_drain()
        super().handle_exit(sig, frame)

    def start_drain(self):
        """Signal-safe, once (the sync worker's signal thread may have begun it already)."""
        if not self.drain.draining:
            self.take_share()
            self.begin_drain()

    def begin_drain(self):
        """Signal-safe: say "draining" to the master and start the drain report."""
        state.mark_draining(self.tmp)
        deadline = time.monotonic() + max(self.cfg.graceful_timeout - CUT_MARGIN, 0.0)
        self.drain.begin(deadline, self.waiting())

    def waiting(self):
        """What waits to be served when the drain begins: at a full stop, for the whole
        service (what the master handed over and what is left in the accept queue: every
        worker serves it); retiring, this worker's share."""
        if self.stopping():
            pair = handoff.shared
            return (pair.handed() if pair is not None else 0) + sum(
                listeners.queued(lnr) for lnr in self.sockets if listeners.door_closed(lnr))
        return sum(self.backlog.values())

    def stopping(self):
        """Whether this drain is a full stop: the door was closed when SIGTERM came."""
        return self.full_stop

    def take_share(self):
        """Retiring (HUP, recycling, an orphan: the door stays open and the socket with the
        other workers): at most what waits now, accepted after the loop (`take_backlog`).
        At a full stop nothing is taken here: every worker serves what waited, one
        connection at a time, once it has nothing else (`serve_queue`)."""
        for listener in self.sockets:
            if listeners.door_closed(listener):
                self.full_stop = True
            else:
                self.backlog[listener] = listeners.queued(listener)

    def is_parent_alive(self):
        """Gunicorn's check, called in the run loop; an orphan drains as on SIGTERM, but
        takes no share of the accept queue: what waits there belongs to whoever still
        listens (a new master of a USR2), not to the old code.

        Stock Gunicorn only leaves the loop: the thread worker then keeps
        answering kept-alive clients without `Connection: close` until
        graceful_timeout, and resets them at the end.
        """
        if self.ppid == os.getppid() and not self.orphaned:
            return True  # each turn of the loop: no call more than Gunicorn's own check
        if self.notice_orphaned() and self.alive:
            self.begin_drain()
            super().handle_exit(signal.SIGTERM, None)
        return not self.orphaned

    def notice_orphaned(self):
        """Whether this call found the master gone (SIGKILL, OOM: the worker's parent
        changed), the first time only, with one WARNING line; `orphaned` stays set."""
        if self.orphaned or self.ppid == os.getppid():
            return False
        self.orphaned = True
        emit(self.log, "warning", "worker.orphaned", pid=self.pid, ppid=self.ppid,
             reason="master gone; draining")
        return True

    def handle_quit(self, sig, frame):
        """SIGINT/SIGQUIT (worker_int): a quick stop cuts what is in flight; say what.

        Gunicorn's SystemExit may be caught on its way out (its sync worker answers it with
        a 500 and goes on; so does an app's `except BaseException`, or an event loop that
        waits for its tasks): the timer ends the process within a second regardless."""
        self.report_cut("request.cut_quick")
        bound = threading.Timer(_QUICK_EXIT, os._exit, (0,))
        bound.daemon = True
        bound.start()
        super().handle_quit(sig, frame)

    def handle_abort(self, sig, frame):
        """SIGABRT (worker_abort, the master's timeout): say what is cut and where it hung."""
        self.report_cut("request.cut_timeout")
        super().handle_abort(sig, frame)

    def report_cut(self, event):
        requests = self.inflight.snapshot()
        inflight.log_requests(self.log, "warning", event, requests, self.pid)
        inflight.log_stacks(self.log, requests, self.pid)

    def accept(self, *args):
        """Gunicorn's accept, unless the master is gone or the listener was shut.

        An orphan must not take a new client: Gunicorn's sync worker checks its
        parent only once its accept loop runs dry, so it would serve new clients
        with the old code while a new master's workers wait for them. The master
        shuts an empty listener right after closing its door, and SIGTERM reaches
        the workers a moment later: a worker already woken for it gets EINVAL,
        which Gunicorn would raise and crash the worker on. (`*args`: the thread
        worker of Gunicorn 23 takes (server, listener).)
        """
        if self.ppid != os.getppid():
            self.is_parent_alive()  # drains as on SIGTERM: the run loop ends
            return None
        try:
            return super().accept(*args)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            return None

    def serve_backlog(self):
        """Hook for the sync worker, which must serve its share of the accept queue itself."""

    def serve_queue(self, serve_one, room=None):
        """A full stop: serve what waited, one connection at a time, until nothing waits or
        the deadline comes (`room`: how many more this worker can take now, if bounded).

        Every worker does this once it has nothing else, so the queue goes as fast as
        the workers together serve it, and a connection that holds one worker (a slow
        upload, a client that sends nothing) holds up nothing behind it."""
        for _ in range(listeners.TAKE_LIMIT):
            if (room is not None and room() <= 0) or self.drain.time_left() <= 0:
                return
            queued = self.next_queued()
            if queued is None:
                return
            serve_one(*queued)

    def next_queued(self):
        """(listener, client, addr) of the next connection that waited at a full stop: first
        from the master's hand-off, then what it could not hold, from the accept queue
        (the worker that finds it empty shuts it); None when nothing waits."""
        pair = handoff.shared
        taken = pair.take() if pair is not None else None
        if taken is not None:
            index, client = taken
            listener = self.sockets[index] if index < len(self.sockets) else self.sockets[0]
            return listener, client, _address(client)
        for listener in self.sockets:
            if listeners.door_closed(listener):
                taken = listeners.take_one(listener)
                if taken is not None:
                    return (listener,) + taken
        return None

    def first_byte(self, client, addr):
        """Whether `client`, taken from the queue at a stop, sent something within the time
        an idle connection gets (keepalive, at least _MIN_IDLE; the deadline at most). One
        that did not (a browser's preconnect, a port check) is closed with one line, so
        the worker goes on to the connections behind it."""
        wait = max(min(max(float(self.cfg.keepalive), _MIN_IDLE), self.drain.time_left()), 0.0)
        readable, _, _ = select.select([client], [], [], wait)
        if readable:
            return True
        emit(self.log, "info", "drain.idle_closed", pid=self.pid, peer=describe_peer(addr),
             waited=wait,
             reason="it sent nothing: the connections behind it are served")
        client.close()
        return False

    def take_backlog(self, serve_one):
        """Serve this worker's share of the queue (see `take_share`) with `serve_one`.

        A retiring worker accepts at most what waited when SIGTERM came: the
        bound keeps it from serving forever while the other workers keep the
        listener open and new connections keep coming.
        """
        for listener, count in self.backlog.items():
            for _ in range(count):
                try:
                    client, addr = listener.accept()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    if exc.errno == errno.ECONNABORTED:
                        continue
                    break
                serve_one(listener, client, addr)
        self.backlog = {}


def _address(client):
    """The peer of a connection received from the hand-off (what accept() would have said)."""
    try:
        return client.getpeername()
    except OSError:
        return ("-", "-")


def describe_peer(addr):
    """`host:port` of an address as a log field."""
    if isinstance(addr, tuple) and len(addr) >= 2:
        return "%s:%s" % addr[:2]
    return str(addr or "-")

"""Gunicorn's sync and gthread workers, plus a drain that loses no request and says what it does.

Every override of a worker internal of Gunicorn is in this file (the master's
are in `arbiter.py`). Each one is small and says why it exists.
"""

import errno
import os
import signal
import sys
import time

from gunicorn import util
from gunicorn.arbiter import Arbiter
from gunicorn.workers.gthread import ThreadWorker
from gunicorn.workers.sync import SyncWorker

from gunicorn_graceful import (compat, health, inflight, listeners, readiness, recycle, release,
                               settings, state)
from gunicorn_graceful.events import emit


def describe(exc):
    """The last line of a traceback: what an operator needs in one ERROR line."""
    text = str(exc).strip().splitlines()
    return "%s: %s" % (type(exc).__name__, text[-1]) if text else type(exc).__name__


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
    release = ""  # the release directory to load the app from; the master sets it before the fork

    def init_process(self):
        release.enter(self.release, settings.current().release_link)
        self.settings = settings.current()
        self.serving = False
        self.limits = recycle.WorkerLimits(self)
        self.inflight = inflight.Registry()
        self.drain = inflight.DrainReporter(
            self.log, self.inflight, self.pid, self.settings.drain_log_interval,
            self.settings.deadline_warning, idle=self.idle_connections)
        self.backlog = {}
        self.lame_duck = False
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
            readiness.check(self.wsgi, self.settings)
            self.limits.check_boot_size()
        except (readiness.NotReady, settings.SettingError) as exc:
            state.write_reason(self.tmp, describe(exc))
            emit(self.log, "error", "worker.not_ready", pid=self.pid, reason=describe(exc))
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
        except BaseException as exc:
            state.write_reason(self.tmp, describe(exc))
            raise
        self.wsgi = health.wrap(inflight.track(self.wsgi, self.inflight), self.settings,
                                self.health_state)

    def health_state(self):
        if not self.alive:
            return health.DRAINING
        return health.LAME_DUCK if self.lame_duck else health.SERVING

    def init_signals(self):
        """Gunicorn's worker signals, plus SIGUSR2 for lame duck (by default it kills a worker)."""
        super().init_signals()
        signal.signal(self.LAME_DUCK_SIGNAL, self.handle_lame_duck)
        signal.siginterrupt(self.LAME_DUCK_SIGNAL, False)

    def handle_lame_duck(self, sig, frame):
        """SIGUSR2 from the master: keep serving, but tell clients and balancers to go."""
        self.lame_duck = True

    def run(self):
        self.drain.start()
        self.serving = True
        if self.alive:
            state.mark_ready(self.tmp, self.ppid)
        try:
            super().run()
            self.serve_backlog()
        finally:
            self.drain.finish()

    def idle_connections(self):
        return 0

    def handle_exit(self, sig, frame):
        """SIGTERM: start draining. Runs in a signal handler: no lock, no thread start.

        Still booting (importing the app, running the readiness check), the
        worker has accepted nothing and holds no request: it exits at once, from
        wherever it is. `os._exit`, because a SystemExit raised here can land in
        a finalizer (importlib's module-lock callbacks), where Python swallows it
        and the import goes on.
        """
        if not self.serving:
            os._exit(0)
        if self.alive:
            state.mark_draining(self.tmp)
            self.backlog = {lnr: listeners.queued(lnr) for lnr in self.sockets}
            deadline = time.monotonic() + self.cfg.graceful_timeout
            self.drain.begin(deadline, sum(self.backlog.values()))
        super().handle_exit(sig, frame)

    def is_parent_alive(self):
        """Gunicorn's check, called in the run loop; an orphan drains as on SIGTERM.

        Stock Gunicorn only leaves the loop: the thread worker then keeps
        answering kept-alive clients without `Connection: close` until
        graceful_timeout, and resets them at the end.
        """
        if self.ppid == os.getppid():
            return True
        if self.alive:
            emit(self.log, "warning", "worker.orphaned", pid=self.pid, ppid=self.ppid,
                 reason="master gone; draining")
            self.handle_exit(signal.SIGTERM, None)
        return False

    def handle_quit(self, sig, frame):
        """SIGINT/SIGQUIT (worker_int): a quick stop cuts what is in flight; say what."""
        self.report_cut("request.cut_quick")
        super().handle_quit(sig, frame)

    def handle_abort(self, sig, frame):
        """SIGABRT (worker_abort, the master's timeout): say what is cut and where it hung."""
        self.report_cut("request.cut_timeout")
        super().handle_abort(sig, frame)

    def report_cut(self, event):
        requests = self.inflight.snapshot()
        inflight.log_requests(self.log, "warning", event, requests, self.pid)
        inflight.log_stacks(self.log, requests, self.pid)

    def serve_backlog(self):
        """Hook for the sync worker, which must serve its share of the accept queue itself."""

    def take_backlog(self, accept_one):
        """Accept, for each listener, at most what waited in its queue when SIGTERM came.

        The bound keeps a retiring worker from serving forever when other
        workers keep the listener open and new connections keep coming; on a
        full stop the master has closed the door, so the count is all there is.
        """
        for listener, count in self.backlog.items():
            for _ in range(count):
                if not accept_one(listener):
                    break
        self.backlog = {}


class GracefulSyncWorker(GracefulMixin, SyncWorker):
    """Gunicorn's sync worker that also serves what waited in the accept queue at SIGTERM."""

    def serve_backlog(self):
        for sock in self.sockets:
            sock.setblocking(False)
        self.take_backlog(self._accept_one)

    def _accept_one(self, listener):
        try:
            client, addr = listener.accept()
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            return exc.errno == errno.ECONNABORTED
        client.setblocking(True)
        util.close_on_exec(client)
        self.handle(listener, client, addr)
        return True

    def handle_request(self, listener, req, client, addr):
        """Gunicorn's, then the recycling limits (its own max_requests exit is disabled)."""
        try:
            return super().handle_request(listener, req, client, addr)
        finally:
            self.limits.after_request()


class GracefulThreadWorker(GracefulMixin, ThreadWorker):
    """Gunicorn's gthread worker that also serves what waited in the accept queue at SIGTERM.

    Gunicorn 27's gthread worker already answers requests that arrive on a
    kept-alive connection while it stops with `Connection: close`.
    """

    def idle_connections(self):
        return compat.idle_connections(self)

    def set_accept_enabled(self, enabled):
        """Gunicorn >= 27 calls this once with False when the worker stops: take the backlog first."""
        if not enabled and not self.alive:
            self.take_backlog(self._accept_one)
        super().set_accept_enabled(enabled)

    def handle_request(self, req, conn):
        """In lame duck every response closes its connection, so clients move elsewhere;
        after it, the recycling limits (Gunicorn's own max_requests exit is disabled)."""
        if self.lame_duck:
            req.must_close = True
        try:
            return super().handle_request(req, conn)
        finally:
            self.limits.after_request()

    def _accept_one(self, listener):
        before = self.nr_conns
        self.accept(listener)
        return self.nr_conns > before

"""The WSGI workers: Gunicorn's sync and gthread workers with the shared graceful base.

Every override of a sync or gthread worker internal of Gunicorn is in this file
(the shared drain, readiness and reporting are in `base.py`; the asyncio
classes' overrides in `asgi_native.py` and `asgi_uvicorn.py`). Each one is small
and says why it exists.
"""

import errno
import os
import signal

from gunicorn.workers.gthread import TConn, ThreadWorker
from gunicorn.workers.sync import SyncWorker

from gunicorn_graceful import compat
from gunicorn_graceful.workers import wakeup
from gunicorn_graceful.workers.base import GracefulMixin, describe_peer
from gunicorn_graceful.workers.inflight import Parsed


class GracefulSyncWorker(GracefulMixin, SyncWorker):
    """Gunicorn's sync worker that also serves what waited in the accept queue at SIGTERM."""

    REGISTERS_AROUND_HANDLE_REQUEST = True
    THREADED = False  # one request at a time, in the main thread: the registry needs no lock

    reading_peer = None  # the client whose request this worker is reading, if any

    def init_signals(self):
        """Gunicorn's (SIGTERM restarts an interrupted system call, so the app's read is not
        cut), with the drain begun from a thread the moment SIGTERM arrives (`wakeup`):
        a worker waiting for a slow client says it drains at once, and the master knows."""
        super().init_signals()
        wakeup.Watch(self.PIPE[1], {signal.SIGTERM: self.notice_term})

    def notice_term(self):
        """In the signal thread: the drain begins now (the handler follows, once the main
        thread is back in Python; beginning twice is a no-op)."""
        if self.alive and self.serving:
            self.start_drain()

    # On every request's path, these call Gunicorn's method by name: a super() call makes
    # an object per call (Python < 3.12), and the mixin before it defines neither method.

    def accept(self, listener):
        """Gunicorn's (a connection from `listener`, served) with the base's checks: not
        in an orphan, and EINVAL from a listener the master just shut is no crash. Done
        here rather than through Gunicorn's and the base's, which cost two calls per
        connection (the contract test pins what it copies)."""
        if self.ppid != os.getppid():
            self.is_parent_alive()  # drains as on SIGTERM: the run loop ends
            return
        try:
            client, addr = listener.accept()
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            return
        self._serve(listener, client, addr)

    def reading_connections(self):
        """One while the worker reads a request that has not reached the app yet."""
        return 1 if self.reading_peer is not None and not len(self.inflight) else 0

    def held_connections(self):
        """The client whose request is being read, and what still waits (the base's)."""
        reading = [("reading", describe_peer(self.reading_peer))] \
            if self.reading_connections() else []
        return reading + super().held_connections()

    def serve_backlog(self):
        """After the loop: at a full stop, what waited, with every other worker; retiring,
        this worker's share."""
        for sock in self.sockets:
            sock.setblocking(False)
        if self.stopping():
            self.serve_queue(self._serve_waited)
        else:
            self.take_backlog(self._serve)

    def _serve_waited(self, listener, client, addr):
        if self.first_byte(client, addr):
            self._serve(listener, client, addr)

    def _serve(self, listener, client, addr):
        """Gunicorn's handle, with the client noted while its request is read (the drain
        reports and names it, `held_connections`). No close_on_exec: Python's accept()
        makes the socket non-inheritable already (PEP 446, accept4 with SOCK_CLOEXEC);
        Gunicorn's call is two fcntl calls more."""
        client.setblocking(True)
        self.reading_peer = addr
        try:
            SyncWorker.handle(self, listener, client, addr)
        finally:
            self.reading_peer = None

    def handle_request(self, listener, req, client, addr):
        """Gunicorn's, in the in-flight registry (`wrap_app`), then the recycling limits
        (its own max_requests exit is disabled)."""
        request = None
        if self.registers:
            request = Parsed(req, addr)
            self.inflight._requests[request] = request  # Registry.add, inlined (hot path)
        try:
            return SyncWorker.handle_request(self, listener, req, client, addr)
        finally:
            if request is not None:
                self.inflight.end(request)
            limits = self.limits  # WorkerLimits.after_request, inlined (hot path)
            limits.served += 1
            if limits.served >= limits.check_from:
                limits.check()


class GracefulThreadWorker(GracefulMixin, ThreadWorker):
    """Gunicorn's gthread worker that also serves what waited in the accept queue at SIGTERM.

    Gunicorn 27's gthread worker already answers requests that arrive on a
    kept-alive connection while it stops with `Connection: close`.
    """

    REGISTERS_AROUND_HANDLE_REQUEST = True

    def idle_connections(self):
        return compat.idle_connections(self)

    def reading_connections(self):
        """Connections held but neither kept alive nor in the app: a request still being read."""
        return max(self.nr_conns - self.idle_connections() - len(self.inflight), 0)

    def set_accept_enabled(self, enabled):
        """Gunicorn >= 24 calls this once with False when the worker stops: what waits goes
        to the pool first (a full stop: as many as it has free threads, `fill_threads`)."""
        if not enabled and not self.alive:
            if self.stopping():
                self.fill_threads()
            else:
                self.take_backlog(self._serve)
        super().set_accept_enabled(enabled)

    def finish_request(self, *args):
        """Gunicorn's (in the main thread, once a request is done); at a full stop the
        thread it freed takes the next connection that waited."""
        ThreadWorker.finish_request(self, *args)
        if not self.alive and compat.THREAD_WORKER_ACCEPT_HOOK and self.stopping():
            self.fill_threads()

    def fill_threads(self):
        self.serve_queue(self._serve, room=self.free_threads)

    def free_threads(self):
        """Threads not serving a connection (kept-alive ones wait in the poller, not in one)."""
        return self.cfg.threads - (self.nr_conns - self.idle_connections())

    def handle_request(self, req, conn):
        """In lame duck every response closes its connection, so clients move elsewhere;
        after it, the recycling limits (Gunicorn's own max_requests exit is disabled)."""
        if self.lame_duck:
            req.must_close = True
        request = None
        if self.registers:
            request = Parsed(req, conn.client)
            self.inflight._requests[request] = request  # Registry.add, inlined (hot path)
        try:
            return ThreadWorker.handle_request(self, req, conn)
        finally:
            if request is not None:
                self.inflight.end(request)
            limits = self.limits  # WorkerLimits.after_request, inlined (hot path)
            limits.served += 1
            if limits.served >= limits.check_from:
                limits.check()

    def _serve(self, listener, client, addr):
        """Through Gunicorn's own accept path (counting, connection, thread pool), past the
        base's orphan check: this worker took the connection already (from the queue or
        the hand-off), and no one else would serve it, also once the master is gone."""
        ThreadWorker.accept(self, _Accepted(listener, client, addr))

    def serve_backlog(self):
        """Where the loop has no stop hook (`compat.THREAD_WORKER_ACCEPT_HOOK`): at a full
        stop, what the master handed over, served after the loop, one at a time in this
        thread (the pool is shut by then); each answer closes its connection (the worker is
        not alive). The loop closed its listeners: a retiring worker leaves the queue to
        the others, and what the hand-off could not hold is left to the deadline."""
        if not compat.THREAD_WORKER_ACCEPT_HOOK and self.stopping():
            self.serve_queue(self._serve_waited_after_loop)

    def _serve_waited_after_loop(self, listener, client, addr):
        if self.first_byte(client, addr):
            self._serve_after_loop(listener, client, addr)

    def _serve_after_loop(self, listener, client, addr):
        conn = TConn(self.cfg, client, addr, client.getsockname())
        conn.init()
        try:
            self.handle(conn)
        finally:
            conn.close()


class _Accepted:
    """A listener whose accept() returns a connection this worker accepted already."""

    def __init__(self, listener, client, addr):
        self.listener, self.client, self.addr = listener, client, addr

    def accept(self):
        return self.client, self.addr

    def getsockname(self):
        return self.listener.getsockname()

"""The metrics endpoint: an HTTP server in a thread of the master, on a listener of its own.

It answers while every worker is busy, hung or draining (see `metrics` for what it
serves). Every child the master forks closes its copy of the listener at fork
(`close_in_children`). A pause before an in-place exec or an old master's exit
accepts nothing more and lets the scrapes being answered finish: the next code or
the new master serves the same listener, so a scrape between the two waits in its
queue. The master reaches this module through its system port (`system.System`),
which the simulation replaces: a real bind, thread and fork handler per simulated
example would pile up in the test process.
"""

import http.server
import os
import socket
import sys
import threading
import time

from gunicorn_graceful import events
from gunicorn_graceful.events import emit


class Endpoint:
    """One bound endpoint serving `metrics` (a `metrics.Metrics`)."""

    def __init__(self, metrics, bind, fd=None):
        """Bind `bind` (host:port), or serve `fd` as it is: the listener an in-place upgrade
        handed over (no scrape finds the port closed). A SystemExit naming the setting
        when it cannot be bound."""
        from prometheus_client import exposition  # noqa: F401  (not on the first scrape)
        host, _, port = bind.rpartition(":")
        address = (host.strip("[]") or "0.0.0.0", int(port))
        try:
            self.server = _Server(address, _Handler, bind_and_activate=fd is None)
        except (OSError, ValueError) as exc:
            raise SystemExit("Error: gunicorn-graceful: graceful_metrics_bind=%s cannot be "
                             "bound: %s" % (bind, exc)) from None
        if fd is not None:
            self.server.socket.close()
            self.server.socket = socket.socket(fileno=fd)
            self.server.server_name, self.server.server_port = address
        self.server.metrics = metrics
        close_in_children(self.server.fileno())
        self.server.busy, self.server.busy_lock = 0, threading.Lock()
        self.server.connections, self.server.closing = 0, False
        self.serve()

    def fileno(self):
        return self.server.fileno()

    def serve(self):
        thread = threading.Thread(target=self.server.serve_forever, args=(0.1,),
                                  name="graceful-metrics", daemon=True)
        thread.start()

    def pause(self, limit):
        """Accept nothing more, and for at most `limit` seconds let the scrapes being
        answered finish and a kept-alive scraper come back once more, to an answer that
        closes its connection."""
        self.server.closing = True
        self.server.shutdown()  # returns once serve_forever saw it (its poll: 0.1 s)
        deadline = time.monotonic() + limit
        while (self.server.busy or self.server.connections) and time.monotonic() < deadline:
            time.sleep(0.005)

    def resume(self):
        self.server.closing = False
        self.serve()


def close_in_children(fd):
    """Every child forked from now on closes `fd` (the endpoint's listener, or the one a new
    master inherited), while that number is still that socket."""
    identity = _identity(fd)
    os.register_at_fork(after_in_child=lambda: _close_in_child(fd, identity))


def _identity(fd):
    info = os.fstat(fd)
    return info.st_dev, info.st_ino


def _close_in_child(fd, identity):
    """In every child: close the endpoint's socket, but only while `fd` is still that socket.
    A handler cannot be unregistered, and a later fork (a mold's worker, a worker after a HUP
    moved the endpoint) may hold another file under the same number."""
    try:
        if _identity(fd) == identity:
            os.close(fd)
    except OSError:
        pass
    events.forget_observers()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64  # socketserver's 5 drops a burst's SYNs: each waits 1 s to retry

    def handle_error(self, request, client_address):
        """A scraper gone mid-answer (Prometheus closes at its scrape timeout) is no error;
        anything else is one ERROR line, not socketserver's traceback on stderr."""
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            return
        emit(self.metrics.arbiter.log, "error", "metrics.scrape_failed", pid=os.getpid(),
             peer=client_address, error=repr(error))


class _Handler(http.server.BaseHTTPRequestHandler):
    """GET /metrics: Prometheus text, or OpenMetrics when the scraper's Accept asks."""

    protocol_version = "HTTP/1.1"  # Prometheus keeps its connection from scrape to scrape
    timeout = 10  # a client that sends nothing does not keep its thread
    # The head and the body in one send, at once: written apart on a kept-alive connection,
    # the body waited for the client's delayed ACK of the head (Nagle): 40 ms a scrape.
    wbufsize = 1 << 16
    disable_nagle_algorithm = True

    def setup(self):
        """Counted while open: a pause waits for a kept-alive scraper's next scrape."""
        with self.server.busy_lock:
            self.server.connections += 1
        super().setup()

    def finish(self):
        try:
            super().finish()
        finally:
            with self.server.busy_lock:
                self.server.connections -= 1

    def do_GET(self):
        if self.path.split("?", 1)[0] != "/metrics":
            self.send_error(404, "only /metrics here")
            return
        with self.server.busy_lock:  # counted: an in-place exec waits for it (`pause`)
            self.server.busy += 1
        try:
            from prometheus_client.exposition import choose_encoder
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            body = encoder(_Registry(self.server.metrics))
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            if self.server.closing:  # paused (`pause`): the next scrape connects anew
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(body)
        finally:
            with self.server.busy_lock:
                self.server.busy -= 1

    def log_message(self, *args):
        """Scrapes are not logged: one a second from each Prometheus would drown the log."""


class _Registry:
    """What prometheus_client's encoders read: `collect()`."""

    def __init__(self, metrics):
        self.metrics = metrics

    def collect(self):
        return self.metrics.families()

"""What a worker is serving right now, and the reporter that logs a drain.

The registry sits on the hot path of every request, so registering is one dict
store (atomic under the GIL) and unregistering one dict pop plus a counter
bump (under an uncontended lock where requests end in several threads; an
event loop needs none). Reading takes a snapshot with `list()`,
atomic too, from any thread.
"""

import sys
import threading
import time
import traceback

from gunicorn import util

from gunicorn_graceful.events import emit, redact


class Request:
    """One request in flight. It keeps the WSGI environ and formats only when a report asks,
    so the hot path stores three references and nothing else."""

    __slots__ = ("environ", "started", "thread", "status")

    def __init__(self, environ):
        self.environ = environ
        self.started = time.monotonic()
        self.thread = threading.get_ident()
        self.status = None  # the status line, where the request is counted (`track`)

    def recording(self, start_response):
        """`start_response` that also notes the status line here."""
        def start(status, headers, exc_info=None):
            self.status = status
            return start_response(status, headers, exc_info)
        return start

    def status_code(self):
        try:
            return int(self.status[:3])
        except (TypeError, ValueError):
            return None  # no response started

    @property
    def method(self):
        return self.environ.get("REQUEST_METHOD", "-")

    @property
    def path(self):
        query = self.environ.get("QUERY_STRING")
        return redact(self.environ.get("PATH_INFO", "/") + ("?" + query if query else ""))

    @property
    def peer(self):
        return "%s:%s" % (self.environ.get("REMOTE_ADDR", "-"), self.environ.get("REMOTE_PORT", "-"))

    def age(self, now=None):
        return (now or time.monotonic()) - self.started


class Registry:
    """Requests in flight in this worker, and how many finished since the drain began."""

    def __init__(self, threads=True):
        """`threads`: requests end in several threads (gthread), so the count of finished
        ones takes a lock; in an event loop they all end in one thread."""
        self._requests = {}  # request -> request: the key is the object itself
        self._lock = threading.Lock() if threads else None
        self.finished = 0

    def begin(self, environ):
        return self.add(Request(environ))

    def add(self, request):
        """Register `request`; it is its own key for `end`."""
        self._requests[request] = request
        return request

    def end(self, key):
        if self._requests.pop(key, None) is None:
            return
        if self._lock is None:
            self.finished += 1
        else:
            with self._lock:
                self.finished += 1

    def snapshot(self):
        """Requests in flight, oldest first."""
        return sorted(list(self._requests.values()), key=lambda r: r.started)

    def __len__(self):
        return len(self._requests)


class Parsed(Request):
    """A request registered around Gunicorn's `handle_request` (the WSGI workers, metrics
    off): made from Gunicorn's parsed request before any environ exists, so no wrapper
    sits between Gunicorn and the app. It ends when `handle_request` returns: after the
    last byte was written and the body closed, as a tracked one does."""

    __slots__ = ("req", "addr")

    def __init__(self, req, addr):
        self.req, self.addr, self.status = req, addr, None
        self.started = time.monotonic()
        self.thread = threading.get_ident()

    @property
    def method(self):
        return self.req.method or "-"

    @property
    def path(self):
        """As PATH_INFO would say it (percent-decoded, as Gunicorn's environ), when asked."""
        query = self.req.query
        return redact(util.unquote_to_wsgi_str(self.req.path or "/")
                      + ("?" + query if query else ""))

    @property
    def peer(self):
        if isinstance(self.addr, tuple) and len(self.addr) >= 2:
            return "%s:%s" % self.addr[:2]
        return str(self.addr or "-")


class _Tracked(Request):
    """A WSGI request in flight and the response iterable the server gets, in one object:
    it sits on every request's path, so one object is made per request, not two.
    Closing it (Gunicorn does, after the last byte) ends the request in the registry
    and counts it in the worker's metrics slot, if any."""

    __slots__ = ("registry", "body", "slot")

    def __iter__(self):
        return iter(self.body)

    def close(self):
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            self.end()

    def end(self, status=None):
        """Out of the registry, and counted in the slot (if any): the last of this request."""
        self.registry.end(self)
        if self.slot is not None:
            self.slot.ended(status or self.status_code(), self.started)


def track(app, registry, slot=None):
    """Wrap a WSGI app so that every call is in the registry until its body is closed, and,
    with a metrics slot (`counters`), is then counted there by status class and duration.

    One wrapper for both, since it sits on every request's path. Gunicorn closes
    the body after the last byte is written, so a request stays listed while its
    response streams out. A `wsgi.file_wrapper` body is passed through as itself
    (Gunicorn sends only its own class with sendfile), its close wrapped to end
    the request after the last byte too. An app that raises counts as the 500
    Gunicorn answers.
    """
    requests = registry._requests

    def tracked(environ, start_response):
        request = _Tracked(environ)
        request.registry, request.slot = registry, slot
        requests[request] = request  # Registry.add, without a call on the hot path
        if slot is not None:
            slot.started()
            start_response = request.recording(start_response)
        try:
            body = app(environ, start_response)
        except BaseException:
            request.end(500)
            raise
        if body.__class__ is not list:  # most apps answer a list: never a file wrapper
            wrapper = environ.get("wsgi.file_wrapper")
            if wrapper is not None and isinstance(wrapper, type) and isinstance(body, wrapper):
                return _ending_on_close(body, request)
        request.body = body
        return request
    return tracked


def _ending_on_close(body, request):
    """`body` (a file wrapper), whose close, which Gunicorn calls once the file is sent,
    also ends `request`."""
    close = getattr(body, "close", None)

    def closing():
        try:
            if close is not None:
                close()
        finally:
            request.end()
    body.close = closing
    return body


def log_requests(log, level, event, requests, pid, **extra):
    """One line per request: what an operator needs to find it in the access log."""
    now = time.monotonic()
    for request in requests:
        kind = {"kind": request.kind} if hasattr(request, "kind") else {}
        emit(log, level, event, pid=pid, method=request.method, path=request.path,
             peer=request.peer, age=request.age(now), **kind, **extra)


def log_stacks(log, requests, pid):
    """The Python stack of every thread serving a request, for a worker about to die."""
    frames = sys._current_frames()
    for request in requests:
        frame = frames.get(request.thread)
        if frame is not None:
            stack = "".join(traceback.format_stack(frame)).rstrip().replace("\n", " | ")
            emit(log, "warning", "request.stack", pid=pid, method=request.method,
                 path=request.path, stack=stack)


class DrainReporter:
    """Logs a worker's drain from a thread of its own, so a busy sync worker still reports.

    The thread starts at boot and sleeps, because starting a thread from a
    signal handler can deadlock; `begin()` only sets an Event and is safe to
    call from the SIGTERM handler. Then, every `interval`: one INFO line with
    what is in flight; `warn_before` seconds before the deadline: one WARNING
    per request about to be cut (`drain.cut_soon`); at the deadline, one
    `drain.cut` per request and connection still held, which is what the cut
    ends (`at_deadline`: the worker ends itself there). `finish()` ends it with
    one closing line.

    A worker that cuts on its own clock (the asyncio classes) calls `cut()` before it
    ends a call: the lines are then written from what was in flight, whichever of the
    two threads reaches the deadline first, and only once.
    """

    def __init__(self, log, registry, pid, interval, warn_before, idle=lambda: 0,
                 reading=lambda: 0, extra=dict, held=list, at_deadline=None):
        self.log, self.registry, self.pid = log, registry, pid
        self.interval, self.warn_before, self.idle = interval, warn_before, idle
        self.reading = reading  # connections still sending their request (not in the app yet)
        self.extra = extra  # more fields for the start and progress lines (ASGI: by kind)
        self.held = held  # (stage, peer) of each connection held that is not a request yet
        self.at_deadline = at_deadline  # called once the deadline's cut is logged (the end)
        self.started = self.deadline = self.cut_requests = None
        self.queued = self._served_before = 0
        self._cut_lock = threading.Lock()
        self._begun = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="graceful-drain", daemon=True)

    def start(self):
        self._thread.start()

    def begin(self, deadline, queued):
        """Signal-safe: the drain starts now and must end by `deadline` (monotonic)."""
        if self._begun.is_set():
            return
        self.started, self.deadline, self.queued = time.monotonic(), deadline, queued
        self._served_before = self.registry.finished
        self._begun.set()

    def time_left(self):
        """Seconds to the deadline; without a drain, no bound of its own (callers have one)."""
        if self.deadline is None:
            return float("inf")
        return self.deadline - time.monotonic()

    @property
    def draining(self):
        return self._begun.is_set()

    def _run(self):
        while not self._begun.wait(timeout=60.0):
            if self._done.is_set():
                return
        emit(self.log, "info", "drain.start", pid=self.pid, in_flight=len(self.registry),
             idle_conns=self.idle(), reading=self.reading(), queued=self.queued,
             time_left=self.deadline - self.started, **self.extra())
        warned = False
        while not self._done.is_set():
            now = time.monotonic()
            left = self.deadline - now
            if left <= 0:
                return self.cut()
            requests = self.registry.snapshot()
            warned = self._report(now, left, requests, warned)
            wait = self.interval
            if not warned and left > self.warn_before:
                wait = min(wait, left - self.warn_before)
            self._done.wait(max(min(wait, left), 0.01))

    def _report(self, now, left, requests, warned):
        reading = self.reading()
        fields = {"pid": self.pid, "in_flight": len(requests), "idle_conns": self.idle(),
                  "reading": reading, **self.extra(), "time_left": max(left, 0.0)}
        if requests:
            oldest = requests[0]
            fields.update(oldest_method=oldest.method, oldest_path=oldest.path,
                          oldest_age=oldest.age(now))
        emit(self.log, "info", "drain.progress", **fields)
        if not warned and (requests or reading) and left <= self.warn_before:
            log_requests(self.log, "warning", "drain.cut_soon", requests, self.pid,
                         time_left=max(left, 0.0))
            if reading:
                emit(self.log, "warning", "drain.cut_soon", pid=self.pid, reading=reading,
                     time_left=max(left, 0.0),
                     reason="clients still sending their request near the deadline")
            return True
        return warned

    def cut(self):
        """The deadline: one line for each request and connection it cuts, then the end.
        Once, from either thread: the one that comes second finds it done."""
        with self._cut_lock:
            if self.cut_requests is not None:
                return
            requests = self.registry.snapshot()
            self.cut_requests = len(requests)
        log_requests(self.log, "warning", "drain.cut", requests, self.pid)
        held = self.held()
        for stage, peer in held:
            emit(self.log, "warning", "drain.cut", pid=self.pid, peer=peer, stage=stage)
        reading = self.reading() - sum(1 for stage, _ in held if stage == "reading")
        if reading > 0:
            emit(self.log, "warning", "drain.cut_reading", pid=self.pid, reading=reading,
                 reason="clients still sending their request at the deadline")
        if self.at_deadline is not None:
            self.at_deadline()

    def finish(self):
        """Stop reporting and log the line that closes the drain; (its duration, what its
        deadline cut or else what it left in flight), or None if none began."""
        self._done.set()
        if not self._begun.is_set():
            return None
        self._thread.join(timeout=self.interval + 1.0)
        duration, left = time.monotonic() - self.started, len(self.registry)
        emit(self.log, "info", "drain.done", pid=self.pid, duration=duration,
             served=self.registry.finished - self._served_before, in_flight=left)
        return duration, left if self.cut_requests is None else self.cut_requests

"""Real HTTP load without retries (keep-alive and fresh connections), WebSocket clients."""

import asyncio
import collections
import contextlib
import threading
import time

import requests

from tests.harness.waits import wait_for

Result = collections.namedtuple("Result", "started ended ok kind status version path")


def classify(exc):
    """Name a client failure: refused and connect timeouts happen before a request was sent."""
    text = repr(exc)
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return "connect_timeout"
    if "ConnectionRefusedError" in text or "Connection refused" in text:
        return "refused"
    if isinstance(exc, requests.exceptions.Timeout):
        return "timeout"
    if "ConnectionResetError" in text or "Connection reset" in text:
        return "reset"
    if "RemoteDisconnected" in text or "BadStatusLine" in text:
        return "disconnected"
    return "other:" + type(exc).__name__


class Load:
    """A closed-loop load: half the threads on keep-alive sessions, half on new connections.

    No retries anywhere (requests' default adapter retries nothing). Bounded:
    it stops at `stop()`, after `max_seconds`, or after `max_requests`.
    """

    def __init__(self, url, threads=4, path="/", max_seconds=60, max_requests=200000,
                 timeout=30, slow_threads=0, slow_path="/slow?seconds=0.5"):
        self.url, self.path, self.timeout = url, path, timeout
        self.slow_path = slow_path
        self.results = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.deadline = time.monotonic() + max_seconds
        self.max_requests = max_requests
        self.threads = [threading.Thread(target=self._run, args=(i, i >= threads), daemon=True)
                        for i in range(threads + slow_threads)]

    def start(self):
        for thread in self.threads:
            thread.start()
        return self

    def _one(self, session, path):
        started = time.monotonic()
        try:
            if session is not None:
                response = session.get(self.url + path, timeout=(5, self.timeout))
            else:
                response = requests.get(self.url + path, timeout=(5, self.timeout),
                                        headers={"Connection": "close"})
            version = None
            if response.status_code == 200 and response.headers.get(
                    "Content-Type", "").startswith("application/json"):
                version = response.json().get("version")
            ok = response.status_code < 500
            return Result(started, time.monotonic(), ok, "ok" if ok else "5xx",
                          response.status_code, version, path)
        except requests.RequestException as exc:
            return Result(started, time.monotonic(), False, classify(exc), None, None, path)

    def _run(self, index, slow):
        """Even threads keep a session alive, odd ones open a connection per request.

        Slow threads only ask for `slow_path`: slow requests are always in
        flight, and the fast threads still show every gap in service.
        """
        session = requests.Session() if index % 2 == 0 else None
        path = self.slow_path if slow else self.path
        try:
            while not self._stop.is_set() and time.monotonic() < self.deadline:
                result = self._one(session, path)
                with self._lock:
                    self.results.append(result)
                    if len(self.results) >= self.max_requests:
                        return
        finally:
            if session is not None:
                session.close()

    def wait_count(self, count, timeout=30):
        wait_for(lambda: len(self.results) >= count, timeout, "%s load requests" % count)

    def stop(self):
        self._stop.set()
        for thread in self.threads:
            thread.join(timeout=self.timeout + 10)
        return self.results

    def failures(self, allow=()):
        return [r for r in self.results if not r.ok and r.kind not in allow]

    def summary(self):
        kinds = collections.Counter(r.kind for r in self.results)
        versions = collections.Counter(r.version for r in self.results if r.ok)
        return "requests=%s %s versions=%s" % (len(self.results), dict(kinds), dict(versions))


class Sockets:
    """WebSocket clients in a thread of their own: open, echo once, record the close code."""

    def __init__(self, url, count):
        self.url, self.count = url.replace("http://", "ws://") + "/ws", count
        self.echoes, self.codes = [], []
        self.opened = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._all()), daemon=True)

    def start(self):
        self.thread.start()
        assert self.opened.wait(15), "WebSockets did not open"
        return self

    async def _all(self):
        await asyncio.gather(*(self._one() for _ in range(self.count)))

    async def _one(self):
        # Imported here: this module is also the deploy demo's load generator, and the
        # [examples] install it runs under has no websockets.
        import websockets
        async with websockets.connect(self.url, open_timeout=10, close_timeout=5) as ws:
            await ws.send("hello")
            self.echoes.append(await asyncio.wait_for(ws.recv(), 10))
            if len(self.echoes) == self.count:
                self.opened.set()
            try:
                await asyncio.wait_for(ws.recv(), 60)
            except websockets.ConnectionClosed as closed:
                self.codes.append((closed.rcvd.code if closed.rcvd else None, time.monotonic()))

    def join(self, timeout=30):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "WebSocket clients still open"
        return [code for code, _ in self.codes]


@contextlib.contextmanager
def under_load(url, warmup=50, after=100, **load_args):
    """Run a `Load` around the block: the block starts once `warmup` requests were answered
    (the test acts: a signal, a log line to wait for); after it, `after` more requests run,
    then the load stops (also when the block fails) and its summary is printed."""
    load = Load(url, **load_args).start()
    try:
        load.wait_count(warmup)
        yield load
        load.wait_count(len(load.results) + after)
    finally:
        load.stop()
        print(load.summary())

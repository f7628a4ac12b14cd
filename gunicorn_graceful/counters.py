"""A worker's counts, in memory it shares with its master: no file, no lock between them.

With `graceful_metrics_bind` set, the master maps one small anonymous shared
page per worker just before forking it (`Slot`); the worker finds it as
`mine()` and adds to it on every request (`inflight.track`, `asgi`); the master reads every live slot
when scraped and, when the worker has exited, folds its last counts into its
own totals (`metrics`). So a counter never goes down when a worker is recycled,
crashes or is killed (even SIGKILL loses nothing: the counts are already in
shared memory), and the memory used is bounded by the live workers, whatever
the number of recycles (prometheus_client's multiprocess mode leaves a file per
dead pid).

Only the worker writes its slot; the master only reads, and a value it reads a
moment early is a count a scrape later shows. Counts are float64: exact to 2**53.
Threads of one worker share its slot, so a threaded worker adds under a lock.
"""

import bisect
import mmap
import os
import threading
import time

STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")

# Field offsets (in float64s) before the histogram buckets.
_STATUS = 0                      # requests by status class, then one for "other"
_IN_FLIGHT = len(STATUS_CLASSES) + 1
_WEBSOCKETS = _IN_FLIGHT + 1     # WebSocket sessions opened
_WEBSOCKETS_OPEN = _WEBSOCKETS + 1
_DRAIN_SECONDS = _WEBSOCKETS_OPEN + 1   # the drain's duration, once drained (-1 before)
_DRAIN_CUT = _DRAIN_SECONDS + 1         # requests the drain's deadline cut
_DURATION_SUM = _DRAIN_CUT + 1
_DURATION_COUNT = _DURATION_SUM + 1
_BUCKETS = _DURATION_COUNT + 1

_mine = None


def mine():
    """This worker's slot, or None when metrics are off (or in the master)."""
    return _mine


class Slot:
    """One worker's counts (see the module docstring); `buckets` are the histogram's upper
    bounds in seconds, +Inf implied."""

    def __init__(self, buckets, fd=None):
        """A new slot in the master; with `fd`, the one a mold's worker was handed."""
        self.buckets = tuple(buckets)
        size = max((_BUCKETS + len(self.buckets) + 1) * 8, mmap.PAGESIZE)
        new = fd is None
        if new and hasattr(os, "memfd_create"):  # a file a mold can pass on (`mold`)
            fd = os.memfd_create("gunicorn-graceful-counts", os.MFD_CLOEXEC)
            os.ftruncate(fd, size)
        self.fd = fd
        self._map = mmap.mmap(-1 if fd is None else fd, size)
        self._values = memoryview(self._map).cast("d")
        if new:
            self._values[_DRAIN_SECONDS] = -1.0
        self._lock = None

    def forget_fd(self):
        """Close the file; the mapping stays. A worker does once it mapped its slot; the
        master keeps each live worker's file until the worker is folded, for an in-place
        upgrade to hand it across its exec."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def adopt(self, threaded):
        """In the forked worker: this slot is the one it writes."""
        global _mine
        self._lock = threading.Lock() if threaded else None
        _mine = self

    # -- the worker's side (hot path: a few float stores) ---------------------------------

    def started(self):
        values = self._values
        if self._lock is None:
            values[_IN_FLIGHT] += 1
        else:
            with self._lock:
                values[_IN_FLIGHT] += 1
        return time.monotonic()

    def ended(self, status, began):
        """A request ended with `status` (an int, or None when no response started)."""
        seconds = time.monotonic() - began
        index = _STATUS + (status // 100 - 1 if status and 100 <= status < 600
                           else len(STATUS_CLASSES))
        bucket = _BUCKETS + bisect.bisect_left(self.buckets, seconds)  # le: bound >= seconds
        if self._lock is None:
            self._add(index, bucket, seconds)
        else:
            with self._lock:
                self._add(index, bucket, seconds)

    def _add(self, index, bucket, seconds):
        values = self._values
        values[_IN_FLIGHT] -= 1
        values[index] += 1
        values[bucket] += 1
        values[_DURATION_SUM] += seconds
        values[_DURATION_COUNT] += 1

    def websocket(self, opened):
        """A WebSocket session opened (True) or ended (False); the event loop's thread only."""
        if opened:
            self._values[_WEBSOCKETS] += 1
        self._values[_WEBSOCKETS_OPEN] += 1 if opened else -1

    def drained(self, seconds, cut):
        """At the end of the drain: how long it took and how many requests its deadline cut."""
        self._values[_DRAIN_CUT] += cut
        self._values[_DRAIN_SECONDS] = seconds

    # -- the master's side ------------------------------------------------------------------

    def read(self):
        """A copy of the counts (`Counts`)."""
        values = self._values.tolist()
        return Counts(
            requests=dict(zip(STATUS_CLASSES + ("other",), values[_STATUS:_IN_FLIGHT])),
            in_flight=values[_IN_FLIGHT], websockets=values[_WEBSOCKETS],
            websockets_open=values[_WEBSOCKETS_OPEN],
            drain_seconds=values[_DRAIN_SECONDS], drain_cut=values[_DRAIN_CUT],
            duration_sum=values[_DURATION_SUM], duration_count=values[_DURATION_COUNT],
            buckets=values[_BUCKETS:_BUCKETS + len(self.buckets) + 1])

    def close(self):
        self.forget_fd()
        self._values.release()
        self._map.close()


class Counts:
    """What a slot held when read; `add` sums another worker's (the master's totals)."""

    __slots__ = ("requests", "in_flight", "websockets", "websockets_open", "drain_seconds",
                 "drain_cut", "duration_sum", "duration_count", "buckets")

    def __init__(self, **fields):
        for name in self.__slots__:
            setattr(self, name, fields[name])

    @classmethod
    def zero(cls, buckets):
        return cls(requests=dict.fromkeys(STATUS_CLASSES + ("other",), 0.0), in_flight=0.0,
                   websockets=0.0, websockets_open=0.0, drain_seconds=-1.0, drain_cut=0.0,
                   duration_sum=0.0, duration_count=0.0, buckets=[0.0] * (len(buckets) + 1))

    def add(self, other, gauges=True):
        """Add `other`'s counters (and, with `gauges`, its in-flight and open counts)."""
        for key, value in other.requests.items():
            self.requests[key] += value
        self.websockets += other.websockets
        self.drain_cut += other.drain_cut
        self.duration_sum += other.duration_sum
        self.duration_count += other.duration_count
        self.buckets = [a + b for a, b in zip(self.buckets, other.buckets)]
        if gauges:
            self.in_flight += other.in_flight
            self.websockets_open += other.websockets_open

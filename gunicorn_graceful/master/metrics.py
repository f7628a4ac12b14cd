"""Prometheus metrics the master owns (graceful_metrics_bind), monotonic across restarts.

Invariants:
- The master owns the totals. Each worker counts into its own shared-memory
  slot (`counters`); a scrape sums the folded totals and every slot not yet
  folded, under one lock with the fold, so no count is ever in both or neither:
  a counter never goes down when a worker is recycled, crashes, is killed or is
  replaced by a HUP, whatever the moment of the scrape.
- A slot is folded in the master's tick once Gunicorn reaped its worker, then
  unmapped: the memory is bounded by the live workers.
- The endpoint runs in a thread of the master, on a listener of its own, so it
  answers while every worker is busy, hung or draining. The worker processes
  close their copy of it at fork. A new master of a USR2 inherits the listener
  (GRACEFUL_METRICS_FD) and serves it once promoted, with its old master's
  totals carried; the old master answers until its workers are gone, then
  finishes the scrapes it is answering and accepts no more: a scrape between
  the two waits in the listener's queue, none is refused or reset. A rolled-back
  new master never served it. Without an inherited listener (the address
  changed), the promoted master binds it (tried each tick, one WARNING while it
  fails).
- Lifecycle counts come from the master's own events (`events.observe`): the
  log lines operators read are the ones the counters count.
- A USR2 carries the counters over: the old master, once its workers drained,
  hands its totals to its new master (`upgrade_report`), which adds them to its
  own once promoted; until then the old master answers scrapes. A new master
  rolled back returns what its workers counted to its old master. Only a
  SIGKILLed master's counts are lost.
- Off (the default), nothing here runs and the request path is unchanged.
"""

import collections
import importlib.util
import json
import os
import signal
import threading
import time

from gunicorn.arbiter import Arbiter

from gunicorn_graceful import clock, counters, events, listeners, state
from gunicorn_graceful.events import emit
from gunicorn_graceful.master import status
from gunicorn_graceful.settings import ERROR

_BOOT_ERRORS = (Arbiter.WORKER_BOOT_ERROR, Arbiter.APP_LOAD_ERROR)
ENV = "GRACEFUL_METRICS_FD"  # "fd address": the endpoint's listener, for a USR2's new master
DRAIN_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_RELOADS = {"reload.done": ("hup", "ok"), "reload.rollback": ("hup", "rolled_back"),
            "reload.refused": ("hup", "refused"), "reload.config_failed": ("hup", "refused"),
            "upgrade.rollback": ("usr2", "rolled_back"), "upgrade.refused": ("usr2", "refused"),
            "upgrade.promoted": ("usr2", "ok"), "upgrade.done": ("usr2", "ok")}


def start(arbiter, pool, settings, handed=None):
    """The metrics of this master, serving on graceful_metrics_bind; None when it is empty.
    A SystemExit naming the setting when the address cannot be bound or prometheus_client
    is missing (at start, so nothing runs half-configured). `handed`: what an in-place
    upgrade handed this code (`inplace`), whose counts go on here."""
    if not settings.metrics_bind:
        return None
    if importlib.util.find_spec("prometheus_client") is None:  # the [metrics] extra
        raise SystemExit("Error: gunicorn-graceful: graceful_metrics_bind=%s needs "
                         "prometheus_client: pip install 'gunicorn-graceful[metrics]'"
                         % settings.metrics_bind)
    kept = handed and handed["metrics"]
    metrics = Metrics(arbiter, pool, settings, kept["buckets"] if kept else None)
    if kept:
        metrics.adopt(kept, handed["workers"])
    lent = os.environ.pop(ENV, None)
    if arbiter.master_pid:  # a new master of a USR2 serves once promoted (see the top)
        metrics.inherit(lent)
    else:
        same = kept and kept["fd"] is not None and kept["bind"] == settings.metrics_bind
        metrics.serve(os.dup(kept["fd"]) if same else None)
    return metrics


def lend(metrics, environ):
    """Before a USR2's fork: the endpoint's listener goes to the new master (a copy whose
    number no child-close hook knows); the returned fd is closed here after the fork."""
    environ.pop(ENV, None)
    if not metrics or metrics.endpoint is None:
        return None
    fd = os.dup(metrics.endpoint.fileno())
    os.set_inheritable(fd, True)
    environ[ENV] = "%s %s" % (fd, metrics.bind)
    return fd


def reload_problem(metrics, settings):
    """Why a HUP's settings cannot apply to the running metrics, or None: the endpoint keeps
    its address for the master's life (a scrape target that moves on a HUP is a lost one)."""
    running = metrics.bind if metrics is not None else ""
    if settings.metrics_bind != running:
        return ("graceful_metrics_bind=%r differs from the running %r: it changes on a "
                "restart only" % (settings.metrics_bind, running))
    if metrics is not None and tuple(settings.metrics_buckets) != metrics.buckets:
        return "graceful_metrics_buckets changes on a restart only"
    return None


class Metrics:
    def __init__(self, arbiter, pool, settings, buckets=None):
        """`buckets`: the histogram's of the code an in-place upgrade replaced, kept because
        its workers' slots are laid out for them (else graceful_metrics_buckets)."""
        self.arbiter, self.pool, self.bind = arbiter, pool, settings.metrics_bind
        self.buckets = tuple(buckets or settings.metrics_buckets)
        if buckets and self.buckets != tuple(settings.metrics_buckets):
            emit(arbiter.log, "warning", "settings.warning",
                 problem="graceful_metrics_buckets changes on a restart only (an in-place "
                         "upgrade keeps the running workers' histograms): kept %s"
                         % ",".join(map(str, self.buckets)))
        self.lock = threading.Lock()
        self.slots = {}  # pid -> the slot of a worker not yet folded
        self.folded = counters.Counts.zero(self.buckets)
        self.reloads = collections.Counter()   # (kind, result)
        self.recycles = collections.Counter()  # reason
        self.exits = collections.Counter()     # reason
        self.drains = [0] * (len(DRAIN_BUCKETS) + 1)
        self.drain_sum = 0.0
        self.gauges = {}  # the master's view, refreshed each tick (`tick`)
        self.started_at = time.time()
        self.endpoint = None
        self.inherited = None  # the old master's listener, served once promoted
        self.bind_failed = False
        events.observe(self.observe)

    # -- the master's main thread -----------------------------------------------------------

    def forking(self):
        """Just before a fork: the slot the new worker will count into."""
        return counters.Slot(self.buckets)

    def forked(self, pid, slot):
        """After the fork in the master (pid None: the fork failed)."""
        if pid:  # its file stays open here: an in-place upgrade hands it across its exec
            with self.lock:
                self.slots[pid] = slot
        else:
            slot.close()

    def tick(self):
        """Each tick: fold what reaped workers counted, and refresh the master's gauges."""
        arbiter = self.arbiter
        self.fold_reaped()
        self.gauges = self.master_gauges()
        if self.endpoint is None and not arbiter.master_pid:
            self.serve_when_free()

    def inherit(self, lent):
        """A new master of a USR2: keep the old master's listener (`lend`) if it serves this
        master's address; its workers close their copy at fork."""
        if not lent:
            return
        fd, _, bind = lent.partition(" ")
        try:
            fd = int(fd)
            os.set_inheritable(fd, False)
        except (ValueError, OSError):
            return
        if bind != self.bind:
            os.close(fd)
            return
        self.inherited = fd
        self.arbiter.system.close_in_children(fd)

    def promoted(self, totals):
        """A new master is the service now: its old master's totals, then the endpoint at once
        (a scrape waits in the listener's queue meanwhile; the tick would be a second late)."""
        self.carry(totals)
        if self.endpoint is None:
            self.serve_when_free()

    def serve_when_free(self):
        """A promoted new master: serve the listener it inherited, else bind the address its
        old master held (see the top)."""
        fd, self.inherited = self.inherited, None
        try:
            self.serve(fd)
        except SystemExit as exc:
            if not self.bind_failed:
                self.bind_failed = True
                emit(self.arbiter.log, "warning", "metrics.bind_failed", pid=os.getpid(),
                     reason=str(exc).replace(ERROR, ""),
                     retry="every tick")

    def fold_reaped(self):
        """Fold the slot of every worker Gunicorn reaped (no longer in WORKERS)."""
        for pid in [pid for pid in list(self.slots) if pid not in self.arbiter.WORKERS]:
            self.fold(pid)

    def fold(self, pid):
        slot = self.slots[pid]
        counts = slot.read()
        with self.lock:
            self.folded.add(counts, gauges=False)
            del self.slots[pid]
        if counts.drain_seconds >= 0:
            self.drain_sum += counts.drain_seconds
            self.drains[_bucket(DRAIN_BUCKETS, counts.drain_seconds)] += 1
        slot.close()

    def exited(self, record):
        """A worker was reaped (on Gunicorn 23 inside the SIGCHLD handler: one count)."""
        self.exits[exit_reason(record)] += 1

    def master_gauges(self):
        arbiter = self.arbiter
        by_state = dict.fromkeys(("booting", "ready", "draining", "recycling"), 0)
        oldest = 0.0
        now = clock.wall()
        for worker, record in self.pool.workers():
            name = status.worker_state(worker, record)
            name = "draining" if name == "retiring" else name  # told to stop: no new work
            if name in by_state:
                by_state[name] += 1
            if name in ("ready", "recycling"):
                oldest = max(oldest, now - record.started_at)
        counted = [lnr for lnr in arbiter.LISTENERS if listeners.reports_queue(lnr)]
        return {"workers": by_state, "generation": arbiter.generation,
                "degraded": int(self.pool.degraded is not None), "oldest": oldest,
                "backlog": sum(map(listeners.queued, counted)) if counted else None}

    def sibling_fds(self):
        """The slot files the master keeps (for an in-place upgrade): a new worker closes
        them, so a slot's memory goes once its worker and the master let it go."""
        return [slot.fd for slot in self.slots.values() if slot.fd is not None]

    def slot_fd(self, pid):
        slot = self.slots.get(pid)
        return slot.fd if slot is not None else None

    def handover(self):
        """What an in-place upgrade hands the next code (`adopt`): the totals of the workers
        that exited (each live worker's slot goes with it), the buckets, the listener. A
        worker reaped since the last tick is folded first: its slot goes nowhere else."""
        self.fold_reaped()
        return {"totals": self.export(live=False), "buckets": list(self.buckets),
                "bind": self.bind, "fd": self.endpoint.fileno() if self.endpoint else None}

    def adopt(self, kept, workers):
        """In the code an in-place upgrade exec'd: the handed totals, and the slot of each
        handed worker (a copy of its descriptor: see `inplace.adopt`)."""
        self.carry(kept["totals"])
        for item in workers:
            if item["slot"] is not None:
                self.slots[item["pid"]] = counters.Slot(self.buckets, fd=os.dup(item["slot"]))

    def export(self, live=True):
        """Every counter as JSON, for the new master of a USR2 (`carry`); without `live`, only
        what exited workers counted."""
        if live:
            total, _ = self.snapshot()
        else:
            with self.lock:
                total = counters.Counts.zero(self.buckets)
                total.add(self.folded)
        return json.dumps({
            "requests": total.requests, "buckets": list(self.buckets),
            "duration": [total.duration_sum, total.duration_count, total.buckets],
            "websockets": total.websockets, "drain_cut": total.drain_cut,
            "drains": [self.drain_sum, self.drains], "exits": dict(self.exits),
            "recycles": dict(self.recycles),
            "reloads": [[kind, result, n] for (kind, result), n in self.reloads.items()]})

    def carry(self, text):
        """Add the totals (`export`) of the other master of a USR2 to this one's: a promoted
        new master's old master, or a rolled-back new master. Every counter goes on from
        where it was. Histograms whose buckets differ are left out; what cannot be read
        is one WARNING."""
        if text is None:
            return
        try:
            old = json.loads(text)
            requests = {key: float(value) for key, value in old["requests"].items()}
            carried = counters.Counts.zero(self.buckets)
            carried.requests.update((k, v) for k, v in requests.items() if k in carried.requests)
            carried.websockets, carried.drain_cut = old["websockets"], old["drain_cut"]
            if old["buckets"] == list(self.buckets):
                carried.duration_sum, carried.duration_count, carried.buckets = old["duration"]
            with self.lock:
                self.folded.add(carried, gauges=False)
            self.drain_sum += old["drains"][0]
            self.drains = [a + b for a, b in zip(self.drains, old["drains"][1])]
            self.exits.update(old["exits"])
            self.recycles.update(old["recycles"])
            self.reloads.update({(kind, result): n for kind, result, n in old["reloads"]})
        except (ValueError, KeyError, TypeError) as exc:
            emit(self.arbiter.log, "warning", "metrics.carry_failed", pid=os.getpid(),
                 reason="the old master's totals could not be read: %s" % exc)

    def observe(self, name, fields):
        """The master's events (see the module docstring); a worker forgets the observer."""
        if name in _RELOADS:
            self.reloads[_RELOADS[name]] += 1
        elif name == "worker.recycle":
            self.recycles[fields.get("reason") or "max_requests"] += 1

    # -- the endpoint (`endpoint`, through the system port) ---------------------------------

    def serve(self, fd=None):
        """Bind the endpoint and serve it from a thread; `fd`: the listener an in-place
        upgrade handed over, served as it is (no scrape finds the port closed)."""
        self.endpoint = self.arbiter.system.serve_metrics(self, self.bind, fd)
        emit(self.arbiter.log, "info", "metrics.listening", pid=os.getpid(),
             address="http://%s/metrics" % self.bind)

    def pause(self, limit=1.0):
        """Before an in-place exec, or the exit of an old master whose new master serves the
        endpoint next: accept nothing more (new scrapes wait in the listen queue for the
        code that serves this listener next), and for at most `limit` seconds let the
        scrapes being answered finish and a kept-alive scraper come back once more, to an
        answer that closes its connection: an exec or an exit would cut either."""
        if self.endpoint is not None:
            self.endpoint.pause(limit)

    def resume(self):
        """The exec failed: this code serves the endpoint again."""
        if self.endpoint is not None:
            self.endpoint.resume()

    def snapshot(self):
        """Totals now: what exited workers counted plus what live ones count."""
        with self.lock:
            total = counters.Counts.zero(self.buckets)
            total.add(self.folded)
            live = [slot.read() for slot in self.slots.values()]
        for counts in live:
            total.add(counts)
        busy = sum(1 for counts in live if counts.in_flight > 0)
        return total, busy

    def families(self):
        """The metric families of a scrape (prometheus_client's types)."""
        from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                            HistogramMetricFamily)
        total, busy = self.snapshot()
        gauges = self.gauges or self.master_gauges()
        requests = CounterMetricFamily("gunicorn_requests", "Requests answered, by status "
                                       "class (health probes excluded).", labels=["status"])
        for status_class, value in total.requests.items():
            requests.add_metric([status_class], value)
        yield requests
        duration = HistogramMetricFamily("gunicorn_request_duration_seconds",
                                         "Time from the app's call to the end of its response.")
        duration.add_metric([], _cumulative(self.buckets, total.buckets), total.duration_sum)
        yield duration
        yield GaugeMetricFamily("gunicorn_requests_in_flight", "Requests being served now.",
                                value=total.in_flight)
        yield GaugeMetricFamily("gunicorn_workers_busy", "Workers with at least one request "
                                "in flight.", value=busy)
        workers = GaugeMetricFamily("gunicorn_workers", "Workers by state.", labels=["state"])
        for name, count in gauges["workers"].items():
            workers.add_metric([name], count)
        yield workers
        yield _labelled(CounterMetricFamily, "gunicorn_reloads", "HUP reloads and USR2 "
                        "upgrades, by outcome.", ["kind", "result"], self.reloads)
        yield _labelled(CounterMetricFamily, "gunicorn_worker_recycles", "Workers recycled, by "
                        "reason.", ["reason"], {(k,): v for k, v in self.recycles.items()})
        yield _labelled(CounterMetricFamily, "gunicorn_worker_exits", "Workers that exited, by "
                        "how.", ["reason"], {(k,): v for k, v in self.exits.items()})
        yield CounterMetricFamily("gunicorn_websocket_sessions", "WebSocket sessions opened.",
                                  value=total.websockets)
        yield GaugeMetricFamily("gunicorn_websocket_sessions_open", "WebSocket sessions open.",
                                value=total.websockets_open)
        drains = HistogramMetricFamily("gunicorn_drain_duration_seconds",
                                       "How long each worker's drain took.")
        drains.add_metric([], _cumulative(DRAIN_BUCKETS, self.drains), self.drain_sum)
        yield drains
        yield CounterMetricFamily("gunicorn_drain_cut_requests", "Requests a drain's deadline "
                                  "cut.", value=total.drain_cut)
        if gauges["backlog"] is not None:
            yield GaugeMetricFamily("gunicorn_listen_backlog", "Connections waiting in the "
                                    "listeners' accept queues (TCP on Linux).",
                                    value=gauges["backlog"])
        yield GaugeMetricFamily("gunicorn_generation", "The serving generation.",
                                value=gauges["generation"])
        yield GaugeMetricFamily("gunicorn_degraded", "1 while workers cannot be replaced.",
                                value=gauges["degraded"])
        yield GaugeMetricFamily("gunicorn_worker_age_seconds", "Age of the oldest ready worker.",
                                value=gauges["oldest"])
        yield GaugeMetricFamily("gunicorn_master_start_time_seconds", "When this master "
                                "started, in seconds since the epoch.", value=self.started_at)


def exit_reason(record):
    """ok, boot_failed, timeout, killed or crash, from the master's record of the worker: a
    worker the master told to stop that stopped is ok, whatever the signal ended it."""
    status = record.exit_status
    if record.timed_out:
        return "timeout"
    if record.killed:
        return "killed"
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
    if code in _BOOT_ERRORS or (record.final_state == state.BOOTING and not record.retired):
        return "boot_failed"
    if os.WIFSIGNALED(status):
        stopped = record.retired or record.term_sent is not None
        if stopped and os.WTERMSIG(status) in (signal.SIGTERM, signal.SIGQUIT, signal.SIGINT):
            return "ok"
        return "killed" if os.WTERMSIG(status) == signal.SIGKILL else "crash"
    return "ok" if code == 0 else "crash"


def _bucket(bounds, value):
    return next((i for i, bound in enumerate(bounds) if value <= bound), len(bounds))


def _cumulative(bounds, counts):
    running, out = 0.0, []
    for bound, count in zip(list(bounds) + [float("inf")], counts):
        running += count
        out.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
    return out


def _labelled(family, name, doc, labels, values):
    metric = family(name, doc, labels=labels)
    for key, value in sorted(values.items()):
        metric.add_metric(list(key), value)
    return metric

"""Restart scenarios, each run on stock Gunicorn and on the pack with the same app and load."""

import dataclasses
import os
import shutil
import signal
import tempfile
import time

from support import Load, Server, write_app

WORKER_CLASSES = {
    "stock": {"sync": "sync", "gthread": "gthread"},
    "pack": {"sync": "gunicorn_graceful.workers.GracefulSyncWorker",
             "gthread": "gunicorn_graceful.workers.GracefulThreadWorker"},
}
COMMON = "graceful_timeout = 30\ntimeout = 30\nkeepalive = 2\n"
CONFIGS = {
    "stock": COMMON,
    "pack": "from gunicorn_graceful.conf import *  # noqa\n" + COMMON
            + "graceful_readiness_path = '/healthz'\ninstall(globals())\n",
}
LOAD_THREADS = 6
SLOW_THREADS = 1  # plus one client that only asks for /slow?seconds=0.5
WORKERS = 3


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    signal: object = None
    before: object = None  # code the new release runs at import; None: no new release
    window: float = 6.0
    stops: bool = False


SCENARIOS = [
    Scenario("steady", "steady state, no restart", window=3.0),
    Scenario("hup_same", "HUP, same code (new release label)", signal.SIGHUP, before=""),
    Scenario("hup_broken", "HUP, new code raises at import", signal.SIGHUP,
             before="raise RuntimeError('database url missing')"),
    Scenario("hup_slow", "HUP, new code imports for 3 s", signal.SIGHUP,
             before="time.sleep(3)", window=8.0),
    Scenario("term_slow", "TERM with slow requests in flight", signal.SIGTERM, stops=True),
]
QUICK = ("hup_same", "hup_broken", "term_slow")


def write_config(workdir, flavour):
    path = os.path.join(workdir, "bench_conf.py")
    with open(path, "w") as handle:
        handle.write(CONFIGS[flavour])
    return path


def rss_kib(pid):
    """Resident memory of a process, from /proc (KiB), or None."""
    try:
        with open("/proc/%s/status" % pid) as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def start_server(flavour, kind, app="testapp:app", workers=WORKERS):
    """A server of this flavour and worker kind on a fresh app release "1"; caller stops it."""
    workdir = tempfile.mkdtemp(prefix="gg-bench-")
    write_app(workdir, "1", record=False)
    server = Server(workdir, write_config(workdir, flavour), app=app,
                    worker=WORKER_CLASSES[flavour][kind], workers=workers)
    server.start()
    try:
        server.wait_http(timeout=30)
    except AssertionError:
        stop_server(server)
        raise
    return server


def stop_server(server):
    server.stop()
    shutil.rmtree(server.workdir, ignore_errors=True)


def run(flavour, kind, scenario, steady_seconds):
    """One run: steady load, then the scenario's signal, then its window; the raw results."""
    server = start_server(flavour, kind)
    try:
        load = Load(server.url, threads=LOAD_THREADS, slow_threads=SLOW_THREADS,
                    max_seconds=steady_seconds + scenario.window + 60, timeout=30).start()
        steady_from = time.monotonic()
        time.sleep(steady_seconds)  # the steady measurement window itself
        if scenario.before is not None:
            write_app(server.workdir, "2", before=scenario.before, record=False)
        signal_at = time.monotonic()
        if scenario.signal is not None:
            server.signal(scenario.signal)
        exit_code = None
        if scenario.stops:
            exit_code = server.wait_exit(timeout=60)
            time.sleep(1.0)  # keep the load on for a second: what does a new client meet?
        else:
            time.sleep(scenario.window)
        window_end = time.monotonic()
        results = load.stop()
        master = "exited %s" % exit_code if scenario.stops else (
            "alive" if server.alive() else "died (exit %s)" % server.proc.returncode)
        return {"flavour": flavour, "kind": kind, "scenario": scenario, "results": results,
                "signal_at": signal_at, "window_end": window_end, "steady_from": steady_from,
                "master": master, "new_version": "2" if scenario.before is not None else None}
    finally:
        stop_server(server)

"""Restart scenarios, each run on stock Gunicorn and on the pack with the same app and load."""

import dataclasses
import os
import shutil
import signal
import tempfile
import time

from tests.harness import Load, Server, read_pid, write_app

# Full paths: the tests' `Server` reads the short names "sync" and "gthread" as the pack's
# classes, so stock's must not be spelled that way.
WORKER_CLASSES = {
    "stock": {"sync": "gunicorn.workers.sync.SyncWorker",
              "gthread": "gunicorn.workers.gthread.ThreadWorker"},
    "pack": {"sync": "gunicorn_graceful.workers.GracefulSyncWorker",
             "gthread": "gunicorn_graceful.workers.GracefulThreadWorker"},
}
WORKER_CLASSES["pack-inplace"] = WORKER_CLASSES["pack"]  # graceful_upgrade = "in-place"
IN_PLACE = "graceful_upgrade = 'in-place'\n"
# threads: the pack's config sets 4 (gthread); stock runs the same, not Gunicorn's default 1.
COMMON = "graceful_timeout = 30\ntimeout = 30\nkeepalive = 2\nthreads = 4\n"
PACK = ("from gunicorn_graceful.conf import *  # noqa\n", "graceful_readiness_path = '/healthz'\n"
        "install(globals())\n")
RECYCLING = "max_requests = 200\nmax_requests_jitter = 50\n"
LOAD_THREADS = 6
SLOW_THREADS = 1  # plus one client that only asks for /slow?seconds=0.5
WORKERS = 3


def naive_usr2(server, workers):
    """The naive deploy script: USR2, wait a second, TERM the old master."""
    server.signal(signal.SIGUSR2)
    time.sleep(1.0)
    server.signal(signal.SIGTERM)


def manual_usr2(server, workers):
    """Gunicorn's documented procedure, not daemonized (so no WINCH): USR2, wait until the
    new master's workers show up as booted, then QUIT the old master."""
    server.signal(signal.SIGUSR2)
    try:
        server.wait_log(r"Booting worker with pid", timeout=30, count=2 * workers)
    except AssertionError:
        pass  # the operator gives up waiting and quits the old master anyway
    server.signal(signal.SIGQUIT)


def plain_usr2(server, workers):
    """The pack: `kill -USR2` and nothing else."""
    server.signal(signal.SIGUSR2)


def hup_storm(server, workers):
    """Ten HUPs in one second (a deploy tool retrying, a config manager looping)."""
    for _ in range(10):
        server.signal(signal.SIGHUP)
        time.sleep(0.1)  # the storm's own pace, not a wait for anything


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    signal: object = None
    before: object = None  # code the new release runs at import; None: no new release
    window: float = 6.0
    stops: bool = False
    upgrade: bool = False  # USR2: stock runs both procedures, the pack runs plain USR2
    import_seconds: float = 0.0  # how long `before` makes the new app's import take
    action: object = None  # what both stock and the pack get instead of one signal
    config: str = ""  # Gunicorn settings both servers get (e.g. max_requests)

    def variants(self):
        """(label, flavour, action) for each server run of this scenario."""
        if self.upgrade:
            return [("stock (manual)", "stock", manual_usr2),
                    ("stock (naive)", "stock", naive_usr2), ("pack", "pack", plain_usr2),
                    ("pack (in place)", "pack-inplace", plain_usr2)]
        return [("stock", "stock", self.action), ("pack", "pack", self.action)]


SCENARIOS = [
    Scenario("steady", "steady state, no restart", window=3.0),
    Scenario("hup_same", "HUP, same code (new release label)", signal.SIGHUP, before=""),
    Scenario("hup_broken", "HUP, new code raises at import", signal.SIGHUP,
             before="raise RuntimeError('database url missing')"),
    Scenario("hup_slow", "HUP, new code imports for 3 s", signal.SIGHUP,
             before="time.sleep(3)", window=8.0, import_seconds=3.0),
    Scenario("usr2_good", "USR2 to a good release", before="", window=8.0, upgrade=True),
    Scenario("usr2_broken", "USR2 to a release that raises at import",
             before="raise RuntimeError('database url missing')", window=8.0, upgrade=True),
    Scenario("usr2_slow", "USR2 to a release that imports for 3 s", before="time.sleep(3)",
             window=10.0, upgrade=True, import_seconds=3.0),
    Scenario("term_slow", "TERM with slow requests in flight", signal.SIGTERM, stops=True),
    Scenario("hup_storm", "ten HUPs in one second, same code", before="", window=10.0,
             action=hup_storm),
    Scenario("recycle_off", "steady load for 12 s, no recycling (the reference for recycle)",
             window=12.0),
    Scenario("recycle", "steady load for 12 s, max_requests 200, jitter 50", window=12.0,
             config=RECYCLING),
    Scenario("hup_broken_recycle", "HUP to code that raises at import, then max_requests 200 "
             "(jitter 50) recycling on the code on disk", signal.SIGHUP,
             before="raise RuntimeError('database url missing')", window=12.0,
             config=RECYCLING),
]
QUICK = ("hup_broken", "term_slow")  # the harness end to end: a reload and a stop


def write_config(workdir, flavour, extra=""):
    """The config file: the same Gunicorn settings for both, the pack's lines around them."""
    head, tail = PACK if flavour.startswith("pack") else ("", "")
    if flavour == "pack-inplace":
        extra += IN_PLACE
    path = os.path.join(workdir, "bench_conf.py")
    with open(path, "w") as handle:
        handle.write(head + COMMON + extra + tail)
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


def cpu_seconds(pid):
    """User plus system CPU time of a process so far, from /proc."""
    with open("/proc/%d/stat" % pid) as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(flavour, kind, app="testapp:app", workers=WORKERS, config="", env=None):
    """A server of this flavour and worker kind on a fresh app release "1"; caller stops it."""
    workdir = tempfile.mkdtemp(prefix="gg-bench-")
    write_app(workdir, "1", record=False)
    server = Server(workdir, write_config(workdir, flavour, config), app=app,
                    worker=WORKER_CLASSES[flavour][kind], workers=workers, env=env)
    return launch(server, lambda: server.wait_http(timeout=30))


def launch(server, wait):
    """Start `server` and `wait()` until it serves; stopped, its directory removed, when the
    wait fails (a run must never leave a server behind)."""
    server.start()
    try:
        wait()
    except AssertionError:
        stop_server(server)
        raise
    return server


def master_outcome(server, scenario, exit_code, flavour):
    """What became of the service's master: for USR2, whether any master still runs (in
    place: whether the pidfile still names the first one)."""
    if scenario.stops:
        return "exited %s" % exit_code
    if server.alive():
        if flavour == "pack-inplace":
            return "same pid" if read_pid(server.pidfile) == server.pid else "pid changed"
        return "old alive" if scenario.upgrade else "alive"
    if scenario.upgrade:
        running = [pid for pid in server.masters() - {server.pid} if pid_alive(pid)]
        return "new alive" if running else "none alive"
    return "died (exit %s)" % server.proc.returncode


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def stop_server(server):
    server.stop()
    shutil.rmtree(server.workdir, ignore_errors=True)


def watch_window(server, until):
    """Wait out the window; when the first master exited in it (monotonic), or None."""
    exited = None
    while time.monotonic() < until:
        if exited is None and not server.alive():
            exited = time.monotonic()
        time.sleep(0.02)
    return exited


def run(label, flavour, action, kind, scenario, steady_seconds):
    """One run: steady load, then the scenario's action, then its window; the raw results."""
    server = start_server(flavour, kind, config=scenario.config)
    try:
        load = Load(server.url, threads=LOAD_THREADS, slow_threads=SLOW_THREADS,
                    max_seconds=steady_seconds + scenario.window + 60, timeout=30).start()
        steady_from = time.monotonic()
        time.sleep(steady_seconds)  # the steady measurement window itself
        if scenario.before is not None:
            write_app(server.workdir, "2", before=scenario.before, record=False)
        signal_at = time.monotonic()
        if action is not None:
            action(server, WORKERS)
        elif scenario.signal is not None:
            server.signal(scenario.signal)
        exit_code = old_exit = exited_at = None
        if scenario.stops:
            exit_code = server.wait_exit(timeout=60)
            exited_at = time.monotonic()
            time.sleep(1.0)  # keep the load on for a second: what does a new client meet?
        else:
            old_exit = watch_window(server, signal_at + scenario.window)
        window_end = time.monotonic()
        results = load.stop()
        return {"flavour": label, "kind": kind, "scenario": scenario, "results": results,
                "signal_at": signal_at, "window_end": window_end, "steady_from": steady_from,
                "master": master_outcome(server, scenario, exit_code, flavour),
                "handed_over": old_exit - signal_at if old_exit and scenario.upgrade else None,
                "exited_at": exited_at,
                "new_version": "2" if scenario.before is not None else None}
    finally:
        stop_server(server)

"""Ready-first recycling: a worker past a limit goes only once its replacement is ready."""

import json
import os
import signal
import threading

import pytest

from tests.harness import (WORKERS, Load, Watcher, cli, make_release, point_link, wait_for,
                           write_app)

READINESS = "graceful_readiness_path = '/healthz'\n"
BROKEN = {"before": "raise RuntimeError('database url missing')"}


class ReadyCount(Watcher):
    """Samples the status file every 50 ms: the fewest workers able to serve at any sample."""

    limit = 120

    def __init__(self, server):
        super().__init__()
        self.server, self.fewest, self.samples = server, None, 0

    def step(self):
        try:
            with open(self.server.pidfile + ".status") as handle:
                workers = json.load(handle)["workers"]
        except (OSError, ValueError):
            return
        serving = sum(1 for w in workers if w["state"] in ("ready", "recycling"))
        self.fewest = serving if self.fewest is None else min(self.fewest, serving)
        self.samples += 1


def recycle_under_load(server, pattern, count, slow_threads=0):
    """Load until `pattern` (a recycle line) was logged `count` times; the load."""
    load = Load(server.url, threads=4, slow_threads=slow_threads,
                slow_path="/slow?seconds=0.3").start()
    try:
        server.wait_log(pattern, count=count, timeout=60)
        load.wait_count(len(load.results) + 50)
    finally:
        load.stop()
    print(load.summary())
    return load


@pytest.mark.lines
@pytest.mark.parametrize("worker", WORKERS)
def test_max_requests_recycles_ready_first_with_zero_failures(workdir, servers, worker):
    server = servers(workdir, worker=worker, workers=2,
                     config_body=READINESS + "max_requests = 20\nmax_requests_jitter = 5\n")
    with ReadyCount(server) as ready:
        load = recycle_under_load(server, r"event=worker\.recycle pid=\d+ reason=max_requests "
                                  r"served=\d+ rss_mib=\S+ replacement=\d+ after=\S+", 4,
                                  slow_threads=1)
    assert load.failures() == [], load.summary()
    assert ready.samples > 10 and ready.fewest >= 2, (ready.samples, ready.fewest)
    assert "Autorestarting worker" not in server.log()  # Gunicorn's own exit is disabled
    assert server.count(r"event=worker\.retire pid=\d+ generation=1 reason=recycled") >= 4


def test_a_worker_that_grows_past_the_memory_limit_is_recycled(workdir, servers):
    server = servers(workdir, workers=2,
                     config_body=READINESS + "graceful_max_worker_rss = 150\n")
    load = Load(server.url, threads=4).start()
    try:
        load.wait_count(50)
        grown = server.get("/grow?mib=200", timeout=30)
        assert grown.status_code == 200
        server.wait_log(r"event=worker\.recycle pid=\d+ reason=rss served=\S+ rss_mib=2\d\d")
        load.wait_count(len(load.results) + 100)
    finally:
        load.stop()
    assert load.failures() == [], load.summary()


def test_workers_are_recycled_by_age_one_at_a_time(workdir, servers):
    server = servers(workdir, workers=2, config_body=READINESS + (
        "graceful_max_worker_age = 2\ngraceful_max_worker_age_jitter = 1\n"))
    with ReadyCount(server) as ready:
        load = recycle_under_load(server, r"event=worker\.recycle pid=\d+ reason=age ", 3)
    assert load.failures() == [], load.summary()
    assert ready.fewest >= 2, ready.fewest
    lines = [line for line in server.log().splitlines()
             if "event=worker.booting" in line or "event=worker.ready" in line]
    booting = 0
    for line in lines[2:]:  # after the first generation: at most one replacement boots at once
        booting += 1 if "worker.booting" in line else -1
        assert booting <= 1, lines


@pytest.mark.parametrize("worker", WORKERS)
def test_recycling_after_a_rollback_never_costs_the_old_worker(workdir, servers, worker):
    server = servers(workdir, worker=worker, workers=2,
                     config_body=READINESS + "max_requests = 20\n")
    write_app(workdir, "2", **BROKEN)  # in place: nothing to pin, the code on disk is broken
    server.signal(signal.SIGHUP)
    server.wait_log(r"event=reload\.rollback generation=2")
    load = recycle_under_load(server, r"\[ERROR\] event=worker\.boot_failed .*generation=1 ", 2)
    assert load.failures() == [], load.summary()
    assert {r.version for r in load.results} == {"1"}
    shown = cli("status", "--pidfile", server.pidfile)
    assert shown.returncode == 3 and "state=degraded" in shown.stdout, shown.stdout
    assert "state=recycling" in shown.stdout, shown.stdout
    write_app(workdir, "3")
    server.signal(signal.SIGHUP)
    server.wait_log(r"event=reload\.done generation=3")
    wait_for(lambda: cli("status", "--pidfile", server.pidfile).returncode == 0, 10,
             "the degraded state to clear")
    assert server.version() == "3"


def test_a_memory_limit_below_the_boot_size_fails_the_start_with_one_line(workdir, servers):
    server = servers(workdir, workers=1, serve=False,
                     config_body="graceful_max_worker_rss = 1\n")
    assert server.wait_exit(timeout=30) != 0
    assert server.count(r"invalid setting graceful_max_worker_rss=1\.0: allowed a size above "
                        r"this worker's \S+ MiB after boot") >= 1


def test_workers_that_all_asked_during_a_rolled_back_reload_are_recycled_one_by_one(
        tmp_path, servers):
    """While a reload runs, recycling waits: every worker of the kept generation, the
    replacement that was booting included, may ask meanwhile. After the rollback more
    workers wait than are wanted, none of them a fresh replacement; the master once
    crashed there (`max()` of nothing) on Gunicorn 24."""
    root = str(tmp_path)
    link = os.path.join(root, "current")
    point_link(link, make_release(root, "1"))
    make_release(root, "2", before="time.sleep(1.5)\nraise RuntimeError('late failure')")
    server = servers(link, workers=2, rundir=root, config_dir=root,
                     config_body=READINESS + "max_requests = 20\nmax_requests_jitter = 0\n"
                     "graceful_release_link = %r\n" % link)
    load = Load(server.url, threads=4).start()
    try:
        server.wait_log(r"event=worker\.recycle pid=", count=2)
        point_link(link, os.path.join(root, "releases", "2"))
        server.signal(signal.SIGHUP)
        server.wait_log(r"event=reload\.rollback generation=2")
        recycled = server.count(r"event=worker\.recycle pid=")
        server.wait_log(r"event=worker\.recycle pid=", count=recycled + 4, timeout=60)
    finally:
        load.stop()
    assert server.alive() and "Unhandled exception" not in server.log(), server.tail()
    assert load.failures() == [], load.summary()


# -- found by the simulation (tests/test_simulation.py), reproduced with real processes ---------

SLOW_WHEN_MARKED = "if os.path.exists('slow'):\n    time.sleep(20)"


def one_asks_to_be_recycled(server, workdir):
    """Mark later imports slow, then send requests one by one until one worker asked to be
    recycled and its replacement is booting; the replacement's pid. The other worker (two
    sync workers) is busy with a 3 s request meanwhile, so only the first reaches
    max_requests (both did, once, before the master noticed either)."""
    busy = threading.Thread(target=lambda: server.get("/slow?seconds=3", timeout=10),
                            daemon=True)
    busy.start()
    server.wait_started("/slow")
    open(os.path.join(workdir, "slow"), "w").close()
    booted = server.count(r"event=worker\.booting ")
    for _ in range(40):
        assert server.get("/").status_code == 200
        if server.count(r"event=worker\.booting ") > booted:
            break
    return int(server.wait_log(r"event=worker\.booting pid=(\d+)", count=booted + 1).group(1))


def status_workers(server):
    with open(server.pidfile + ".status") as handle:
        return json.load(handle)["workers"]


def test_ttou_while_a_replacement_boots_keeps_a_ready_worker_serving(workdir, servers):
    write_app(workdir, "1", before=SLOW_WHEN_MARKED)
    server = servers(workdir, worker="sync", workers=2,
                     config_body=READINESS + "max_requests = 10\n")
    replacement = one_asks_to_be_recycled(server, workdir)
    server.signal(signal.SIGTTOU)
    server.wait_log(r"event=master\.workers wanted=1 previous=2")
    # The booting replacement is the surplus, not a worker that serves.
    server.wait_log(r"event=worker\.retire pid=%s generation=1 reason=surplus" % replacement)
    serving = wait_for(lambda: [w for w in status_workers(server) if w["state"] == "ready"],
                       10, lambda: "a ready worker in the status file:\n" + server.tail())
    assert len(serving) == 1, status_workers(server)
    assert server.get("/", timeout=5).status_code == 200

"""A real Prometheus scrapes the pack's master every second while workers recycle and the
service goes through a HUP, a broken HUP, a USR2 and a broken USR2 under load: no counter
ever resets, and the requests counted end equal to what the clients saw answered."""

import os
import signal

import pytest

from tests.harness import (PROMETHEUS_MISSING, ROOT, Load, Prometheus, free_port, pid_in, wait_for,
                           write_app)

# On every line: the counts go through reaping (in the SIGCHLD handler on 23), the HUP's
# listeners and the USR2 hand-over and rollback, all of which differ between lines.
pytestmark = [pytest.mark.skipif(PROMETHEUS_MISSING is not None, reason=str(PROMETHEUS_MISSING)),
              pytest.mark.lines]

# Every worker of the new master but the first hangs at import: the first becomes ready and
# serves, the upgrade times out and is rolled back, and what that worker served must come
# back to the old master's counts.
HANGS_BUT_THE_FIRST = """\
import fcntl
if os.getppid() != {serving_master}:
    _lock = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "first.lock"), "w")
    try:
        fcntl.flock(_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        time.sleep(60)
"""


def documented_queries():
    """The example queries of docs/metrics.md (indented, comments left out)."""
    with open(os.path.join(ROOT, "docs", "metrics.md")) as handle:
        section = handle.read().split("## Series and queries", 1)[1]
    queries = [line.strip() for line in section.split("Grafana-ready", 1)[1].splitlines()
               if line.startswith("    ") and not line.strip().startswith("#")]
    assert len(queries) >= 6, queries
    return queries


def test_no_counter_resets_across_recycling_reloads_and_upgrades(workdir, servers, tmp_path):
    port = free_port()
    server = servers(workdir, config_body=(
        'graceful_metrics_bind = "127.0.0.1:%d"\n' % port
        + "graceful_readiness_path = '/healthz'\ngraceful_upgrade_timeout = 8\n"
        "max_requests = 40\nmax_requests_jitter = 10\n"), workers=2)
    prometheus = Prometheus(str(tmp_path), "127.0.0.1:%d" % port).start()
    try:
        load = Load(server.url, threads=4).start()
        load.wait_count(200)
        server.signal(signal.SIGHUP)
        server.wait_log("event=reload.done")
        write_app(workdir, "2", before="raise RuntimeError('broken release')")
        server.signal(signal.SIGHUP)
        server.wait_log("event=reload.rollback")
        write_app(workdir, "3")
        server.signal(signal.SIGUSR2)
        server.wait_log("event=upgrade.promoted", timeout=60)
        assert server.wait_exit(timeout=30) == 0  # the old master handed over
        master = pid_in(server.pidfile)
        write_app(workdir, "4", before=HANGS_BUT_THE_FIRST.format(serving_master=master))
        os.kill(master, signal.SIGUSR2)
        server.wait_log("event=upgrade.rollback", timeout=60)
        wait_for(lambda: not os.path.exists(server.pidfile + ".2"), 30,
                 "the rolled-back new master gone")
        load.wait_count(len(load.results) + 200)
        load.stop()
        answered = sum(1 for result in load.results if result.status == 200)
        assert load.failures() == [], load.summary()

        def counted():
            return sum(value for _, value in prometheus.query("sum(gunicorn_requests_total)"))
        wait_for(lambda: counted() == answered, 20,
                 lambda: "Prometheus's last gunicorn_requests_total %s == %d answered"
                 % (counted(), answered))
        names = {labels["__name__"] for labels, _ in
                 prometheus.query('{__name__=~"gunicorn_.*_total"}')}
        assert len(names) >= 5, names
        for name in sorted(names):
            resets = prometheus.query("resets(%s[10m])" % name)
            assert resets and all(value == 0 for _, value in resets), (name, resets)
        reloads = {(labels["kind"], labels["result"]): value for labels, value
                   in prometheus.query("gunicorn_reloads_total")}
        assert reloads == {("hup", "ok"): 1, ("hup", "rolled_back"): 1, ("usr2", "ok"): 1,
                           ("usr2", "rolled_back"): 1}, reloads
        assert prometheus.query("sum(gunicorn_worker_recycles_total)")[0][1] >= 1
        assert server.count(r"event=worker\.recycle ") >= 1
        for query in documented_queries():  # each one runs, and finds the series it names
            promql = query.replace("$__rate_interval", "1m").replace("$__range", "10m") \
                .replace(" > 0", "")
            # increase() and rate() need two samples: a series that first appeared in the
            # last scrape (a late first recycle) has its second one a scrape later.
            wait_for(lambda: prometheus.query(promql), 10, "data for %s" % query)
    finally:
        prometheus.stop()

"""The master's Prometheus endpoint (graceful_metrics_bind): counts that survive recycling,
reloads, rollbacks and SIGKILLed workers, scraped over HTTP while real load runs."""

import http.client
import os
import re
import select
import signal
import socket
import struct
import threading
import time

import pytest
import requests

from tests.harness import (Load, Sockets, cli, free_port, pid_in, wait_for, write_app,
                           write_asgi_app)


def scrape(port, accept=None):
    headers = {"Accept": accept} if accept else {}
    return requests.get("http://127.0.0.1:%d/metrics" % port, headers=headers, timeout=5)


def value(text, series):
    """The sum of every sample of `series` (a metric name with optional labels) in `text`."""
    pattern = r"^%s(\{[^}]*\})? (\S+)$" % re.escape(series) if "{" not in series \
        else r"^%s (\S+)$" % re.escape(series)
    return sum(float(match.groups()[-1]) for match in re.finditer(pattern, text, re.M))


class Scraper:
    """Scrapes every 50 ms in a thread; `totals` is every gunicorn_requests_total seen."""

    def __init__(self, port):
        self.port, self.totals, self.errors = port, [], []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def _run(self):
        deadline = time.monotonic() + 120
        while not self.stopped.is_set() and time.monotonic() < deadline:
            try:
                self.totals.append(value(scrape(self.port).text, "gunicorn_requests_total"))
            except requests.RequestException as exc:
                self.errors.append(repr(exc))
            self.stopped.wait(0.05)

    def stop(self):
        self.stopped.set()
        self.thread.join(10)


def counts_end_at_what_the_load_saw(load, scraper, port, more):
    """`more` requests, then the load and the scraper stop: no request failed, no scrape
    failed, gunicorn_requests_total never went down and ends at what the load saw answered
    (returned)."""
    load.wait_count(len(load.results) + more)
    load.stop()
    answered = sum(1 for r in load.results if r.status == 200)
    wait_for(lambda: value(scrape(port).text, "gunicorn_requests_total") == answered, 10,
             lambda: "gunicorn_requests_total == %d answered (last scrape %s)"
             % (answered, scraper.totals[-1:]))
    scraper.stop()
    assert load.failures() == [], load.summary()
    assert scraper.errors == []
    assert len(scraper.totals) > 10
    assert all(a <= b for a, b in zip(scraper.totals, scraper.totals[1:])), scraper.totals
    return answered


def metrics_server(servers, workdir, port, body="", **kwargs):
    return servers(workdir, config_body='graceful_metrics_bind = "127.0.0.1:%d"\n' % port + body,
                   **kwargs)


def test_requests_total_never_goes_down_and_ends_at_what_the_load_saw(workdir, servers):
    port = free_port()
    server = metrics_server(servers, workdir, port, "max_requests = 15\n", workers=2)
    scraper = Scraper(port).start()
    load = Load(server.url, threads=4).start()
    load.wait_count(100)
    server.signal(signal.SIGHUP)  # a good reload
    server.wait_log("event=reload.done")
    write_app(workdir, "2", before="raise RuntimeError('broken release')")
    server.signal(signal.SIGHUP)  # a broken one: rolled back
    server.wait_log("event=reload.rollback")
    write_app(workdir, "2")  # fixed on disk: the recycling replacements load it
    answered = counts_end_at_what_the_load_saw(load, scraper, port, 200)
    text = scrape(port).text
    assert value(text, 'gunicorn_reloads_total{kind="hup",result="ok"}') == 1
    assert value(text, 'gunicorn_reloads_total{kind="hup",result="rolled_back"}') == 1
    wait_for(lambda: value(scrape(port).text,
                           'gunicorn_worker_recycles_total{reason="max_requests"}') >= 1,
             10, "a recycle counted (max_requests = 15)")
    assert value(text, 'gunicorn_worker_exits_total{reason="boot_failed"}') >= 1
    assert value(text, 'gunicorn_worker_exits_total{reason="crash"}') == 0, text
    assert value(text, "gunicorn_request_duration_seconds_count") == answered
    assert value(text, "gunicorn_generation") == 2
    wait_for(lambda: value(scrape(port).text, 'gunicorn_workers{state="ready"}') == 2, 10,
             "2 ready workers, once the recycling settled")


@pytest.mark.lines  # the fold follows Gunicorn's reaping, which differs by line
def test_a_sigkilled_worker_loses_no_count_and_scrapes_answer_while_workers_hang(workdir,
                                                                                servers):
    port = free_port()
    server = metrics_server(servers, workdir, port, workers=1, worker="sync")  # busy: queue
    for _ in range(25):
        assert requests.get(server.url + "/", timeout=5).status_code == 200
    (worker,) = server.children()
    def slow():
        try:
            requests.get(server.url + "/slow?seconds=3", timeout=10)
        except requests.RequestException:
            pass  # its worker is killed below
    hung = threading.Thread(target=slow, daemon=True)
    hung.start()
    server.wait_started("/slow")
    text = scrape(port).text  # the only worker is busy: the master answers
    assert value(text, "gunicorn_requests_in_flight") == 1
    assert value(text, "gunicorn_workers_busy") == 1
    waiting = [socket.create_connection(("127.0.0.1", server.port), timeout=10)
               for _ in range(3)]
    wait_for(lambda: value(scrape(port).text, "gunicorn_listen_backlog") == 3, 10,
             "3 connections in the listen backlog, seen at a master tick")
    for client in waiting:
        client.close()
    os.kill(worker, signal.SIGKILL)
    wait_for(lambda: value(scrape(port).text, 'gunicorn_worker_exits_total{reason="killed"}')
             == 1, 10, "the killed worker folded")
    text = scrape(port).text
    assert value(text, "gunicorn_requests_total") == 25
    assert value(text, "gunicorn_requests_in_flight") == 0  # a dead worker's gauge is gone


def test_openmetrics_whole_answers_and_scrapers_gone_midway_log_nothing(workdir, servers):
    port = free_port()
    server = metrics_server(servers, workdir, port, workers=1)
    answer = scrape(port, accept="application/openmetrics-text; version=1.0.0")
    assert answer.headers["Content-Type"].startswith("application/openmetrics-text")
    assert answer.text.rstrip().endswith("# EOF")
    assert requests.get("http://127.0.0.1:%d/other" % port, timeout=5).status_code == 404
    kept = http.client.HTTPConnection("127.0.0.1", port, timeout=5)  # as Prometheus scrapes
    try:
        for _ in range(2):
            kept.request("GET", "/metrics")
            answer = kept.getresponse()
            assert answer.status == 200 and b"gunicorn_requests_total" in answer.read()
            assert not answer.will_close
    finally:
        kept.close()
    assert _answers_in_one_piece(port, scrapes=5)
    for _ in range(20):  # scrapers gone before their answer (a timeout, a port scan)
        _send_and_reset(port)
    assert scrape(port).status_code == 200
    assert "Traceback" not in server.log() and "metrics.scrape_failed" not in server.log()


def _send_and_reset(port):
    """A scrape whose client resets the connection at once, before the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _answers_in_one_piece(port, scrapes):
    """Each answer on one kept-alive connection is whole in the first read once readable: the
    head and the body are sent together. Sent apart, the body waited for the client's
    delayed ACK of the head (Nagle): 40 ms a scrape."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        for _ in range(scrapes):
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert select.select([sock], [], [], 5)[0], "no answer in 5 s"
            head, _, body = sock.recv(1 << 20).partition(b"\r\n\r\n")
            length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
            assert len(body) == length, "the first read had %d of %d body bytes" % (
                len(body), length)
    return True


def test_a_metrics_address_in_use_stops_the_start_with_one_line(workdir, servers):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        server = metrics_server(servers, workdir, port, serve=False)
        assert server.wait_exit(timeout=20) != 0
        assert server.count(r"Error: gunicorn-graceful: graceful_metrics_bind=127\.0\.0\.1:%d "
                            r"cannot be bound: " % port) == 1, server.tail()
    finally:
        taken.close()


@pytest.mark.parametrize("worker", ["sync", "gunicorn_graceful.workers.GracefulUvicornWorker"])
def test_a_request_a_drain_cuts_is_counted(workdir, servers, worker):
    """The sync worker ends itself at its drain's deadline, naming and counting what it cuts
    (before, the master's SIGKILL came first and gunicorn_drain_cut_requests_total stayed
    at 0 for the WSGI workers). An asyncio worker counts what its cut ended (before, it
    counted what was left after the cut: always 0)."""
    port = free_port()
    body, options = "graceful_timeout = 2\n", dict(worker=worker, workers=1)
    if worker != "sync":
        write_asgi_app(workdir, "1")
        body += 'graceful_readiness_path = "/ready"\n'
        options.update(app="asgiapp:app")
    server = metrics_server(servers, workdir, port, body, **options)
    slow = threading.Thread(target=lambda: _ignore(server.url + "/slow?seconds=10"),
                            daemon=True)
    slow.start()
    server.wait_started("/slow")
    server.signal(signal.SIGHUP)
    server.wait_log(r"\[WARNING\] event=drain\.cut pid=\d+ method=GET path=/slow")
    wait_for(lambda: value(scrape(port).text, "gunicorn_drain_cut_requests_total") == 1, 10,
             "the cut counted")


def _ignore(url):
    try:
        requests.get(url, timeout=20)
    except requests.RequestException:
        pass


def test_a_hup_that_moves_the_metrics_address_is_refused_and_it_keeps_serving(workdir, servers):
    port = free_port()
    server = metrics_server(servers, workdir, port, workers=1)
    config = os.path.join(workdir, "gunicorn_conf.py")  # tests.harness.write_config's
    with open(config) as handle:
        text = handle.read()
    with open(config, "w") as handle:
        handle.write(text.replace(str(port), str(free_port())))
    server.signal(signal.SIGHUP)
    server.wait_log("event=reload.config_failed")
    assert server.count(r"event=reload\.config_failed .*graceful_metrics_bind") == 1
    assert scrape(port).status_code == 200
    assert value(scrape(port).text, 'gunicorn_reloads_total{kind="hup",result="refused"}') == 1


def test_asgi_counts_http_requests_and_websocket_sessions_apart(workdir, servers):
    write_asgi_app(workdir, "1")
    port = free_port()
    server = metrics_server(servers, workdir, port, 'graceful_readiness_path = "/ready"\n',
                            workers=1, app="asgiapp:app",
                            worker="gunicorn_graceful.workers.GracefulUvicornWorker")
    for _ in range(5):
        assert requests.get(server.url + "/", timeout=5).status_code == 200
    sockets = Sockets(server.url, 2).start()
    text = scrape(port).text
    assert value(text, "gunicorn_requests_total") == 5
    assert value(text, "gunicorn_websocket_sessions_total") == 2
    assert value(text, "gunicorn_websocket_sessions_open") == 2
    server.signal(signal.SIGTERM)
    assert sockets.join() == [1001, 1001]


def test_usr2_hands_the_endpoint_and_the_counts_to_the_new_master(workdir, servers):
    """Scraped 20 times a second under load across a rolled-back USR2 and one that goes
    through: no scrape fails and no counter goes down. Before, the new master bound the
    address only after its old master exited: about 1.2 s of refused scrapes and one reset
    in every USR2. Now it inherits the listener and serves it once promoted."""
    port = free_port()
    server = metrics_server(servers, workdir, port, "graceful_readiness_path = '/healthz'\n")
    started = value(scrape(port).text, "gunicorn_master_start_time_seconds")
    scraper = Scraper(port).start()
    load = Load(server.url, threads=2).start()
    load.wait_count(50)
    write_app(workdir, "2", healthz=503)
    broken = cli("upgrade", "--pidfile", server.pidfile, "--timeout", "60", timeout=90)
    assert broken.returncode == 3, broken.stdout + broken.stderr
    write_app(workdir, "2")
    done = cli("upgrade", "--pidfile", server.pidfile, "--timeout", "60", timeout=90)
    assert done.returncode == 0, done.stdout + done.stderr
    new = pid_in(server.pidfile)
    assert server.wait_exit(timeout=30) == 0  # the old master
    wait_for(lambda: value(scrape(port).text, "gunicorn_master_start_time_seconds") > started,
             20, "the new master %s serving /metrics" % new)
    counts_end_at_what_the_load_saw(load, scraper, port, 50)
    text = scrape(port).text
    assert value(text, 'gunicorn_reloads_total{kind="usr2",result="rolled_back"}') == 1
    assert value(text, 'gunicorn_reloads_total{kind="usr2",result="ok"}') == 1
    assert value(text, 'gunicorn_worker_exits_total{reason="ok"}') >= 2
    assert value(text, 'gunicorn_workers{state="ready"}') == 2


def _answers(port):
    try:
        return scrape(port).status_code == 200
    except requests.RequestException:
        return False

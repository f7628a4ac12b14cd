"""ASGI restarts and throughput: each graceful ASGI class against the stock class it builds on.

`python -m bench --asgi` runs it and writes results/asgi.md. Same app (the example
Starlette app), same load (HTTP with `requests`, half keep-alive, no retries) and,
where a scenario says so, WebSocket clients whose close codes are counted.
"""

import collections
import os
import signal
import tempfile
import time

from bench import metrics, report, throughput
from bench.scenarios import (LOAD_THREADS, WORKERS, Scenario, cpu_seconds, launch, rss_kib,
                             stop_server as stop)
from gunicorn_graceful import compat
from tests.harness import Load, Server, Sockets, wait_for, write_asgi_app

PAIRS = [("uvicorn", "uvicorn_worker.UvicornWorker",
          "gunicorn_graceful.workers.GracefulUvicornWorker")]
if compat.NATIVE_ASGI:
    PAIRS.append(("asgi", "asgi", "gunicorn_graceful.workers.GracefulASGIWorker"))
COMMON = "graceful_timeout = 10\ntimeout = 30\nkeepalive = 2\n"
PACK = ("from gunicorn_graceful.conf import *  # noqa\n",
        "graceful_readiness_path = '/ready'\ninstall(globals())\n")
SOCKETS = 5
PER_CONNECTION = 20  # the throughput clients reconnect after this many requests
BROKEN = "raise RuntimeError('database url missing')"
SCENARIOS = [
    Scenario("asgi_hup_same", "HUP, same code, %d WebSockets open" % SOCKETS, signal.SIGHUP,
             before="", window=12.0),
    Scenario("asgi_hup_broken", "HUP, new code raises at import", signal.SIGHUP, before=BROKEN),
    Scenario("asgi_term_ws", "TERM with %d WebSockets open" % SOCKETS, signal.SIGTERM,
             stops=True),
]


def start(flavour, worker_class, record=False):
    workdir = tempfile.mkdtemp(prefix="gg-bench-asgi-")
    write_asgi_app(workdir, "1", record=record)
    head, tail = PACK if flavour == "pack" else ("", "")
    config = os.path.join(workdir, "bench_conf.py")
    with open(config, "w") as handle:
        handle.write(head + COMMON + tail)
    server = Server(workdir, config, app="asgiapp:app", worker=worker_class, workers=WORKERS)
    return launch(server, lambda: server.wait_http(timeout=30))


def run(kind, flavour, worker_class, scenario, steady_seconds=3.0):
    server = start(flavour, worker_class)
    try:
        sockets = Sockets(server.url, SOCKETS).start() if scenario.name != "asgi_hup_broken" \
            else None
        load = Load(server.url, threads=LOAD_THREADS, max_seconds=steady_seconds + 60,
                    timeout=30).start()
        steady_from = time.monotonic()
        time.sleep(steady_seconds)  # the steady measurement window itself
        write_asgi_app(server.workdir, "2", before=scenario.before or "", record=False)
        signal_at = time.monotonic()
        server.signal(scenario.signal)
        exited_at = None
        if scenario.stops:
            code = server.wait_exit(timeout=60)
            exited_at = time.monotonic()
            master = "exited %s" % code
        else:
            deadline = signal_at + scenario.window
            while time.monotonic() < deadline:  # the window, watching the master
                if not server.alive():
                    break
                time.sleep(0.05)
            master = "alive" if server.alive() else "died (exit %s)" % server.proc.returncode
        window_end = time.monotonic()
        results = load.stop()
        codes = sockets.join(timeout=40) if sockets else []
        return {"flavour": flavour, "kind": kind, "scenario": scenario, "results": results,
                "signal_at": signal_at, "window_end": window_end, "steady_from": steady_from,
                "master": master, "handed_over": None, "exited_at": exited_at,
                "new_version": "2" if scenario.before == "" else None,
                "codes": codes}
    finally:
        stop(server)


def after_sending(run):
    """Failures of requests that were sent: a refused connect was never a request."""
    return str(sum(1 for r in run["results"]
                   if not r.ok and r.kind not in ("refused", "connect_timeout")))


def codes_cell(run):
    counts = collections.Counter("none (1006)" if c is None else str(c) for c in run["codes"])
    return ", ".join("%s x%d" % (code, n) for code, n in sorted(counts.items())) or "-"


def steady(flavour, worker_class, seconds):
    """Requests per second, and the workers' CPU time per request: on 2 cores with 4
    closed-loop clients the machine is not saturated, so req/s moves with scheduling;
    CPU per request is what the graceful layer costs."""
    server = start(flavour, worker_class)
    try:
        workers = wait_for(lambda: len(server.children()) == WORKERS and server.children(),
                           30, "%d workers" % WORKERS)
        throughput.measure(server.port, 0.5, PER_CONNECTION)  # warm-up
        before = sum(cpu_seconds(pid) for pid in workers)
        rps = throughput.measure(server.port, seconds, PER_CONNECTION)
        used = sum(cpu_seconds(pid) for pid in workers) - before
        return {"rps": rps, "cpu_us": used / (rps * seconds) * 1e6,
                "master_rss": rss_kib(server.pid), "worker_rss": rss_kib(workers[0])}
    finally:
        stop(server)


def cpu_table(comparisons):
    rows = [[c["kind"], "%.0f" % metrics.median([r["cpu_us"] for r in c["stock"]]),
             "%.0f" % metrics.median([r["cpu_us"] for r in c["pack"]]),
             "%.3f" % (metrics.median([r["cpu_us"] for r in c["stock"]])
                       / metrics.median([r["cpu_us"] for r in c["pack"]]))]
            for c in comparisons]
    return report.table(rows, ("worker", "stock CPU µs/request", "pack CPU µs/request",
                               "stock/pack (throughput at equal CPU)"))


def compare(kind, stock_class, pack_class, repetitions=9, seconds=4.0):
    runs = {"stock": [], "pack": []}
    for rep in range(repetitions):
        order = ("stock", "pack") if rep % 2 == 0 else ("pack", "stock")
        for flavour in order:
            runs[flavour].append(steady(flavour, stock_class if flavour == "stock"
                                        else pack_class, seconds))
    ratios = [p["rps"] / s["rps"] for s, p in zip(runs["stock"], runs["pack"])]
    return {"kind": kind, "ratios": ratios, "stock": runs["stock"], "pack": runs["pack"]}


def main(out):
    began = time.monotonic()
    rows = []
    for scenario in SCENARIOS:
        for kind, stock_class, pack_class in PAIRS:
            for flavour, worker_class in (("stock", stock_class), ("pack", pack_class)):
                result = run(kind, flavour, worker_class, scenario)
                rows.append(report.row(result)[:12] + [after_sending(result),
                                                        codes_cell(result)])
                print(report.table(rows[-1:], COLUMNS), flush=True)
    comparisons = [compare(kind, stock_class, pack_class) for kind, stock_class, pack_class
                   in PAIRS]
    text = "\n\n".join([
        "# ASGI: graceful classes against the stock classes they build on",
        "Command: `python -m bench --asgi`. Machine: %s. Took %.0f s." % (
            report.machine(), time.monotonic() - began),
        "App: examples/asgi_app.py (Starlette). Load: %d closed-loop `requests` threads on "
        "`/`, half keep-alive, no retries; %d WebSocket clients (echo) where the scenario "
        "says so. Workers: %d. graceful_timeout 10 s. *failed after sending*: failures "
        "other than a refused connect (after TERM, new clients are refused before they "
        "send anything, by design). *WebSocket close codes*: what each "
        "client received; none (1006): the connection ended without a close frame. uvicorn: "
        "`uvicorn_worker.UvicornWorker` against `GracefulUvicornWorker`; asgi: Gunicorn's "
        "`asgi` worker against `GracefulASGIWorker`." % (LOAD_THREADS, SOCKETS, WORKERS),
        "## Restarts", report.table(rows, COLUMNS),
        "## Steady-state throughput and memory",
        "Raw-socket clients (%d threads, keep-alive, a new connection every %d requests "
        "so that they spread over the workers) on `/`; stock and pack runs alternate, 9 "
        "repetitions of 4 s." % (throughput.CLIENTS, PER_CONNECTION),
        report.throughput_table(comparisons),
        "The workers' CPU time per request (user + system, all workers, medians of the "
        "same runs): the machine is not saturated by 4 closed-loop clients, so req/s moves "
        "with scheduling from run to run; CPU per request is what each layer costs.",
        cpu_table(comparisons)])
    path = os.path.join(out, "asgi.md")
    with open(path, "w") as handle:
        handle.write(text + "\n")
    print(report.throughput_table(comparisons))
    print(cpu_table(comparisons))
    print("wrote", path)
    return 0


COLUMNS = report.COLUMNS[:12] + ("failed after sending", "WebSocket close codes")

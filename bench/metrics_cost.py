"""`python -m bench --metrics`: what graceful_metrics_bind costs and whether its counts hold,
side by side with what stock Gunicorn users run today: prometheus_client's multiprocess
mode (`multiprocess_app`).

1. Throughput (the lean client of `throughput`, keep-alive, the Flask example app,
   2 workers): stock Gunicorn, stock with multiprocess mode, the pack with metrics
   off, the pack with metrics on, alternating run after run; ratios to stock are
   medians.
2. Counting under recycling, each side in turn: 4 workers, `max_requests 50`,
   20,000 requests from the same client, scraped every 50 ms throughout: files in
   the metrics directory at the end, whether `gunicorn_requests_total` ever went
   down, scrape time p50/p99, and its final value against the requests the client
   saw answered.
3. Scrapes across upgrades, the pack with metrics on under load, scraped every 50 ms:
   a USR2 that is rolled back, then one that goes through, with a new master and in
   place: failed scrapes and whether `gunicorn_requests_total` ever went down. Stock
   Gunicorn has no master endpoint to compare (multiprocess mode is served by the
   workers, and a USR2's two masters write two directories).
"""

import http.client
import multiprocessing
import os
import re
import shutil
import statistics
import tempfile
import threading
import time

from bench import multiprocess_app, report, throughput
from bench.scenarios import cpu_seconds, start_server, stop_server
from tests.harness import Load, cli, free_port, write_app

SECONDS, REPETITIONS, WORKERS = 3.0, 9, 2  # 9: the ratios move about 2% run to run
VARIANTS = ("stock", "multiprocess", "off", "on")
FLASK, INSTRUMENTED = "examples.flask_app:app", "bench.multiprocess_app:app"


def _start(variant, kind, workers, config="", app=FLASK):
    """(server, its metrics port or None, its multiprocess directory or None)."""
    port = free_port() if variant in ("on", "multiprocess") else None
    if variant == "multiprocess":
        directory = tempfile.mkdtemp(prefix="gg-bench-prom-")
        server = start_server("stock", kind, app=INSTRUMENTED, workers=workers,
                              config=config + multiprocess_app.CONFIG % port,
                              env={"PROMETHEUS_MULTIPROC_DIR": directory})
        return server, port, directory
    flavour = "stock" if variant == "stock" else "pack"
    if variant == "on":
        config += 'graceful_metrics_bind = "127.0.0.1:%d"\n' % port
    return start_server(flavour, kind, app=app, workers=workers, config=config), port, None


def _rps(variant, kind):
    """(requests per second, the workers' CPU microseconds per request): with the client on
    the same 2 cores, throughput moves with how the cores are shared; CPU per request is
    what the server's request path costs."""
    server, _, directory = _start(variant, kind, WORKERS)
    try:
        throughput.measure(server.port, 0.5, per_connection=100)
        workers = server.children()
        before = sum(map(cpu_seconds, workers))
        rps = throughput.measure(server.port, SECONDS, per_connection=100)
        return rps, 1e6 * (sum(map(cpu_seconds, workers)) - before) / (rps * SECONDS)
    finally:
        stop_server(server)
        if directory:
            shutil.rmtree(directory, ignore_errors=True)


def cost(kind):
    runs = {variant: [] for variant in VARIANTS}
    for rep in range(REPETITIONS):
        shift = rep % len(VARIANTS)
        for variant in VARIANTS[shift:] + VARIANTS[:shift]:
            runs[variant].append(_rps(variant, kind))
    result = {"kind": kind, "stock": statistics.median(r for r, _ in runs["stock"]),
              "stock_cpu": statistics.median(c for _, c in runs["stock"])}
    for variant in VARIANTS[1:]:
        pairs = list(zip(runs[variant], runs["stock"]))
        result[variant] = statistics.median(o[0] / s[0] for o, s in pairs)
        result[variant + "_cpu"] = statistics.median(o[1] / s[1] for o, s in pairs)
    return result


def _total(port, connection=None):
    """gunicorn_requests_total summed, scraped as Prometheus does (a kept-alive connection
    where the server keeps it)."""
    connection = connection or http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    connection.request("GET", "/metrics")
    answer = connection.getresponse()
    body = answer.read()
    if answer.status != 200:
        raise ValueError("scrape answered %s" % answer.status)
    if answer.will_close:
        connection.close()
    return sum(float(v) for v in re.findall(rb"^gunicorn_requests_total\{[^}]*\} (\S+)$",
                                           body, re.M))


def _settled_total(port, seconds=5):
    """The total once two scrapes 0.1 s apart agree: the pack counts a request once its body
    is closed, after its last byte, so a client can have its answer a moment before."""
    deadline = time.monotonic() + seconds
    seen = _total(port)
    while time.monotonic() < deadline:
        time.sleep(0.1)
        seen, previous = _total(port), seen
        if seen == previous:
            return seen
    raise RuntimeError("gunicorn_requests_total did not settle in %s s" % seconds)


def counting(variant, requests=20000):
    server, port, directory = _start(variant, "sync", 4, "max_requests = 50\n")
    context = multiprocessing.get_context("spawn")
    stop, results = context.Event(), context.Queue()
    scraper = context.Process(target=scrape_every_50ms, args=(port, stop, results), daemon=True)
    try:
        before = _settled_total(port)  # the harness's own probe that the server answers
        scraper.start()
        answered = _send(server.port, requests)
        deadline = time.monotonic() + 10
        while _total(port) - before != answered and time.monotonic() < deadline:
            time.sleep(0.1)
        stop.set()
        seen, times, failed = results.get(timeout=30)
        final = _total(port) - before
        files = len(os.listdir(directory)) if directory else 0
        booted = len(re.findall(r"Booting worker with pid", server.log()))
    finally:
        stop.set()
        scraper.join(10)
        stop_server(server)
        if directory:
            shutil.rmtree(directory, ignore_errors=True)
    times.sort()
    return {"variant": variant, "answered": answered, "final": final, "scrapes": len(seen),
            "failed": len(failed), "first_failure": failed[0] if failed else "",
            "decreased": any(b < a for a, b in zip(seen, seen[1:])),
            "p50_ms": times[len(times) // 2] * 1000, "p99_ms": times[int(0.99 * len(times))] * 1000,
            "booted": booted, "files": files}


def across_upgrades(mode):
    """Section 3 for one upgrade mode ("new-master" or "in-place")."""
    config = "graceful_readiness_path = '/healthz'\n" + (
        "graceful_upgrade = 'in-place'\n" if mode == "in-place" else "")
    server, port, _ = _start("on", "sync", WORKERS, config, app="testapp:app")  # write_app's
    context = multiprocessing.get_context("spawn")
    stop, results = context.Event(), context.Queue()
    scraper = context.Process(target=scrape_every_50ms, args=(port, stop, results), daemon=True)
    load = Load(server.url, threads=2, max_seconds=300)
    codes = []
    try:
        scraper.start()
        load.start()
        for version, healthz in (("2", 503), ("3", 200)):  # rolled back, then through
            write_app(server.workdir, version, healthz=healthz, record=False)
            codes.append(cli("upgrade", "--pidfile", server.pidfile, "--timeout", "60",
                             timeout=120).returncode)
        stop.set()
        seen, times, failed = results.get(timeout=30)
    finally:
        stop.set()
        load.stop()
        scraper.join(10)
        stop_server(server)
    times.sort()
    return {"mode": mode, "codes": codes, "scrapes": len(seen), "failed": len(failed),
            "p50_ms": times[len(times) // 2] * 1000, "max_ms": times[-1] * 1000,
            "first_failure": failed[0] if failed else "",
            "decreased": any(b < a for a, b in zip(seen, seen[1:])),
            "requests_failed": len(load.failures())}


def scrape_every_50ms(port, stop, results, seconds=600):
    """In a process of its own (the load's client threads would make it wait for the GIL,
    and the wait would count as scrape time): each scrape's total and duration, put on
    `results` once `stop` is set."""
    seen, times, failed = [], [], []
    deadline = time.monotonic() + seconds
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    while not stop.is_set() and time.monotonic() < deadline:
        began = time.monotonic()
        try:
            seen.append(_total(port, connection))
            times.append(time.monotonic() - began)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            failed.append(repr(exc))
            connection.close()
        stop.wait(0.05)
    results.put((seen, times, failed))


def _send(port, count):
    """`count` requests from throughput's closed-loop clients (a new connection every 20);
    how many were answered."""
    counts = [0] * throughput.CLIENTS
    deadline = time.monotonic() + 300
    threads = [threading.Thread(target=throughput._client,
                                args=(port, deadline, counts, i, 20, count // throughput.CLIENTS),
                                daemon=True)
               for i in range(throughput.CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(330)
    return sum(counts)


LABELS = {"stock": "stock Gunicorn", "multiprocess": "stock + prometheus_client multiprocess",
          "off": "pack, metrics off", "on": "pack, metrics on"}


def main(out):
    costs = [cost(kind) for kind in ("sync", "gthread")]
    counts = [counting(variant) for variant in ("multiprocess", "on")]
    upgrades = [across_upgrades(mode) for mode in ("new-master", "in-place")]
    text = "\n\n".join([
        "# gunicorn-graceful metrics: cost and counting",
        "Command: `python -m bench --metrics`. Machine: %s." % report.machine(),
        "## Request-path cost (medians of %d alternating runs of %.0f s, %d workers, Flask "
        "example app, keep-alive, a new connection every 100 requests)"
        % (REPETITIONS, SECONDS, WORKERS),
        "Each cell: throughput / stock's, then the workers' CPU per request / stock's "
        "(the client shares the 2 cores, so throughput also moves with how they are "
        "shared; CPU per request is the request path's own cost).",
        "| worker | stock req/s | stock CPU per request | %s |\n|---|---|---|---|---|---|\n"
        % " | ".join("%s / stock" % LABELS[v] for v in VARIANTS[1:]) + "\n".join(
            "| %s | %.0f | %.0f µs | %s |" % (c["kind"], c["stock"], c["stock_cpu"], " | ".join(
                "%.3f, CPU %.3f" % (c[v], c[v + "_cpu"]) for v in VARIANTS[1:]))
            for c in costs),
        "## Counting under recycling (sync, 4 workers, max_requests 50, 20,000 requests, "
        "scraped every 50 ms, each side in turn)",
        "| | answered | final gunicorn_requests_total | ever decreased | scrapes | failed "
        "scrapes | scrape p50 | scrape p99 | workers started | files in the metrics "
        "directory |\n|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(
            "| %s | %d | %.0f | %s | %d | %d %s | %.1f ms | %.1f ms | %d | %d |"
            % (LABELS[c["variant"]], c["answered"], c["final"], c["decreased"], c["scrapes"],
               c["failed"], c["first_failure"], c["p50_ms"], c["p99_ms"], c["booted"],
               c["files"]) for c in counts),
        "The scraper runs in a process of its own and keeps its connection where the server "
        "allows it, as Prometheus does. *workers started*: the pack recycles ready-first (a "
        "worker past max_requests serves on until its replacement is ready), so it starts "
        "fewer workers in the same requests; stock starts one per 50 requests per worker.",
        "## Scrapes across upgrades (sync, %d workers, under load, scraped every 50 ms: a "
        "USR2 rolled back, then one that goes through)" % WORKERS,
        "| upgrade | `upgrade` exit codes | scrapes | failed scrapes | ever decreased | "
        "scrape p50 | longest scrape | failed requests |\n|---|---|---|---|---|---|---|---|\n"
        + "\n".join(
            "| %s | %s | %d | %d %s | %s | %.1f ms | %.0f ms | %d |"
            % (u["mode"], ", ".join(map(str, u["codes"])), u["scrapes"], u["failed"],
               u["first_failure"], u["decreased"], u["p50_ms"], u["max_ms"],
               u["requests_failed"]) for u in upgrades)])
    path = "%s/metrics.md" % out
    with open(path, "w") as handle:
        handle.write(text + "\n")
    print(text)
    return 0

"""`python -m bench --metrics`: what graceful_metrics_bind costs and whether its counts hold.

1. Throughput (the lean client of `throughput`, keep-alive, the Flask example app,
   2 workers): stock Gunicorn, the pack with metrics off, the pack with metrics on,
   alternating run after run; the ratios to stock are medians.
2. Counting under recycling: the pack with metrics on, 4 workers, `max_requests 50`,
   20,000 requests from the same client, scraped every 50 ms throughout: whether
   `gunicorn_requests_total` ever went down, scrape time p50/p99, and its final value
   against the requests the client saw answered.
"""

import re
import statistics
import threading
import time
import urllib.request

from bench import report, throughput
from bench.scenarios import start_server, stop_server
from support import free_port

SECONDS, REPETITIONS, WORKERS = 3.0, 5, 2


def _config(port):
    return 'graceful_metrics_bind = "127.0.0.1:%d"\n' % port


def _rps(flavour, kind, config):
    server = start_server(flavour, kind, app="examples.flask_app:app", workers=WORKERS,
                          config=config)
    try:
        throughput.measure(server.port, 0.5, per_connection=100)
        return throughput.measure(server.port, SECONDS, per_connection=100)
    finally:
        stop_server(server)


def cost(kind):
    runs = {"stock": [], "off": [], "on": []}
    for rep in range(REPETITIONS):
        order = ["stock", "off", "on"]
        for name in order[rep % 3:] + order[:rep % 3]:
            flavour = "stock" if name == "stock" else "pack"
            config = _config(free_port()) if name == "on" else ""
            runs[name].append(_rps(flavour, kind, config))
    return {"kind": kind, "stock": statistics.median(runs["stock"]),
            "off": statistics.median(o / s for o, s in zip(runs["off"], runs["stock"])),
            "on": statistics.median(o / s for o, s in zip(runs["on"], runs["stock"]))}


def _total(port):
    body = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5).read()
    return sum(float(v) for v in re.findall(rb"^gunicorn_requests_total\{[^}]*\} (\S+)$",
                                           body, re.M))


def counting(requests=20000):
    port = free_port()
    server = start_server("pack", "sync", workers=4, config=_config(port) + "max_requests = 50\n")
    seen, times, stop = [], [], threading.Event()

    def scraper():
        while not stop.is_set():
            began = time.monotonic()
            seen.append(_total(port))
            times.append(time.monotonic() - began)
            stop.wait(0.05)
    thread = threading.Thread(target=scraper, daemon=True)
    thread.start()
    try:
        before = _total(port)  # the harness's own probe that the server answers
        answered = _send(server.port, requests)
        deadline = time.monotonic() + 10
        while _total(port) - before != answered and time.monotonic() < deadline:
            time.sleep(0.1)
        stop.set()
        thread.join(10)
        final = _total(port) - before
        recycles = re.findall(r"event=worker\.recycle ", server.log())
    finally:
        stop_server(server)
    times.sort()
    return {"answered": answered, "final": final, "scrapes": len(seen),
            "decreased": any(b < a for a, b in zip(seen, seen[1:])),
            "p50_ms": times[len(times) // 2] * 1000, "p99_ms": times[int(0.99 * len(times))] * 1000,
            "recycles": len(recycles), "files": 0}


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


def main(out):
    costs = [cost(kind) for kind in ("sync", "gthread")]
    counts = counting()
    text = "\n\n".join([
        "# gunicorn-graceful metrics: cost and counting",
        "Command: `python -m bench --metrics`. Machine: %s." % report.machine(),
        "## Request-path cost (medians of %d alternating runs of %.0f s, %d workers, Flask "
        "example app, keep-alive, a new connection every 100 requests)"
        % (REPETITIONS, SECONDS, WORKERS),
        "| worker | stock req/s | pack, metrics off / stock | pack, metrics on / stock |\n"
        "|---|---|---|---|\n" + "\n".join(
            "| %s | %.0f | %.3f | %.3f |" % (c["kind"], c["stock"], c["off"], c["on"])
            for c in costs),
        "## Counting under recycling (pack, sync, 4 workers, max_requests 50, 20,000 "
        "requests, scraped every 50 ms)",
        "| answered | final gunicorn_requests_total | ever decreased | scrapes | scrape p50 | "
        "scrape p99 | recycles | files used |\n|---|---|---|---|---|---|---|---|\n"
        "| %(answered)d | %(final).0f | %(decreased)s | %(scrapes)d | %(p50_ms).1f ms | "
        "%(p99_ms).1f ms | %(recycles)d | %(files)d |" % counts,
        "Not measured here yet: prometheus_client's multiprocess mode under stock Gunicorn "
        "side by side (issue 19)."])
    path = "%s/metrics.md" % out
    with open(path, "w") as handle:
        handle.write(text + "\n")
    print(text)
    return 0

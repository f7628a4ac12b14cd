"""A rolling TERM-and-start of two backends behind a real HAProxy, stock against the pack.

Same HAProxy config (active checks every 200 ms, fall 2, rise 2, retries 3 with
redispatch) and the same load. Stock backends are checked on the app's own
/healthz; pack backends on the pack's health path, with a 1.5 s lame duck.
"""

import os
import shutil
import signal
import tempfile
import time

from tests.harness import HAProxy, Load, Server, write_app

from bench import scenarios

HEALTH = {"stock": "/healthz", "pack": "/health"}
EXTRA = {"stock": "", "pack": "graceful_health_path = '/health'\ngraceful_shutdown_delay = 1.5\n"}


def backend(directory, flavour, kind, port=0):
    config = scenarios.write_config(directory, flavour)
    with open(config, "a") as handle:
        handle.write(EXTRA[flavour])
        if flavour == "pack":
            handle.write("install(globals())\n")
    server = Server(directory, config, worker=scenarios.WORKER_CLASSES[flavour][kind],
                    workers=2, port=port).start()
    server.wait_http(timeout=30)
    return server


def run(flavour, kind):
    """Restart both backends in turn under load; the results and when each restart began."""
    base = tempfile.mkdtemp(prefix="gg-rolling-")
    backends, proxy, load = {}, None, None
    try:
        for name in ("a", "b"):
            os.makedirs(os.path.join(base, name))
            write_app(os.path.join(base, name), "1", record=False)
            backends[name] = backend(os.path.join(base, name), flavour, kind)
        proxy = HAProxy(base, {n: s.port for n, s in backends.items()},
                        health=HEALTH[flavour]).start()
        for name in backends:
            proxy.wait_status(name, "UP")
        load = Load(proxy.url, threads=scenarios.LOAD_THREADS, slow_threads=1,
                    max_seconds=120).start()
        time.sleep(2.0)  # the steady measurement window
        signal_at = time.monotonic()
        for name in ("a", "b"):
            old = backends[name]
            old.signal(signal.SIGTERM)
            old.wait_exit(timeout=60)
            old.stop()
            backends[name] = backend(old.workdir, flavour, kind, port=old.port)
            proxy.wait_status(name, "UP", timeout=30)
        time.sleep(1.0)
        window_end = time.monotonic()
        results = load.stop()
        return {"flavour": flavour, "kind": kind, "results": results, "signal_at": signal_at,
                "window_end": window_end, "steady_from": signal_at - 2.0,
                "scenario": scenarios.Scenario("haproxy_rolling",
                                               "rolling TERM + start behind HAProxy"),
                "master": "restarted", "new_version": None}
    finally:
        if load is not None:
            load.stop()
        if proxy is not None:
            proxy.stop()
        for server in backends.values():
            server.stop()
        shutil.rmtree(base, ignore_errors=True)

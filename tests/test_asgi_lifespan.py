"""Gunicorn's asgi worker bounds the app's lifespan startup and shutdown by 30 s; the graceful
one does not. Run on the newest Gunicorn only (not marked `lines`): the 30 s are the same
in every line that has the worker, and the contract test (test_compat) checks on each line
the internal the fix relies on (the lifespan state the base hands the app)."""

import os
import signal

import pytest
import requests

from gunicorn_graceful import compat
from tests.harness import write_asgi_app
from tests.test_asgi import CONFIG, write_startup_app


@pytest.mark.skipif(not compat.NATIVE_ASGI, reason="Gunicorn's native asgi worker: >= 24")
def test_native_worker_lifts_gunicorns_30s_lifespan_caps(tmp_path, servers):
    """Gunicorn's lifespan manager gives the app's startup and its shutdown 30 s each. A
    startup of 32 s must not make the worker serve unready (the master would kill it at
    graceful_readiness_timeout), and a shutdown of 32 s within a 35 s budget must finish.
    Two servers at once, so the test costs one wait, not two."""
    worker = "gunicorn_graceful.workers.GracefulASGIWorker"
    slow_start, slow_stop = str(tmp_path / "start"), str(tmp_path / "stop")
    os.makedirs(slow_start)
    os.makedirs(slow_stop)
    write_startup_app(slow_start, "await asyncio.sleep(32)")
    write_asgi_app(slow_stop, "1")
    marker = os.path.join(slow_stop, "lifespan.log")
    starting = servers(slow_start, worker=worker, workers=1, app="asgiapp:app", serve=False,
                       config_body=CONFIG + "graceful_readiness_timeout = 50\n")
    stopping = servers(slow_stop, worker=worker, workers=1, app="asgiapp:app",
                       env={"EXAMPLE_LIFESPAN_MARKER": marker,
                            "EXAMPLE_LIFESPAN_SHUTDOWN_SECONDS": "32"},
                       config_body=CONFIG + "graceful_timeout = 40\n"
                       "graceful_lifespan_shutdown_timeout = 35\n")
    stopping.signal(signal.SIGTERM)
    starting.wait_log(r"event=worker\.ready pid=\d+", timeout=50)
    assert requests.get(starting.url + "/", timeout=5).text == "ok"
    assert stopping.wait_exit(timeout=50) == 0
    with open(marker) as handle:
        assert handle.read().startswith("shutdown"), stopping.tail()
    assert stopping.count(r"event=lifespan\.shutdown_timeout") == 0
    assert starting.count(r"not ready") == 0

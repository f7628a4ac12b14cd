"""The stock side of `python -m bench --metrics`: the Flask example app counted the way
prometheus_client documents it for Gunicorn (multiprocess mode), which is what users run
today. PROMETHEUS_MULTIPROC_DIR is set for the whole server; `CONFIG` (filled with the
port) gives the master a `child_exit` that marks each dead worker and serves the files'
sum on its own port (the documented `when_ready` + `start_http_server` set-up)."""

import time

from prometheus_client import Counter, Histogram

from examples.flask_app import create_app

CONFIG = '''
def child_exit(server, worker):
    from prometheus_client import multiprocess
    multiprocess.mark_process_dead(worker.pid)


def when_ready(server):
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    start_http_server(%d, addr="127.0.0.1", registry=registry)
'''

REQUESTS = Counter("gunicorn_requests", "Requests answered, by status class.", ["status"])
DURATION = Histogram("gunicorn_request_duration_seconds", "Time in the app.")
_flask = create_app()


def app(environ, start_response):
    """The Flask app, each request counted by status class and timed."""
    started, statuses = time.perf_counter(), []

    def recording(status, headers, exc_info=None):
        statuses.append(status)
        return start_response(status, headers, exc_info)
    try:
        return _flask(environ, recording)
    finally:
        DURATION.observe(time.perf_counter() - started)
        if statuses:
            REQUESTS.labels(statuses[0][0] + "xx").inc()

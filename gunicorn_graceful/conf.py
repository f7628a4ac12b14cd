"""The config pack, importable: `gunicorn -c python:gunicorn_graceful.conf app:app`.

`conf/graceful.py` is the same pack as a file to copy and edit. Pack settings
come from `GRACEFUL_*` environment variables here (see README.md).
"""

from gunicorn_graceful.hooks import (  # noqa: F401  (Gunicorn reads them from this module)
    child_exit, install, nworkers_changed, on_exit, on_reload, on_starting, post_fork,
    post_worker_init, pre_exec, pre_fork, when_ready, worker_abort, worker_exit, worker_int)

worker_class = "gunicorn_graceful.workers.GracefulThreadWorker"
workers = 2
threads = 4
# Long enough for the slowest request you serve; the master kills what is left after it.
graceful_timeout = 30
# At least graceful_timeout: a sync worker busy longer than timeout is killed mid-drain.
timeout = 30
keepalive = 2

install(globals())

"""gunicorn-graceful config pack: edit this file (`gunicorn-graceful init` writes a copy).

    gunicorn -c graceful.py myapp:app

Then `kill -HUP $(cat gunicorn.pid)` reloads without dropping a request, `kill -USR2`
upgrades, `kill -TERM` drains and reports, and `gunicorn-graceful status --pidfile
gunicorn.pid` shows every worker. Every setting is explained in the project's README.
"""

from gunicorn_graceful.conf import *  # noqa: F401,F403  (the pack: hooks and defaults)

bind = "127.0.0.1:8000"
workers = 2
worker_class = "gunicorn_graceful.workers.GracefulThreadWorker"  # or ...GracefulSyncWorker
threads = 4
graceful_timeout = 30   # drain time before the master kills what is left
timeout = 30            # keep >= graceful_timeout (sync workers)
keepalive = 2
pidfile = "gunicorn.pid"  # in the working directory; /run/<app>/... under systemd

# The pack's own settings (GRACEFUL_<NAME> in the environment wins over these).
# A new worker calls this path in-process before it serves. "/" and any answer below 500
# work for any app that imports and runs; with a real health route of yours, require 2xx:
#   graceful_readiness_path = "/healthz"; graceful_readiness_accept = "2xx"
graceful_readiness_path = "/"
graceful_readiness_accept = "<500"
graceful_readiness_timeout = 30        # seconds from fork to ready, else the reload rolls back
graceful_drain_log_interval = 1.0      # one INFO line per second while draining
graceful_deadline_warning = 2.0        # list requests about to be cut this long before the deadline
# Behind a load balancer or in Kubernetes: a health path the worker answers itself (off by
# default so it never shadows a route of yours) and a lame duck before the drain on SIGTERM.
# graceful_health_path = "/-/ready"    # 200 serving, 503 in lame duck and draining
# graceful_shutdown_delay = 2          # > the balancer's check interval x fall count

# Prometheus metrics the master serves, monotonic across recycles and reloads (needs
# pip install 'gunicorn-graceful[metrics]'):
# graceful_metrics_bind = "127.0.0.1:9191"   # GET /metrics

# Linux: import the app once per generation in a mold process that forks the workers (shared
# memory, a worker replaced in milliseconds; HUP still loads new code). Nothing at import may
# open connections or start threads: do that in post_fork (README, "The mold"):
# graceful_mold = True

# Your own hooks chain after the pack's: define them as usual, for example
# def post_fork(server, worker):
#     server.log.info("my post_fork")

install(globals())  # keep last: validates graceful_* and chains your hooks

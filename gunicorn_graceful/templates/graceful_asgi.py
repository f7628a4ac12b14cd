"""gunicorn-graceful config pack for ASGI apps (Starlette, FastAPI): edit this file.

    gunicorn -c graceful_asgi.py myapp:app

Everything the WSGI pack does (readiness-gated HUP, rollback, USR2, drain report,
lame duck), plus: the app's lifespan startup runs before the readiness check, every
open WebSocket gets a close frame when its worker drains (1012 on a restart, 1001 on
a stop), the app learns that its worker drains (`request.state.graceful_draining`),
and the lifespan shutdown always runs before graceful_timeout.
"""

from gunicorn_graceful.conf import *  # noqa: F401,F403  (the pack: hooks and defaults)

bind = "127.0.0.1:8000"
workers = 2
# Gunicorn's native asgi worker (Gunicorn >= 24), or uvicorn's with the [uvicorn] extra:
worker_class = "gunicorn_graceful.workers.GracefulASGIWorker"
# worker_class = "gunicorn_graceful.workers.GracefulUvicornWorker"
threads = 1             # one event loop per worker; the pack's default of 4 is for gthread
graceful_timeout = 30   # drain time, lifespan shutdown included
timeout = 30
keepalive = 2
pidfile = "gunicorn.pid"  # in the working directory; /run/<app>/... under systemd

# The pack's own settings (GRACEFUL_<NAME> in the environment wins over these).
# Called in-process after the lifespan startup. "/" and any answer below 500 work for any
# app that starts; with a real health route of yours, require 2xx:
#   graceful_readiness_path = "/ready"; graceful_readiness_accept = "2xx"
graceful_readiness_path = "/"
graceful_readiness_accept = "<500"
graceful_readiness_timeout = 30
graceful_lifespan_shutdown_timeout = 5     # kept for the lifespan shutdown at the drain's end
graceful_websocket_close_delay = 0         # > 0: the app closes its own WebSockets first
# graceful_health_path = "/-/ready"        # 200 serving, 503 in lame duck and draining
# graceful_shutdown_delay = 2              # lame duck before the drain, behind a balancer

# Prometheus metrics the master serves (WebSocket sessions apart from HTTP requests; needs
# pip install 'gunicorn-graceful[metrics]'):
# graceful_metrics_bind = "127.0.0.1:9191"   # GET /metrics

# Linux: import the app once per generation in a mold process that forks the workers (shared
# memory, a worker replaced in milliseconds; HUP still loads new code). Nothing at import may
# open connections or start threads: do that in post_fork (README, "The mold"):
# graceful_mold = True

install(globals())  # keep last: validates graceful_* and chains your hooks

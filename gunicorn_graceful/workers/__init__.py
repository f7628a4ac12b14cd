"""The workers' wing: every worker class the pack runs, and what runs inside a worker.

The public worker classes are named here (`-k gunicorn_graceful.workers.GracefulSyncWorker`):
- `GracefulSyncWorker`, `GracefulThreadWorker` (`wsgi`), on the shared base (`base`);
- `GracefulASGIWorker` (`asgi_native`, Gunicorn >= 24) and `GracefulUvicornWorker`
  (`asgi_uvicorn`, the `[uvicorn]` extra), on the asyncio drain (`asyncio_base`),
  imported on first use.
Beside them: the ASGI guard (`guard`), the request registry and drain reporter
(`inflight`), `readiness`, `health`, and the limits a worker checks itself (`limits`).
This wing imports the floor (settings, events, compat, the state channel) and
never the master's wing.
"""

from gunicorn_graceful.workers.base import GracefulMixin
from gunicorn_graceful.workers.wsgi import GracefulSyncWorker, GracefulThreadWorker

__all__ = ["GracefulMixin", "GracefulSyncWorker", "GracefulThreadWorker",
           "GracefulASGIWorker", "GracefulUvicornWorker"]


def __getattr__(name):
    """The ASGI workers, imported on first use: uvicorn is an optional extra, and the
    native asgi worker needs Gunicorn >= 24."""
    if name == "GracefulASGIWorker":
        from gunicorn_graceful.workers.asgi_native import GracefulASGIWorker
        return GracefulASGIWorker
    if name == "GracefulUvicornWorker":
        from gunicorn_graceful.workers.asgi_uvicorn import GracefulUvicornWorker
        return GracefulUvicornWorker
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
